// The C ABI (include/exitc/exitc.h): thin wrappers that turn exceptions into status codes and a
// thread-local message. Nothing may throw across this boundary.

#include "exitc/exitc.h"

#include <exception>
#include <new>
#include <string>
#include <vector>

#include "exitc/error.hpp"
#include "exitc/model.hpp"

struct exitc_model {
    exitc::Model model;
};

struct exitc_result {
    exitc::RunResult result;
};

namespace {

thread_local std::string g_last_error;

exitc_status fail(exitc_status status, std::string message) {
    try {
        g_last_error = std::move(message);
    } catch (...) {
        // Out of memory while storing the message: the status still says what happened.
    }
    return status;
}

// Runs `body`, translating any exception into a status and the thread's last error message.
template <typename Body>
exitc_status guarded(Body&& body) noexcept {
    try {
        body();
        return EXITC_OK;
    } catch (const exitc::Error& e) {
        return fail(static_cast<exitc_status>(e.code()), e.what());
    } catch (const std::bad_alloc&) {
        return fail(EXITC_ERR_INTERNAL, "out of memory");
    } catch (const std::exception& e) {
        return fail(EXITC_ERR_INTERNAL, e.what());
    } catch (...) {
        return fail(EXITC_ERR_INTERNAL, "unknown error");
    }
}

}  // namespace

extern "C" {

exitc_status exitc_model_load(const char* artifact_dir, int intra_op_threads, exitc_model** out_model) {
    if (!artifact_dir || !out_model) return fail(EXITC_ERR_INVALID_ARGUMENT, "exitc_model_load: NULL argument");
    *out_model = nullptr;
    return guarded([&] {
        exitc::ModelOptions options;
        options.executor.intra_op_threads = intra_op_threads > 0 ? intra_op_threads : 0;
        auto handle = std::make_unique<exitc_model>(exitc_model{exitc::Model::load(artifact_dir, options)});
        *out_model = handle.release();  // ownership passes to the caller (exitc_model_free)
    });
}

void exitc_model_free(exitc_model* model) { delete model; }

size_t exitc_model_num_exits(const exitc_model* model) { return model ? model->model.num_exits() : 0; }

size_t exitc_model_num_inputs(const exitc_model* model) {
    return model ? model->model.manifest().inputs.size() : 0;
}

const char* exitc_model_input_name(const exitc_model* model, size_t i) {
    if (!model || i >= model->model.manifest().inputs.size()) return nullptr;
    return model->model.manifest().inputs[i].name.c_str();
}

exitc_status exitc_model_run(const exitc_model* model, const exitc_tensor_view* inputs, size_t num_inputs,
                             exitc_result** out_result) {
    if (!model || !out_result || (!inputs && num_inputs > 0))
        return fail(EXITC_ERR_INVALID_ARGUMENT, "exitc_model_run: NULL argument");
    *out_result = nullptr;
    return guarded([&] {
        std::vector<exitc::NamedTensorView> feeds;
        feeds.reserve(num_inputs);
        for (size_t i = 0; i < num_inputs; ++i) {
            const exitc_tensor_view& in = inputs[i];
            if (!in.name) throw exitc::Error(exitc::ErrorCode::kInvalidArgument, "input " + std::to_string(i) + " has no name");
            if (!exitc::is_known_dtype(in.dtype))
                throw exitc::Error(exitc::ErrorCode::kInvalidArgument,
                                   std::string("input '") + in.name + "' has unknown dtype code " + std::to_string(in.dtype));
            if (!in.shape && in.rank > 0)
                throw exitc::Error(exitc::ErrorCode::kInvalidArgument, std::string("input '") + in.name + "' has no shape");
            feeds.push_back({in.name, exitc::TensorView{static_cast<exitc::DType>(in.dtype), exitc::Shape(in.shape, in.rank), in.data}});
        }
        auto handle = std::make_unique<exitc_result>(exitc_result{model->model.run(feeds)});
        *out_result = handle.release();  // ownership passes to the caller (exitc_result_free)
    });
}

void exitc_result_free(exitc_result* result) { delete result; }

size_t exitc_result_num_outputs(const exitc_result* result) { return result ? result->result.outputs.size() : 0; }

exitc_status exitc_result_output(const exitc_result* result, size_t i, exitc_tensor_view* out_view) {
    if (!result || !out_view) return fail(EXITC_ERR_INVALID_ARGUMENT, "exitc_result_output: NULL argument");
    if (i >= result->result.outputs.size())
        return fail(EXITC_ERR_INVALID_ARGUMENT, "exitc_result_output: index " + std::to_string(i) + " out of range (" +
                                                    std::to_string(result->result.outputs.size()) + " outputs)");
    const exitc::Tensor& t = result->result.outputs[i];
    out_view->name = result->result.output_names[i].c_str();
    out_view->dtype = static_cast<int32_t>(t.dtype());
    out_view->shape = t.shape().data();
    out_view->rank = t.shape().rank();
    out_view->data = t.data();
    return EXITC_OK;
}

const int64_t* exitc_result_exit_index(const exitc_result* result, size_t* out_batch) {
    if (!result) {
        if (out_batch) *out_batch = 0;
        return nullptr;
    }
    if (out_batch) *out_batch = result->result.exit_index.size();
    return result->result.exit_index.data();
}

exitc_status exitc_model_stats(const exitc_model* model, uint64_t* counts, size_t capacity, size_t* out_num_counts) {
    if (!model || (!counts && capacity > 0)) return fail(EXITC_ERR_INVALID_ARGUMENT, "exitc_model_stats: NULL argument");
    return guarded([&] {
        const exitc::ExitStats stats = model->model.stats();
        for (size_t i = 0; i < capacity && i < stats.rows_per_exit.size(); ++i) counts[i] = stats.rows_per_exit[i];
        if (out_num_counts) *out_num_counts = stats.rows_per_exit.size();
    });
}

exitc_status exitc_model_get_totals(const exitc_model* model, exitc_model_totals* out_totals) {
    if (!model || !out_totals) return fail(EXITC_ERR_INVALID_ARGUMENT, "exitc_model_get_totals: NULL argument");
    if (out_totals->struct_size < EXITC_MODEL_TOTALS_V1_SIZE)
        return fail(EXITC_ERR_INVALID_ARGUMENT, "exitc_model_get_totals: struct_size " +
                                                    std::to_string(out_totals->struct_size) + " is below the version 1 size " +
                                                    std::to_string(EXITC_MODEL_TOTALS_V1_SIZE));
    return guarded([&] {
        const exitc::ExitStats stats = model->model.stats();
        // Version 1 is every field this library knows; a larger (newer) caller struct keeps its tail.
        out_totals->struct_size = EXITC_MODEL_TOTALS_V1_SIZE;
        out_totals->calls = stats.calls;
        out_totals->rows = stats.rows;
        out_totals->engine_seconds = stats.engine_seconds;
        out_totals->overhead_seconds = stats.overhead_seconds;
    });
}

void exitc_model_reset_stats(exitc_model* model) {
    if (model) model->model.reset_stats();
}

const char* exitc_last_error_message(void) { return g_last_error.c_str(); }

}  // extern "C"
