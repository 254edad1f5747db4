// Padding of token models (exitc/sequence.hpp): row lengths from a mask, the split of a batch by
// length, and rows cut to a length. The known answers are the ones tests/test_sequence.py checks
// exitc.passes.sequence against, so both runtimes split batches alike.

#include <cstdint>
#include <vector>

#include "exitc/sequence.hpp"
#include "test_framework.hpp"

using namespace exitc;

namespace {

using Chunks = std::vector<std::vector<int64_t>>;

}  // namespace

EXITC_TEST(row_lengths_of_int64_float_and_bool_masks) {
    const std::vector<int64_t> m64 = {1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0};
    const std::vector<int64_t> want = {2, 4, 0, 3};
    CHECK(row_lengths(TensorView{DType::kInt64, Shape{4, 4}, m64.data()}) == want);
    const std::vector<float> mf(m64.begin(), m64.end());
    CHECK(row_lengths(TensorView{DType::kFloat32, Shape{4, 4}, mf.data()}) == want);
    const std::vector<uint8_t> mb(m64.begin(), m64.end());
    CHECK(row_lengths(TensorView{DType::kBool, Shape{4, 4}, mb.data()}) == want);
    CHECK_THROWS(row_lengths(TensorView{DType::kInt64, Shape{16}, m64.data()}), ErrorCode::kInvalidArgument,
                 "expected [batch, length]");
}

EXITC_TEST(length_chunks_known_answers) {
    // tests/test_sequence.py::test_length_chunks_known_answers has the same cases.
    CHECK(length_chunks({2, 100, 2, 100, 2}, 1.0, 100) == (Chunks{{0, 2, 4}, {1, 3}}));
    CHECK(length_chunks({2, 100, 2, 100, 2}, 1000.0, 100) == (Chunks{{0, 2, 4, 1, 3}}));
    CHECK(length_chunks({50, 10, 30}, 0.0, 100) == (Chunks{{1}, {2}, {0}}));
    CHECK(length_chunks({7}, 1.0, 8) == (Chunks{{0}}));
    CHECK(length_chunks({}, 1.0, 8) == (Chunks{{}}));
    // equal lengths: one chunk (ties go to the longest chunk)
    CHECK(length_chunks({5, 5, 5, 5}, 0.0, 8) == (Chunks{{0, 1, 2, 3}}));
}

EXITC_TEST(take_rows_cuts_and_gathers) {
    // [3, 4] token ids: row r holds r*10 + position
    std::vector<int64_t> ids(12);
    for (int r = 0; r < 3; ++r)
        for (int p = 0; p < 4; ++p) ids[static_cast<std::size_t>(r * 4 + p)] = r * 10 + p;
    const TensorView src{DType::kInt64, Shape{3, 4}, ids.data()};
    const int64_t rows[] = {2, 0};
    const Tensor cut = take_rows(src, 0, rows, 2, 1, 2);
    CHECK(cut.shape() == (Shape{2, 2}));
    CHECK(cut.as<int64_t>()[0] == 20 && cut.as<int64_t>()[1] == 21 && cut.as<int64_t>()[2] == 0 &&
          cut.as<int64_t>()[3] == 1);
    const Tensor whole = take_rows(src, 0, rows, 2, 1, -1);
    CHECK(whole.shape() == (Shape{2, 4}));
    CHECK(whole.as<int64_t>()[4] == 0 && whole.as<int64_t>()[3] == 23);
    CHECK_THROWS(take_rows(src, 0, rows, 2, 1, 5), ErrorCode::kInvalidArgument, "cannot cut");
}

EXITC_TEST_MAIN
