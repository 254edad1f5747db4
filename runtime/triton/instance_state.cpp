#include "instance_state.hpp"

#include <cstring>
#include <map>

#include "common.hpp"
#include "exitc/error.hpp"
#include "request.hpp"

namespace exitc_triton {
namespace {

TRITONSERVER_Error_Code code_for(const exitc::Error& e) {
    return e.code() == exitc::ErrorCode::kInvalidArgument ? TRITONSERVER_ERROR_INVALID_ARG : TRITONSERVER_ERROR_INTERNAL;
}

std::vector<uint64_t> minus(const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
    std::vector<uint64_t> d(a.size(), 0);
    for (std::size_t i = 0; i < a.size(); ++i) d[i] = a[i] - (i < b.size() ? b[i] : 0);
    return d;
}

}  // namespace

ModelInstanceState::ModelInstanceState(ModelState& model, TRITONBACKEND_ModelInstance* instance)
    : model_(model), instance_(instance) {
    const char* name = nullptr;
    check(TRITONBACKEND_ModelInstanceName(instance, &name), "TRITONBACKEND_ModelInstanceName");
    name_ = name;
    if (model_.config().mode == Mode::kContinuous) {
        batcher_ = std::make_unique<exitc::ContinuousBatcher>(model_.model(), model_.config().continuous);
        last_ = batcher_->stats();
        const auto& o = batcher_->options();
        EXITC_LOG(TRITONSERVER_LOG_INFO, "instance '" << name_ << "': continuous depth-wise batching, max_batch "
                                                      << o.max_batch << ", max_wait " << o.max_wait.count()
                                                      << " us, max_pending_rows " << o.max_pending_rows);
    }
}

ModelInstanceState::~ModelInstanceState() {
    std::unique_ptr<exitc::ContinuousBatcher> batcher;
    {
        std::lock_guard<std::mutex> lock(stats_mutex_);  // callbacks read batcher_ under this lock
        batcher = std::move(batcher_);
    }
    batcher.reset();  // drains: every queued request is answered before the instance goes
}

void ModelInstanceState::execute(TRITONBACKEND_Request** requests, uint32_t count) noexcept {
    const uint64_t exec_start = now_ns();
    std::vector<Request> valid;
    valid.reserve(count);
    for (uint32_t i = 0; i < count; ++i) {
        Request r(requests[i], instance_, exec_start);
        std::string problem;
        try {
            problem = r.parse(model_.config());
        } catch (const std::exception& e) {
            problem = e.what();
        }
        if (!problem.empty()) {
            r.respond_error(TRITONSERVER_ERROR_INVALID_ARG, "exitc model '" + model_.name() + "': " + problem);
            continue;
        }
        valid.push_back(std::move(r));
    }
    try {
        if (batcher_) execute_continuous(valid);
        else execute_plain(valid, exec_start);
    } catch (const std::exception& e) {
        for (Request& r : valid) r.respond_error(TRITONSERVER_ERROR_INTERNAL, std::string("exitc backend: ") + e.what());
    } catch (...) {
        for (Request& r : valid) r.respond_error(TRITONSERVER_ERROR_INTERNAL, "exitc backend: unknown failure");
    }
    // Any request still unanswered here is answered by ~Request (internal error).
}

void ModelInstanceState::execute_plain(std::vector<Request>& requests, uint64_t exec_start_ns) {
    // Requests whose inputs have the same non-batch shapes share one run (in arrival order).
    std::map<std::vector<std::vector<int64_t>>, std::vector<std::size_t>> groups;
    std::vector<std::vector<std::vector<int64_t>>> order;
    for (std::size_t i = 0; i < requests.size(); ++i) {
        auto key = requests[i].feed_item_shapes();
        auto it = groups.find(key);
        if (it == groups.end()) {
            order.push_back(key);
            groups[key] = {i};
        } else {
            it->second.push_back(i);
        }
    }
    const exitc::Model& model = model_.model();
    for (const auto& key : order) {
        const std::vector<std::size_t>& members = groups[key];
        int64_t total = 0;
        for (std::size_t i : members) total += requests[i].rows();
        std::vector<exitc::NamedTensorView> feeds;
        std::vector<std::vector<unsigned char>> merged;
        if (members.size() == 1) {
            feeds = requests[members[0]].feeds();
        } else {
            const auto& first = requests[members[0]].feeds();
            merged.resize(first.size());
            for (std::size_t f = 0; f < first.size(); ++f) {
                exitc::Shape shape = first[f].view.shape;
                shape[0] = total;
                const std::size_t bytes = static_cast<std::size_t>(shape.num_elements()) * exitc::dtype_size(first[f].view.dtype);
                merged[f].resize(bytes);
                std::size_t offset = 0;
                for (std::size_t i : members) {
                    const exitc::TensorView& v = requests[i].feeds()[f].view;
                    if (v.byte_size() > 0) std::memcpy(merged[f].data() + offset, v.data, v.byte_size());
                    offset += v.byte_size();
                }
                feeds.push_back({first[f].name, exitc::TensorView{first[f].view.dtype, shape, merged[f].data()}});
            }
        }
        const uint64_t compute_start = now_ns();
        exitc::RunResult result;
        try {
            result = model.run(feeds);
        } catch (const exitc::Error& e) {
            for (std::size_t i : members)
                requests[i].respond_error(code_for(e), "exitc model '" + model_.name() + "': " + e.what());
            continue;
        }
        const uint64_t compute_end = now_ns();
        model_.monitor_batch(feeds, result);  // before the responses: a client may read the metrics next
        int64_t row0 = 0;
        for (std::size_t i : members) {
            requests[i].respond(result, row0, compute_start, compute_end);
            row0 += requests[i].rows();
        }
        if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceReportBatchStatistics(
                instance_, static_cast<uint64_t>(total), exec_start_ns, compute_start, compute_end, now_ns()))
            TRITONSERVER_ErrorDelete(e);
    }
    model_.publish_plain_stats();
}

