// compact_rows / scatter_rows / exit_mask on every exit pattern of small batches, batch axes 0
// and 1, several dtypes, in place and out of place.

#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "exitc/compaction.hpp"
#include "test_framework.hpp"

using namespace exitc;

namespace {

// A [outer, rows, inner] tensor whose element value encodes (o, r, i).
template <typename T>
std::vector<T> make_rows(int64_t outer, int64_t rows, int64_t inner) {
    std::vector<T> v(static_cast<std::size_t>(outer * rows * inner));
    for (int64_t o = 0; o < outer; ++o)
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t i = 0; i < inner; ++i)
                v[static_cast<std::size_t>((o * rows + r) * inner + i)] = static_cast<T>(o * 1000 + r * 10 + i);
    return v;
}

template <typename T>
void check_all_patterns(DType dtype, int batch_axis, bool in_place) {
    const int64_t outer = batch_axis == 1 ? 3 : 1;
    const int64_t inner = 2;
    for (int64_t rows = 1; rows <= 6; ++rows) {
        const Shape shape = batch_axis == 1 ? Shape{outer, rows, inner} : Shape{rows, inner};
        for (uint32_t pattern = 0; pattern < (1u << rows); ++pattern) {
            std::vector<T> src = make_rows<T>(outer, rows, inner);
            const std::vector<T> original = src;
            std::vector<int64_t> keep;
            for (int64_t r = 0; r < rows; ++r)
                if (pattern & (1u << r)) keep.push_back(r);
            std::vector<T> dst(src.size(), T(0));
            void* out = in_place ? static_cast<void*>(src.data()) : static_cast<void*>(dst.data());
            const TensorView view{dtype, shape, src.data()};
            const TensorView compacted = compact_rows(view, batch_axis, keep.data(), keep.size(), out);
            CHECK(compacted.data == out);
            CHECK_EQ(compacted.shape[static_cast<std::size_t>(batch_axis)], static_cast<int64_t>(keep.size()));
            const T* got = static_cast<const T*>(out);
            for (int64_t o = 0; o < outer; ++o)
                for (std::size_t j = 0; j < keep.size(); ++j)
                    for (int64_t i = 0; i < inner; ++i)
                        CHECK_EQ(static_cast<int64_t>(got[(o * static_cast<int64_t>(keep.size()) + static_cast<int64_t>(j)) * inner + i]),
                                 static_cast<int64_t>(original[static_cast<std::size_t>((o * rows + keep[j]) * inner + i)]));
            // Scatter back into a zeroed full tensor: kept rows return, others stay zero.
            std::vector<T> back(original.size(), T(0));
            std::vector<T> dense(got, got + outer * static_cast<int64_t>(keep.size()) * inner);
            scatter_rows(TensorView{dtype, compacted.shape, dense.data()}, batch_axis, keep.data(), back.data(), shape);
            for (int64_t o = 0; o < outer; ++o)
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t i = 0; i < inner; ++i) {
                        const auto idx = static_cast<std::size_t>((o * rows + r) * inner + i);
                        const bool kept = (pattern & (1u << r)) != 0;
                        CHECK_EQ(static_cast<int64_t>(back[idx]), kept ? static_cast<int64_t>(original[idx]) : 0);
                    }
        }
    }
}

}  // namespace

EXITC_TEST(all_patterns_float_axis0) { check_all_patterns<float>(DType::kFloat32, 0, false); }
EXITC_TEST(all_patterns_float_axis0_in_place) { check_all_patterns<float>(DType::kFloat32, 0, true); }
EXITC_TEST(all_patterns_int64_axis1) { check_all_patterns<int64_t>(DType::kInt64, 1, false); }
EXITC_TEST(all_patterns_int64_axis1_in_place) { check_all_patterns<int64_t>(DType::kInt64, 1, true); }
EXITC_TEST(all_patterns_uint8_axis1) { check_all_patterns<uint8_t>(DType::kUInt8, 1, false); }

EXITC_TEST(empty_survivors) {
    std::vector<float> src = make_rows<float>(1, 5, 3);
    std::vector<float> dst(1, -1.0f);
    const TensorView v = compact_rows(TensorView{DType::kFloat32, Shape{5, 3}, src.data()}, 0, nullptr, 0, dst.data());
    CHECK_EQ(v.shape, (Shape{0, 3}));
    CHECK_EQ(v.num_elements(), 0);
    CHECK_EQ(dst[0], -1.0f);  // nothing written
}

EXITC_TEST(all_survivors_is_identity) {
    for (int64_t rows : {1, 2, 7, 33}) {
        std::vector<float> src = make_rows<float>(1, rows, 5);
        std::vector<int64_t> keep(static_cast<std::size_t>(rows));
        std::iota(keep.begin(), keep.end(), 0);
        std::vector<float> dst(src.size());
        compact_rows(TensorView{DType::kFloat32, Shape{rows, 5}, src.data()}, 0, keep.data(), keep.size(), dst.data());
        CHECK(dst == src);
        // In place with every row kept touches nothing.
        compact_rows(TensorView{DType::kFloat32, Shape{rows, 5}, src.data()}, 0, keep.data(), keep.size(), src.data());
        CHECK(dst == src);
    }
}

EXITC_TEST(batch_one_and_rank_one) {
    std::vector<float> score{0.5f};
    std::vector<int64_t> keep{0};
    std::vector<float> dst(1);
    const TensorView v = compact_rows(TensorView{DType::kFloat32, Shape{1}, score.data()}, 0, keep.data(), 1, dst.data());
    CHECK_EQ(v.shape, Shape{1});
    CHECK_EQ(dst[0], 0.5f);
}

EXITC_TEST(odd_sizes_large) {
    // 1000 rows of 7 doubles, keep every third row: exercises long runs and odd row sizes.
    const int64_t rows = 1000, inner = 7;
    std::vector<double> src = make_rows<double>(1, rows, inner);
    std::vector<int64_t> keep;
    for (int64_t r = 0; r < rows; r += 3) keep.push_back(r);
    compact_rows(TensorView{DType::kFloat64, Shape{rows, inner}, src.data()}, 0, keep.data(), keep.size(), src.data());
    for (std::size_t j = 0; j < keep.size(); ++j)
        CHECK_EQ(src[j * inner + 6], static_cast<double>(keep[j] * 10 + 6));
}

EXITC_TEST(exit_mask_threshold_in_float32) {
    std::vector<uint8_t> mask;
    const float scores[] = {0.1f, 0.9f, 0.5f, static_cast<float>(0.7), std::nanf("")};
    // 0.7 as double is not representable in float; the comparison happens in float32, so a score
    // equal to float(0.7) exits (numpy: float32_array >= 0.7 behaves the same).
    CHECK_EQ(exit_mask(scores, 5, 0.7, mask), 2u);
    CHECK(mask == (std::vector<uint8_t>{0, 1, 0, 1, 0}));
    CHECK_EQ(exit_mask(scores, 0, 0.7, mask), 0u);
    CHECK(mask.empty());
}

EXITC_TEST_MAIN
