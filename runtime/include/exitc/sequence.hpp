#pragma once
// Padding of token models (docs/artifact-format.md, "sequence"): a batch is split by length and
// each part runs at its longest row's length. The definition is exitc.passes.sequence
// (row_lengths, length_chunks, trim_feeds); these are the same rules, tested against it.

#include <cstdint>
#include <vector>

#include "exitc/tensor.hpp"

namespace exitc {

// Per row of a [batch, length] mask: one past the last non-zero entry (0 for an all-zero row).
// Any integer, bool or float dtype. Throws Error(kInvalidArgument) for rank != 2 or other dtypes.
std::vector<int64_t> row_lengths(const TensorView& mask);

// The rows in order of length (stable), cut into consecutive chunks minimising the sum over
// chunks of `call_rows + rows * longest / full_length`; ties go to the longest chunk, as in
// exitc.passes.sequence.length_chunks. Returns each chunk's row indices, shortest rows first.
std::vector<std::vector<int64_t>> length_chunks(const std::vector<int64_t>& lengths, double call_rows,
                                                int64_t full_length);

// Rows `rows[0..count)` of `src` (along `batch_axis`), and when `length` >= 0 each row cut to its
// first `length` entries along axis `seq_axis` (a [batch, L, ...] tensor), as a new dense tensor.
Tensor take_rows(const TensorView& src, int batch_axis, const int64_t* rows, int64_t count, int seq_axis,
                 int64_t length);

}  // namespace exitc
