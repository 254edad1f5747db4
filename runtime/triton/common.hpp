#pragma once
// Small helpers shared by the backend's files: owning TRITONSERVER_Error handles, logging, the
// Triton <-> exitc dtype mapping, and the exception barrier of every entry point.

#include <memory>
#include <optional>
#include <sstream>
#include <string>

#include "exitc/dtype.hpp"
#include "triton_api.hpp"

namespace exitc_triton {

// An owned TRITONSERVER_Error (deleted unless released to Triton).
struct ErrorDeleter {
    void operator()(TRITONSERVER_Error* e) const noexcept {
        if (e) TRITONSERVER_ErrorDelete(e);
    }
};
using ErrorPtr = std::unique_ptr<TRITONSERVER_Error, ErrorDeleter>;

inline ErrorPtr make_error(TRITONSERVER_Error_Code code, const std::string& message) {
    return ErrorPtr(TRITONSERVER_ErrorNew(code, message.c_str()));
}

// Thrown inside the backend (never across the C ABI: entry points catch it, see guarded()).
struct BackendError {
    TRITONSERVER_Error_Code code;
    std::string message;
};

[[noreturn]] inline void fail(TRITONSERVER_Error_Code code, const std::string& message) {
    throw BackendError{code, message};
}

// Throws BackendError when a Triton call returns an error (deleting it).
inline void check(TRITONSERVER_Error* err, const char* what) {
    if (err == nullptr) return;
    ErrorPtr owned(err);
    fail(TRITONSERVER_ERROR_INTERNAL, std::string(what) + ": " + TRITONSERVER_ErrorMessage(err));
}

inline void log(TRITONSERVER_LogLevel level, const char* file, int line, const std::string& message) noexcept {
    if (!TRITONSERVER_LogIsEnabled(level)) return;
    TRITONSERVER_Error* e = TRITONSERVER_LogMessage(level, file, line, ("exitc backend: " + message).c_str());
    if (e) TRITONSERVER_ErrorDelete(e);
}

#define EXITC_LOG(level, msg)                                         \
    do {                                                              \
        std::ostringstream exitc_log_os_;                             \
        exitc_log_os_ << msg;                                         \
        ::exitc_triton::log(level, __FILE__, __LINE__, exitc_log_os_.str()); \
    } while (0)

// Runs `body` and turns every exception into a TRITONSERVER_Error handed to Triton.
template <typename F>
TRITONSERVER_Error* guarded(const char* where, F&& body) noexcept {
    try {
        body();
        return nullptr;
    } catch (const BackendError& e) {
        EXITC_LOG(TRITONSERVER_LOG_ERROR, where << ": " << e.message);
        return TRITONSERVER_ErrorNew(e.code, e.message.c_str());
    } catch (const std::exception& e) {
        EXITC_LOG(TRITONSERVER_LOG_ERROR, where << ": " << e.what());
        return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, e.what());
    } catch (...) {
        EXITC_LOG(TRITONSERVER_LOG_ERROR, where << ": unknown exception");
        return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, "exitc backend: unknown exception");
    }
}

// dtype mapping; nullopt for types exitc has no counterpart for (BYTES).
std::optional<exitc::DType> to_exitc(TRITONSERVER_DataType t) noexcept;
TRITONSERVER_DataType to_triton(exitc::DType d) noexcept;
// Model-config spelling ("TYPE_FP32") <-> exitc.
std::optional<exitc::DType> parse_config_type(const std::string& name) noexcept;
std::string config_type_name(exitc::DType d);
const char* triton_type_name(TRITONSERVER_DataType t) noexcept;  // "FP32", as clients spell it

}  // namespace exitc_triton