void ModelInstanceState::execute_continuous(std::vector<Request>& requests) {
    for (Request& r : requests) {
        auto owned = std::make_shared<Request>(std::move(r));
        const uint64_t submitted = now_ns();
        try {
            batcher_->submit(owned->feeds(), [this, owned, submitted](std::exception_ptr error, exitc::RunResult result) {
                // Metrics first: once the response is out, a client may read them.
                publish_continuous_stats();
                if (!error) model_.monitor_batch(owned->feeds(), result);
                if (!error) {
                    owned->respond(result, 0, submitted, now_ns());
                } else {
                    std::string message = "unknown failure";
                    TRITONSERVER_Error_Code code = TRITONSERVER_ERROR_INTERNAL;
                    try {
                        std::rethrow_exception(error);
                    } catch (const exitc::Error& e) {
                        message = e.what();
                        code = code_for(e);
                    } catch (const std::exception& e) {
                        message = e.what();
                    } catch (...) {
                    }
                    owned->respond_error(code, "exitc model '" + model_.name() + "': " + message);
                }
            });
        } catch (const exitc::Error& e) {
            owned->respond_error(code_for(e), "exitc model '" + model_.name() + "': " + e.what());
        }
    }
    publish_continuous_stats();
}

void ModelInstanceState::publish_continuous_stats() {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    if (!batcher_) return;
    const exitc::ContinuousStats now = batcher_->stats();
    ModelMetrics* m = model_.metrics();
    m->add_rows(minus(now.rows_per_exit, last_.rows_per_exit));
    m->add_seconds(now.overhead_seconds - last_.overhead_seconds, now.engine_seconds - last_.engine_seconds);
    m->add_segment_runs(minus(now.segment_runs, last_.segment_runs), minus(now.segment_rows, last_.segment_rows));
    m->set_queue_rows(now.queue_rows);
    last_ = now;
}

}  // namespace exitc_triton
