#pragma once
// Batch bookkeeping of early exit: which rows leave at an exit, gathering the remaining rows
// densely (compaction) and writing per-row results back to request order (scatter).
// All functions work on any dtype and any batch axis; none allocates.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "exitc/tensor.hpp"

namespace exitc {

// exits[i] = score[i] >= threshold, compared in float32 (the same comparison numpy makes for a
// float32 array against a Python float, and the conditional graph makes with a float32 constant).
// Returns the number of exiting rows. `exits` is resized (no reallocation once large enough).
std::size_t exit_mask(const float* score, std::size_t rows, double threshold, std::vector<uint8_t>& exits);

// Shape of `view` with `keep_count` rows along `batch_axis`.
Shape compacted_shape(const Shape& shape, int batch_axis, int64_t keep_count);

// Gathers rows `keep[0..keep_count)` (strictly increasing indices into src's batch axis) of `src`
// densely into `dst`, which must hold compacted_shape(...) elements. `dst` may alias `src.data`
// (in-place compaction is safe because every row moves towards the front). Returns the view of
// the result.
TensorView compact_rows(const TensorView& src, int batch_axis, const int64_t* keep, std::size_t keep_count,
                        void* dst);

// Copies row `src_row` of `src` (along `batch_axis`) into row `dst_row` of `dst`, a tensor of
// shape `dst_shape` with src's dtype and non-batch dims.
void copy_row(const TensorView& src, int batch_axis, int64_t src_row, void* dst, const Shape& dst_shape,
              int64_t dst_row);

// Writes row i of `src` (along `batch_axis`) into row rows[i] of `dst`, for i < src rows.
// `dst` has the same dtype and non-batch dims as `src`; rows[i] < dst rows.
void scatter_rows(const TensorView& src, int batch_axis, const int64_t* rows, void* dst, const Shape& dst_shape);

}  // namespace exitc
