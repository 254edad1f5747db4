#pragma once
// Tensors crossing the API: `Shape` (inline, no heap), `TensorView` (non-owning, span-like, used
// for inputs and for everything the runtime passes between segments) and `Tensor` (owning, used
// for results).

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "exitc/dtype.hpp"

namespace exitc {

// A tensor shape stored inline: views and per-row bookkeeping never allocate for shapes.
class Shape {
public:
    static constexpr std::size_t kMaxRank = 8;

    Shape() = default;
    Shape(std::initializer_list<int64_t> dims);
    Shape(const int64_t* dims, std::size_t rank);  // throws Error(kInvalidArgument) if rank > kMaxRank
    explicit Shape(const std::vector<int64_t>& dims) : Shape(dims.data(), dims.size()) {}

    std::size_t rank() const noexcept { return rank_; }
    int64_t operator[](std::size_t axis) const noexcept { return dims_[axis]; }
    int64_t& operator[](std::size_t axis) noexcept { return dims_[axis]; }
    const int64_t* data() const noexcept { return dims_.data(); }
    const int64_t* begin() const noexcept { return dims_.data(); }
    const int64_t* end() const noexcept { return dims_.data() + rank_; }

    // Product of all dims (1 for a scalar).
    int64_t num_elements() const noexcept;
    std::vector<int64_t> to_vector() const { return {begin(), end()}; }
    std::string to_string() const;  // "[2, 4]"

    friend bool operator==(const Shape& a, const Shape& b) noexcept;
    friend bool operator!=(const Shape& a, const Shape& b) noexcept { return !(a == b); }

private:
    std::array<int64_t, kMaxRank> dims_{};
    std::size_t rank_ = 0;
};

// A non-owning view of a dense, row-major tensor. The caller keeps `data` alive.
struct TensorView {
    DType dtype = DType::kFloat32;
    Shape shape;
    const void* data = nullptr;

    int64_t num_elements() const noexcept { return shape.num_elements(); }
    std::size_t byte_size() const noexcept {
        return static_cast<std::size_t>(num_elements()) * dtype_size(dtype);
    }
    template <typename T>
    const T* as() const noexcept { return static_cast<const T*>(data); }
};

// An owning dense tensor (results). Storage is zero-initialised.
class Tensor {
public:
    Tensor() = default;
    Tensor(DType dtype, const Shape& shape);

    DType dtype() const noexcept { return dtype_; }
    const Shape& shape() const noexcept { return shape_; }
    int64_t num_elements() const noexcept { return shape_.num_elements(); }
    std::size_t byte_size() const noexcept { return bytes_.size(); }
    void* data() noexcept { return bytes_.data(); }
    const void* data() const noexcept { return bytes_.data(); }
    template <typename T>
    T* as() noexcept { return reinterpret_cast<T*>(bytes_.data()); }
    template <typename T>
    const T* as() const noexcept { return reinterpret_cast<const T*>(bytes_.data()); }

    TensorView view() const noexcept { return TensorView{dtype_, shape_, bytes_.data()}; }

private:
    DType dtype_ = DType::kFloat32;
    Shape shape_;
    // operator new aligns to at least 16 bytes, so every element type can be read in place.
    std::vector<unsigned char> bytes_;
};

// A (name, view) pair: the feed format of `Model::run`.
struct NamedTensorView {
    std::string name;
    TensorView view;
};

}  // namespace exitc
