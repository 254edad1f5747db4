#include "exitc/tensor.hpp"

#include <algorithm>
#include <sstream>

#include "exitc/error.hpp"

namespace exitc {

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(dims.begin(), dims.size()) {}

Shape::Shape(const int64_t* dims, std::size_t rank) {
    if (rank > kMaxRank)
        throw Error(ErrorCode::kInvalidArgument,
                    "tensor rank " + std::to_string(rank) + " exceeds the supported maximum " +
                        std::to_string(kMaxRank));
    std::copy(dims, dims + rank, dims_.begin());
    rank_ = rank;
}

int64_t Shape::num_elements() const noexcept {
    int64_t n = 1;
    for (std::size_t i = 0; i < rank_; ++i) n *= dims_[i];
    return n;
}

std::string Shape::to_string() const {
    std::ostringstream out;
    out << '[';
    for (std::size_t i = 0; i < rank_; ++i) out << (i ? ", " : "") << dims_[i];
    out << ']';
    return out.str();
}

bool operator==(const Shape& a, const Shape& b) noexcept {
    return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
}

Tensor::Tensor(DType dtype, const Shape& shape)
    : dtype_(dtype), shape_(shape),
      bytes_(static_cast<std::size_t>(std::max<int64_t>(shape.num_elements(), 0)) * dtype_size(dtype)) {}

}  // namespace exitc
