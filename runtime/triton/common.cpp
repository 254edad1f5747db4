#include "common.hpp"

namespace exitc_triton {

using exitc::DType;

std::optional<DType> to_exitc(TRITONSERVER_DataType t) noexcept {
    switch (t) {
        case TRITONSERVER_TYPE_BOOL: return DType::kBool;
        case TRITONSERVER_TYPE_UINT8: return DType::kUInt8;
        case TRITONSERVER_TYPE_UINT16: return DType::kUInt16;
        case TRITONSERVER_TYPE_UINT32: return DType::kUInt32;
        case TRITONSERVER_TYPE_UINT64: return DType::kUInt64;
        case TRITONSERVER_TYPE_INT8: return DType::kInt8;
        case TRITONSERVER_TYPE_INT16: return DType::kInt16;
        case TRITONSERVER_TYPE_INT32: return DType::kInt32;
        case TRITONSERVER_TYPE_INT64: return DType::kInt64;
        case TRITONSERVER_TYPE_FP16: return DType::kFloat16;
        case TRITONSERVER_TYPE_FP32: return DType::kFloat32;
        case TRITONSERVER_TYPE_FP64: return DType::kFloat64;
        case TRITONSERVER_TYPE_BF16: return DType::kBFloat16;
        default: return std::nullopt;
    }
}

TRITONSERVER_DataType to_triton(DType d) noexcept {
    switch (d) {
        case DType::kBool: return TRITONSERVER_TYPE_BOOL;
        case DType::kUInt8: return TRITONSERVER_TYPE_UINT8;
        case DType::kUInt16: return TRITONSERVER_TYPE_UINT16;
        case DType::kUInt32: return TRITONSERVER_TYPE_UINT32;
        case DType::kUInt64: return TRITONSERVER_TYPE_UINT64;
        case DType::kInt8: return TRITONSERVER_TYPE_INT8;
        case DType::kInt16: return TRITONSERVER_TYPE_INT16;
        case DType::kInt32: return TRITONSERVER_TYPE_INT32;
        case DType::kInt64: return TRITONSERVER_TYPE_INT64;
        case DType::kFloat16: return TRITONSERVER_TYPE_FP16;
        case DType::kFloat32: return TRITONSERVER_TYPE_FP32;
        case DType::kFloat64: return TRITONSERVER_TYPE_FP64;
        case DType::kBFloat16: return TRITONSERVER_TYPE_BF16;
    }
    return TRITONSERVER_TYPE_INVALID;
}

const char* triton_type_name(TRITONSERVER_DataType t) noexcept {
    switch (t) {
        case TRITONSERVER_TYPE_BOOL: return "BOOL";
        case TRITONSERVER_TYPE_UINT8: return "UINT8";
        case TRITONSERVER_TYPE_UINT16: return "UINT16";
        case TRITONSERVER_TYPE_UINT32: return "UINT32";
        case TRITONSERVER_TYPE_UINT64: return "UINT64";
        case TRITONSERVER_TYPE_INT8: return "INT8";
        case TRITONSERVER_TYPE_INT16: return "INT16";
        case TRITONSERVER_TYPE_INT32: return "INT32";
        case TRITONSERVER_TYPE_INT64: return "INT64";
        case TRITONSERVER_TYPE_FP16: return "FP16";
        case TRITONSERVER_TYPE_FP32: return "FP32";
        case TRITONSERVER_TYPE_FP64: return "FP64";
        case TRITONSERVER_TYPE_BYTES: return "BYTES";
        case TRITONSERVER_TYPE_BF16: return "BF16";
        default: return "INVALID";
    }
}

std::optional<DType> parse_config_type(const std::string& name) noexcept {
    static const struct { const char* name; DType d; } table[] = {
        {"TYPE_BOOL", DType::kBool},    {"TYPE_UINT8", DType::kUInt8},   {"TYPE_UINT16", DType::kUInt16},
        {"TYPE_UINT32", DType::kUInt32}, {"TYPE_UINT64", DType::kUInt64}, {"TYPE_INT8", DType::kInt8},
        {"TYPE_INT16", DType::kInt16},  {"TYPE_INT32", DType::kInt32},   {"TYPE_INT64", DType::kInt64},
        {"TYPE_FP16", DType::kFloat16}, {"TYPE_FP32", DType::kFloat32},  {"TYPE_FP64", DType::kFloat64},
        {"TYPE_BF16", DType::kBFloat16},
    };
    for (const auto& e : table)
        if (name == e.name) return e.d;
    return std::nullopt;
}

std::string config_type_name(DType d) { return std::string("TYPE_") + triton_type_name(to_triton(d)); }

}  // namespace exitc_triton
