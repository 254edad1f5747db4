#pragma once
// Element types. The numeric values are ONNX TensorProto.DataType codes, so backends and the C ABI
// can pass them through unchanged.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace exitc {

enum class DType : int32_t {
    kFloat32 = 1,
    kUInt8 = 2,
    kInt8 = 3,
    kUInt16 = 4,
    kInt16 = 5,
    kInt32 = 6,
    kInt64 = 7,
    kBool = 9,
    kFloat16 = 10,
    kFloat64 = 11,
    kUInt32 = 12,
    kUInt64 = 13,
    kBFloat16 = 16,
};

// Bytes per element; 0 for a value that is not a known DType.
std::size_t dtype_size(DType dtype) noexcept;

// The manifest spelling ("float32", "int64", ...), which is numpy's.
std::string_view dtype_name(DType dtype) noexcept;

// Parses a manifest spelling; nullopt when unknown.
std::optional<DType> parse_dtype(std::string_view name) noexcept;

// True when `code` is one of the DType enumerators.
bool is_known_dtype(int32_t code) noexcept;

}  // namespace exitc
