// Padding of token models: row lengths, the split of a batch by length, and rows cut to a length
// (see exitc/sequence.hpp; the definition is exitc.passes.sequence).

#include "exitc/sequence.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>

#include "exitc/compaction.hpp"
#include "exitc/error.hpp"

namespace exitc {
namespace {

template <typename T>
void lengths_of(const T* data, int64_t rows, int64_t width, std::vector<int64_t>& out) {
    for (int64_t r = 0; r < rows; ++r) {
        const T* row = data + r * width;
        int64_t last = 0;
        for (int64_t c = width; c > 0; --c)
            if (row[c - 1] != T(0)) {
                last = c;
                break;
            }
        out[static_cast<std::size_t>(r)] = last;
    }
}

}  // namespace

std::vector<int64_t> row_lengths(const TensorView& mask) {
    if (mask.shape.rank() != 2)
        throw Error(ErrorCode::kInvalidArgument, "the attention mask has shape " + mask.shape.to_string() +
                                                     ", expected [batch, length]");
    const int64_t rows = mask.shape[0], width = mask.shape[1];
    std::vector<int64_t> out(static_cast<std::size_t>(rows), 0);
    switch (mask.dtype) {
        case DType::kInt64: lengths_of(mask.as<int64_t>(), rows, width, out); break;
        case DType::kInt32: lengths_of(mask.as<int32_t>(), rows, width, out); break;
        case DType::kInt8: lengths_of(mask.as<int8_t>(), rows, width, out); break;
        case DType::kUInt8:
        case DType::kBool: lengths_of(mask.as<uint8_t>(), rows, width, out); break;
        case DType::kFloat32: lengths_of(mask.as<float>(), rows, width, out); break;
        default:
            throw Error(ErrorCode::kInvalidArgument, "the attention mask has dtype " + std::string(dtype_name(mask.dtype)) +
                                                         ", which exitc cannot read lengths from");
    }
    return out;
}

std::vector<std::vector<int64_t>> length_chunks(const std::vector<int64_t>& lengths, double call_rows,
                                                int64_t full_length) {
    const std::size_t n = lengths.size();
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return lengths[static_cast<std::size_t>(a)] < lengths[static_cast<std::size_t>(b)]; });
    if (n <= 1) return {order};
    // best[j]: cheapest split of the j shortest rows; cut[j]: where its last chunk starts. The
    // arithmetic is the reference's, term by term, so both choose the same cuts.
    std::vector<double> best(n + 1, std::numeric_limits<double>::infinity());
    std::vector<std::size_t> cut(n + 1, 0);
    best[0] = 0.0;
    for (std::size_t j = 1; j <= n; ++j) {
        const double longest = static_cast<double>(lengths[static_cast<std::size_t>(order[j - 1])]) /
                               static_cast<double>(full_length);
        for (std::size_t i = 0; i < j; ++i) {
            const double cost = best[i] + call_rows + static_cast<double>(j - i) * longest;
            if (cost < best[j]) {  // strict: the first minimum, as numpy's argmin
                best[j] = cost;
                cut[j] = i;
            }
        }
    }
    std::vector<std::vector<int64_t>> chunks;
    for (std::size_t j = n; j > 0; j = cut[j])
        chunks.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(cut[j]), order.begin() + static_cast<std::ptrdiff_t>(j));
    std::reverse(chunks.begin(), chunks.end());
    return chunks;
}

Tensor take_rows(const TensorView& src, int batch_axis, const int64_t* rows, int64_t count, int seq_axis,
                 int64_t length) {
    if (length < 0) {
        Tensor out(src.dtype, compacted_shape(src.shape, batch_axis, count));
        for (int64_t i = 0; i < count; ++i) copy_row(src, batch_axis, rows[i], out.data(), out.shape(), i);
        return out;
    }
    // A token input: batch-major with the sequence right after the batch, so the first `length`
    // positions of a row are the first bytes of that row.
    if (batch_axis != 0 || seq_axis != 1 || src.shape.rank() < 2 || length > src.shape[1])
        throw Error(ErrorCode::kInvalidArgument, "cannot cut a tensor of shape " + src.shape.to_string() +
                                                     " to length " + std::to_string(length) + " along axis " +
                                                     std::to_string(seq_axis));
    Shape shape = src.shape;
    shape[0] = count;
    shape[1] = length;
    Tensor out(src.dtype, shape);
    const std::size_t src_row = static_cast<std::size_t>(src.shape.num_elements() / std::max<int64_t>(src.shape[0], 1)) *
                                dtype_size(src.dtype);
    const std::size_t dst_row = static_cast<std::size_t>(count > 0 ? shape.num_elements() / count : 0) * dtype_size(src.dtype);
    const auto* from = static_cast<const unsigned char*>(src.data);
    auto* to = static_cast<unsigned char*>(out.data());
    for (int64_t i = 0; i < count; ++i)
        if (dst_row) std::memcpy(to + static_cast<std::size_t>(i) * dst_row, from + static_cast<std::size_t>(rows[i]) * src_row, dst_row);
    return out;
}

}  // namespace exitc
