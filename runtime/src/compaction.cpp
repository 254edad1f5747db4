#include "exitc/compaction.hpp"

#include <cstring>

namespace exitc {
namespace {

// A tensor seen as [outer, rows, inner] around its batch axis; inner in bytes.
struct RowLayout {
    int64_t outer = 1;
    int64_t rows = 0;
    std::size_t row_bytes = 0;
};

RowLayout row_layout(const Shape& shape, int batch_axis, DType dtype) {
    RowLayout layout;
    int64_t inner = 1;
    for (std::size_t a = 0; a < shape.rank(); ++a) {
        if (static_cast<int>(a) < batch_axis) layout.outer *= shape[a];
        else if (static_cast<int>(a) == batch_axis) layout.rows = shape[a];
        else inner *= shape[a];
    }
    layout.row_bytes = static_cast<std::size_t>(inner) * dtype_size(dtype);
    return layout;
}

}  // namespace

std::size_t exit_mask(const float* score, std::size_t rows, double threshold, std::vector<uint8_t>& exits) {
    const float threshold32 = static_cast<float>(threshold);
    exits.resize(rows);
    std::size_t count = 0;
    for (std::size_t i = 0; i < rows; ++i) {
        const bool leaves = score[i] >= threshold32;  // NaN never exits
        exits[i] = leaves ? 1 : 0;
        count += leaves;
    }
    return count;
}

Shape compacted_shape(const Shape& shape, int batch_axis, int64_t keep_count) {
    Shape out = shape;
    out[static_cast<std::size_t>(batch_axis)] = keep_count;
    return out;
}

TensorView compact_rows(const TensorView& src, int batch_axis, const int64_t* keep, std::size_t keep_count,
                        void* dst) {
    const RowLayout layout = row_layout(src.shape, batch_axis, src.dtype);
    if (layout.row_bytes == 0 || keep_count == 0)
        return TensorView{src.dtype, compacted_shape(src.shape, batch_axis, static_cast<int64_t>(keep_count)), dst};
    const auto* from = static_cast<const unsigned char*>(src.data);
    auto* to = static_cast<unsigned char*>(dst);
    // Rows go to increasing destinations that never pass their sources (keep[j] >= j), so a
    // forward walk with memmove is correct even when dst == src.data.
    for (int64_t o = 0; o < layout.outer; ++o) {
        const unsigned char* block = from + static_cast<std::size_t>(o * layout.rows) * layout.row_bytes;
        for (std::size_t j = 0; j < keep_count; ++j) {
            const unsigned char* row = block + static_cast<std::size_t>(keep[j]) * layout.row_bytes;
            if (row != to) std::memmove(to, row, layout.row_bytes);
            to += layout.row_bytes;
        }
    }
    return TensorView{src.dtype, compacted_shape(src.shape, batch_axis, static_cast<int64_t>(keep_count)), dst};
}

namespace {

// One row of `src` (laid out as `from`) into one row of `dst` (laid out as `to`); the layouts are
// computed by the caller, once per tensor rather than once per row.
void copy_row_bytes(const TensorView& src, const RowLayout& from, int64_t src_row, void* dst, const RowLayout& to,
                    int64_t dst_row) {
    const auto* src_bytes = static_cast<const unsigned char*>(src.data);
    auto* dst_bytes = static_cast<unsigned char*>(dst);
    for (int64_t o = 0; o < from.outer; ++o)
        std::memcpy(dst_bytes + static_cast<std::size_t>(o * to.rows + dst_row) * to.row_bytes,
                    src_bytes + static_cast<std::size_t>(o * from.rows + src_row) * from.row_bytes, from.row_bytes);
}

}  // namespace

void copy_row(const TensorView& src, int batch_axis, int64_t src_row, void* dst, const Shape& dst_shape,
              int64_t dst_row) {
    const RowLayout from = row_layout(src.shape, batch_axis, src.dtype);
    if (from.row_bytes == 0) return;
    copy_row_bytes(src, from, src_row, dst, row_layout(dst_shape, batch_axis, src.dtype), dst_row);
}

void scatter_rows(const TensorView& src, int batch_axis, const int64_t* rows, void* dst, const Shape& dst_shape) {
    const RowLayout from = row_layout(src.shape, batch_axis, src.dtype);
    if (from.row_bytes == 0) return;  // nothing to write
    const RowLayout to = row_layout(dst_shape, batch_axis, src.dtype);
    for (int64_t i = 0; i < from.rows; ++i) copy_row_bytes(src, from, i, dst, to, rows[i]);
}

}  // namespace exitc
