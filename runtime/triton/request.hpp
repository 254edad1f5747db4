#pragma once
// One Triton request as the backend sees it: validated inputs (views into Triton's buffers, or a
// gathered copy when Triton split an input into several buffers), the outputs the client asked
// for, and the response/release duties. A Request sends exactly one response and releases the
// request exactly once: explicitly (respond / respond_error) or, as a last resort, in its
// destructor (with an internal error), so no code path can leak or double-release a request.

#include <cstdint>
#include <string>
#include <vector>

#include "config.hpp"
#include "exitc/model.hpp"
#include "triton_api.hpp"

namespace exitc_triton {

class Request {
public:
    Request(TRITONBACKEND_Request* request, TRITONBACKEND_ModelInstance* instance, uint64_t exec_start_ns);
    ~Request();
    Request(Request&& other) noexcept;
    Request& operator=(Request&&) = delete;
    Request(const Request&) = delete;

    // Validates the request against the configuration. Returns "" when valid, else the message
    // for the client (the request is not answered yet).
    std::string parse(const ModelConfig& config);

    int64_t rows() const noexcept { return rows_; }
    const std::vector<exitc::NamedTensorView>& feeds() const noexcept { return feeds_; }
    // Shapes of the feeds without the batch dim, for grouping requests that can share a run.
    std::vector<std::vector<int64_t>> feed_item_shapes() const;

    // Sends rows [row0, row0 + rows()) of `result` as this request's response, reports the
    // statistics and releases the request. On a failure while building the response the client
    // gets an error instead. Never throws.
    void respond(const exitc::RunResult& result, int64_t row0, uint64_t compute_start_ns, uint64_t compute_end_ns) noexcept;
    void respond_error(TRITONSERVER_Error_Code code, const std::string& message) noexcept;
    bool answered() const noexcept { return request_ == nullptr; }

private:
    void finish(bool success, uint64_t compute_start_ns, uint64_t compute_end_ns) noexcept;
    TRITONBACKEND_Request* request_;
    TRITONBACKEND_ModelInstance* instance_;
    uint64_t exec_start_ns_;
    int64_t rows_ = 0;
    std::vector<exitc::NamedTensorView> feeds_;
    std::vector<std::vector<unsigned char>> gathered_;
    std::vector<std::string> requested_;  // output names to send
};

uint64_t now_ns() noexcept;  // steady clock, as Triton's statistics expect

}  // namespace exitc_triton
