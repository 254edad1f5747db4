#pragma once
// Error type of the C++ API. Every failure carries a category (mapped 1:1 to the C ABI status
// codes) and a message that names the file / field / tensor involved.

#include <stdexcept>
#include <string>

namespace exitc {

enum class ErrorCode {
    kInvalidArgument = 1,  // bad feeds: unknown/missing name, dtype, rank, dims
    kManifest = 2,         // manifest.json unreadable, bad JSON, bad/unsupported fields
    kIo = 3,               // a file named by the manifest is missing or unreadable
    kBackend = 4,          // the engine (ONNX Runtime, ...) refused to load or run a segment
    kInternal = 5,         // a broken invariant; a bug in exitc or a mismatched artifact
};

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ErrorCode code() const noexcept { return code_; }

private:
    ErrorCode code_;
};

}  // namespace exitc
