#pragma once
// ModelInstanceState: one model instance (TRITONBACKEND_ModelInstance), i.e. one execution lane.
//
// plain mode: each execute call validates its requests (a malformed one gets its own error
//   response), merges the rows of the valid ones (requests whose inputs have equal non-batch
//   shapes share one exitc::Model::run), and splits the results back per request before returning.
// continuous mode: each execute call validates its requests and hands their rows to this
//   instance's exitc::ContinuousBatcher, then returns; the batcher's worker thread answers each
//   request (one response, one release) when its last row finishes. execute blocks while the
//   batcher holds more than continuous_max_pending_rows rows (back-pressure, so Triton's dynamic
//   batcher keeps collecting requests instead of handing over ever smaller batches).

#include <memory>
#include <mutex>
#include <string>

#include "exitc/continuous.hpp"
#include "model_state.hpp"
#include "triton_api.hpp"

namespace exitc_triton {

class Request;

class ModelInstanceState {
public:
    ModelInstanceState(ModelState& model, TRITONBACKEND_ModelInstance* instance);
    ~ModelInstanceState();  // continuous mode: answers every queued request first
    ModelInstanceState(const ModelInstanceState&) = delete;
    ModelInstanceState& operator=(const ModelInstanceState&) = delete;

    // Never throws; takes ownership of every request (each is answered and released).
    void execute(TRITONBACKEND_Request** requests, uint32_t count) noexcept;

private:
    void execute_plain(std::vector<Request>& requests, uint64_t exec_start_ns);
    void execute_continuous(std::vector<Request>& requests);
    void publish_continuous_stats();

    ModelState& model_;
    TRITONBACKEND_ModelInstance* instance_;
    std::string name_;
    std::unique_ptr<exitc::ContinuousBatcher> batcher_;
    std::mutex stats_mutex_;
    exitc::ContinuousStats last_;
};

}  // namespace exitc_triton
