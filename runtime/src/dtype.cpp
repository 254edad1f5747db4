#include "exitc/dtype.hpp"

#include <array>
#include <utility>

namespace exitc {
namespace {

struct DTypeInfo {
    DType dtype;
    std::string_view name;
    std::size_t size;
};

constexpr std::array<DTypeInfo, 13> kDTypes{{
    {DType::kFloat32, "float32", 4},
    {DType::kUInt8, "uint8", 1},
    {DType::kInt8, "int8", 1},
    {DType::kUInt16, "uint16", 2},
    {DType::kInt16, "int16", 2},
    {DType::kInt32, "int32", 4},
    {DType::kInt64, "int64", 8},
    {DType::kBool, "bool", 1},
    {DType::kFloat16, "float16", 2},
    {DType::kFloat64, "float64", 8},
    {DType::kUInt32, "uint32", 4},
    {DType::kUInt64, "uint64", 8},
    {DType::kBFloat16, "bfloat16", 2},
}};

const DTypeInfo* find(DType dtype) noexcept {
    for (const auto& info : kDTypes)
        if (info.dtype == dtype) return &info;
    return nullptr;
}

}  // namespace

std::size_t dtype_size(DType dtype) noexcept {
    const auto* info = find(dtype);
    return info ? info->size : 0;
}

std::string_view dtype_name(DType dtype) noexcept {
    const auto* info = find(dtype);
    return info ? info->name : std::string_view("unknown");
}

std::optional<DType> parse_dtype(std::string_view name) noexcept {
    for (const auto& info : kDTypes)
        if (info.name == name) return info.dtype;
    if (name == "float") return DType::kFloat32;  // ONNX spellings, accepted for robustness
    if (name == "double") return DType::kFloat64;
    return std::nullopt;
}

bool is_known_dtype(int32_t code) noexcept { return find(static_cast<DType>(code)) != nullptr; }

}  // namespace exitc
