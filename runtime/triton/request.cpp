#include "request.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common.hpp"

namespace exitc_triton {

uint64_t now_ns() noexcept {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

namespace {

std::string shape_text(const int64_t* shape, uint32_t n) {
    std::string s = "[";
    for (uint32_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// Returns the error message of `err` (deleting it), or "" for nullptr.
std::string take_message(TRITONSERVER_Error* err) {
    if (!err) return "";
    ErrorPtr owned(err);
    return TRITONSERVER_ErrorMessage(err);
}

}  // namespace

Request::Request(TRITONBACKEND_Request* request, TRITONBACKEND_ModelInstance* instance, uint64_t exec_start_ns)
    : request_(request), instance_(instance), exec_start_ns_(exec_start_ns) {}

Request::Request(Request&& o) noexcept
    : request_(o.request_),
      instance_(o.instance_),
      exec_start_ns_(o.exec_start_ns_),
      rows_(o.rows_),
      feeds_(std::move(o.feeds_)),
      gathered_(std::move(o.gathered_)),
      requested_(std::move(o.requested_)) {
    o.request_ = nullptr;
}

Request::~Request() {
    if (request_) respond_error(TRITONSERVER_ERROR_INTERNAL, "exitc backend: the request was dropped unanswered (bug)");
}

std::string Request::parse(const ModelConfig& config) {
    uint32_t count = 0;
    if (std::string m = take_message(TRITONBACKEND_RequestInputCount(request_, &count)); !m.empty()) return m;
    for (uint32_t i = 0; i < count; ++i) {
        const char* name = nullptr;
        if (std::string m = take_message(TRITONBACKEND_RequestInputName(request_, i, &name)); !m.empty()) return m;
        const bool known = std::any_of(config.inputs.begin(), config.inputs.end(),
                                       [&](const IoConfig& io) { return io.name == name; });
        if (!known) return "unexpected input '" + std::string(name) + "'";
    }
    rows_ = -1;
    std::string rows_from;
    for (const IoConfig& io : config.inputs) {
        const std::string what = "input '" + io.name + "'";
        TRITONBACKEND_Input* input = nullptr;
        if (TRITONSERVER_Error* e = TRITONBACKEND_RequestInput(request_, io.name.c_str(), &input)) {
            ErrorPtr owned(e);
            return "missing " + what;
        }
        const char* name = nullptr;
        TRITONSERVER_DataType dtype = TRITONSERVER_TYPE_INVALID;
        const int64_t* shape = nullptr;
        uint32_t dims = 0, buffers = 0;
        uint64_t bytes = 0;
        if (std::string m = take_message(TRITONBACKEND_InputProperties(input, &name, &dtype, &shape, &dims, &bytes, &buffers));
            !m.empty())
            return m;
        const auto edtype = to_exitc(dtype);
        if (!edtype || *edtype != io.dtype)
            return what + " has datatype " + triton_type_name(dtype) + ", expected " +
                   triton_type_name(to_triton(io.dtype));
        if (dims != io.dims.size() + 1)
            return what + " has shape " + shape_text(shape, dims) + ", expected " + std::to_string(io.dims.size() + 1) +
                   " dims (batch first)";
        for (std::size_t a = 0; a < io.dims.size(); ++a)
            if ((io.dims[a] >= 0 && shape[a + 1] != io.dims[a]) || shape[a + 1] < 0)
                return what + " has shape " + shape_text(shape, dims) + ": dim " + std::to_string(a + 1) + " must be " +
                       std::to_string(io.dims[a]);
        if (shape[0] < 1) return what + " has batch size " + std::to_string(shape[0]) + ": must be at least 1";
        if (shape[0] > config.max_batch_size)
            return what + " has batch size " + std::to_string(shape[0]) + ", over max_batch_size " +
                   std::to_string(config.max_batch_size);
        if (rows_ < 0) {
            rows_ = shape[0];
            rows_from = io.name;
        } else if (shape[0] != rows_) {
            return what + " has batch size " + std::to_string(shape[0]) + " but input '" + rows_from + "' has " +
                   std::to_string(rows_);
        }
        exitc::Shape eshape(shape, dims);
        const uint64_t expected = static_cast<uint64_t>(eshape.num_elements()) * exitc::dtype_size(io.dtype);
        if (bytes != expected)
            return what + " has " + std::to_string(bytes) + " bytes, shape " + shape_text(shape, dims) + " needs " +
                   std::to_string(expected);
        const void* data = nullptr;
        std::vector<unsigned char> gathered;
        for (uint32_t b = 0; b < buffers; ++b) {
            const void* buf = nullptr;
            uint64_t size = 0;
            TRITONSERVER_MemoryType mem = TRITONSERVER_MEMORY_CPU;
            int64_t mem_id = 0;
            if (std::string m = take_message(TRITONBACKEND_InputBuffer(input, b, &buf, &size, &mem, &mem_id)); !m.empty())
                return m;
            if (mem == TRITONSERVER_MEMORY_GPU) return what + " is in GPU memory; the exitc backend reads CPU memory";
            if (buffers == 1) {
                data = buf;
            } else {
                const auto* p = static_cast<const unsigned char*>(buf);
                gathered.insert(gathered.end(), p, p + size);
            }
        }
        if (buffers > 1) {
            if (gathered.size() != expected) return what + ": its buffers hold " + std::to_string(gathered.size()) + " bytes";
            gathered_.push_back(std::move(gathered));
            data = gathered_.back().data();
        }
        if (data == nullptr && expected > 0) return what + " has no data";
        feeds_.push_back({io.name, exitc::TensorView{io.dtype, eshape, data}});
    }
    uint32_t outputs = 0;
    if (std::string m = take_message(TRITONBACKEND_RequestOutputCount(request_, &outputs)); !m.empty()) return m;
    for (uint32_t i = 0; i < outputs; ++i) {
        const char* name = nullptr;
        if (std::string m = take_message(TRITONBACKEND_RequestOutputName(request_, i, &name)); !m.empty()) return m;
        if (!config.output(name)) return "unknown output '" + std::string(name) + "' requested";
        requested_.push_back(name);
    }
    if (requested_.empty())
        for (const auto& o : config.outputs) requested_.push_back(o.name);
    return "";
}

std::vector<std::vector<int64_t>> Request::feed_item_shapes() const {
    std::vector<std::vector<int64_t>> out;
    for (const auto& f : feeds_) out.emplace_back(f.view.shape.begin() + 1, f.view.shape.end());
    return out;
}

void Request::respond(const exitc::RunResult& result, int64_t row0, uint64_t compute_start_ns,
                      uint64_t compute_end_ns) noexcept {
    if (!request_) return;
    TRITONBACKEND_Response* response = nullptr;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseNew(&response, request_)) {
        EXITC_LOG(TRITONSERVER_LOG_ERROR, "cannot create a response: " << TRITONSERVER_ErrorMessage(e));
        TRITONSERVER_ErrorDelete(e);
        finish(false, compute_start_ns, compute_end_ns);
        return;
    }
    std::string failure;
    try {
        for (const std::string& name : requested_) {
            const void* src = nullptr;
            std::vector<int64_t> shape;
            std::size_t bytes = 0;
            TRITONSERVER_DataType dtype;
            if (name == kExitIndexOutput) {
                shape = {rows_, 1};
                dtype = TRITONSERVER_TYPE_INT64;
                src = result.exit_index.data() + row0;
                bytes = static_cast<std::size_t>(rows_) * sizeof(int64_t);
            } else {
                const exitc::Tensor& t = result.output(name);
                shape = t.shape().to_vector();
                const int64_t total_rows = shape.empty() ? 0 : shape[0];
                if (total_rows < row0 + rows_) throw std::runtime_error("output '" + name + "' has too few rows");
                const std::size_t row_bytes = total_rows > 0 ? t.byte_size() / static_cast<std::size_t>(total_rows) : 0;
                shape[0] = rows_;
                dtype = to_triton(t.dtype());
                src = static_cast<const unsigned char*>(t.data()) + static_cast<std::size_t>(row0) * row_bytes;
                bytes = static_cast<std::size_t>(rows_) * row_bytes;
            }
            TRITONBACKEND_Output* output = nullptr;
            check(TRITONBACKEND_ResponseOutput(response, &output, name.c_str(), dtype, shape.data(),
                                               static_cast<uint32_t>(shape.size())),
                  "TRITONBACKEND_ResponseOutput");
            void* dst = nullptr;
            TRITONSERVER_MemoryType mem = TRITONSERVER_MEMORY_CPU;
            int64_t mem_id = 0;
            check(TRITONBACKEND_OutputBuffer(output, &dst, bytes, &mem, &mem_id), "TRITONBACKEND_OutputBuffer");
            if (mem == TRITONSERVER_MEMORY_GPU) throw std::runtime_error("Triton offered a GPU output buffer");
            if (bytes > 0) std::memcpy(dst, src, bytes);
        }
    } catch (const BackendError& e) {
        failure = e.message;
    } catch (const std::exception& e) {
        failure = e.what();
    }
    ErrorPtr err = failure.empty() ? ErrorPtr() : make_error(TRITONSERVER_ERROR_INTERNAL, "exitc backend: " + failure);
    if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, err.get())) {
        EXITC_LOG(TRITONSERVER_LOG_ERROR, "cannot send a response: " << TRITONSERVER_ErrorMessage(e));
        TRITONSERVER_ErrorDelete(e);
    }
    finish(failure.empty(), compute_start_ns, compute_end_ns);
}

void Request::respond_error(TRITONSERVER_Error_Code code, const std::string& message) noexcept {
    if (!request_) return;
    TRITONBACKEND_Response* response = nullptr;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseNew(&response, request_)) {
        EXITC_LOG(TRITONSERVER_LOG_ERROR, "cannot create an error response: " << TRITONSERVER_ErrorMessage(e));
        TRITONSERVER_ErrorDelete(e);
    } else {
        ErrorPtr err(TRITONSERVER_ErrorNew(code, message.c_str()));
        if (TRITONSERVER_Error* e2 = TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, err.get())) {
            EXITC_LOG(TRITONSERVER_LOG_ERROR, "cannot send an error response: " << TRITONSERVER_ErrorMessage(e2));
            TRITONSERVER_ErrorDelete(e2);
        }
    }
    const uint64_t t = now_ns();
    finish(false, t, t);
}

void Request::finish(bool success, uint64_t compute_start_ns, uint64_t compute_end_ns) noexcept {
    const uint64_t end = now_ns();
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceReportStatistics(
            instance_, request_, success, exec_start_ns_, std::max(compute_start_ns, exec_start_ns_),
            std::max(compute_end_ns, exec_start_ns_), end))
        TRITONSERVER_ErrorDelete(e);
    if (TRITONSERVER_Error* e = TRITONBACKEND_RequestRelease(request_, TRITONSERVER_REQUEST_RELEASE_ALL)) {
        EXITC_LOG(TRITONSERVER_LOG_ERROR, "cannot release a request: " << TRITONSERVER_ErrorMessage(e));
        TRITONSERVER_ErrorDelete(e);
    }
    request_ = nullptr;
}

}  // namespace exitc_triton
