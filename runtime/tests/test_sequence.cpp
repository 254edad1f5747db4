// Padding of token models (exitc/sequence.hpp): row lengths from a mask, the split of a batch by
// length, and rows cut to a length. The known answers are the ones tests/test_sequence.py checks
// exitc.passes.sequence against, so both runtimes split batches alike.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "exitc/model.hpp"
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

namespace {

// A one-segment token model whose engine is a fake that records the shapes it is fed: logits[r] =
// (sum of the row's ids, the length it was run at, 0). The sum does not depend on the cut (ids
// are 0 in the padding), so every row's result is known whatever parts the runtime makes.
struct Recorder {
    std::mutex mutex;
    std::vector<Shape> fed;
};

struct RecordingExecutor : SegmentExecutor {
    std::shared_ptr<Recorder> rec;
    std::vector<std::string> in{"ids", "mask"}, out{"logits"};
    const std::vector<std::string>& input_names() const override { return in; }
    const std::vector<std::string>& output_names() const override { return out; }
    struct Storage : OutputStorage {
        std::vector<float> values;
    };
    ExecutorOutputs run(const std::vector<const char*>& names, const std::vector<TensorView>& feeds,
                        const std::vector<const char*>&) const override {
        const TensorView& ids = std::string(names[0]) == "ids" ? feeds[0] : feeds[1];
        {
            std::lock_guard<std::mutex> lock(rec->mutex);
            rec->fed.push_back(ids.shape);
        }
        const int64_t rows = ids.shape[0], len = ids.shape[1];
        auto storage = std::make_unique<Storage>();
        storage->values.assign(static_cast<std::size_t>(rows * 3), 0.0f);
        for (int64_t r = 0; r < rows; ++r) {
            float sum = 0;
            for (int64_t c = 0; c < len; ++c) sum += static_cast<float>(ids.as<int64_t>()[r * len + c]);
            storage->values[static_cast<std::size_t>(r * 3)] = sum;
            storage->values[static_cast<std::size_t>(r * 3 + 1)] = static_cast<float>(len);
        }
        ExecutorOutputs o;
        o.tensors.push_back(TensorView{DType::kFloat32, Shape{rows, 3}, storage->values.data()});
        o.storage = std::move(storage);
        return o;
    }
};

std::string token_artifact(double call_rows) {
    namespace fs = std::filesystem;
    const fs::path dir = fs::temp_directory_path() / ("exitc_seq_test_" + std::to_string(call_rows));
    fs::create_directories(dir / "segments");
    std::ofstream(dir / "segments" / "seg_0.onnx") << "unused: the test's engine is a fake";
    std::ofstream(dir / "manifest.json") << R"({"format": "exitc", "schema_version": 1, "backend": "onnxruntime-cpu",
      "inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", 8]},
                 {"name": "mask", "dtype": "int64", "shape": ["batch", 8]}],
      "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 3]}],
      "prediction_output": "logits", "num_classes": 3, "carried": [],
      "segments": [{"index": 0, "file": "segments/seg_0.onnx", "inputs": ["ids", "mask"], "carry_out": [],
                    "exit": null, "outputs": ["logits"]}],
      "sequence": {"axis": 1, "inputs": ["ids", "mask"], "mask": "mask", "length": 8, "call_rows": )" +
                                              std::to_string(call_rows) + "}}";
    return dir.string();
}

}  // namespace

EXITC_TEST(model_runs_each_length_part_cut_and_scatters_back) {
    for (double call_rows : {0.0, 0.5, 1000.0}) {
        auto rec = std::make_shared<Recorder>();
        ModelOptions mo;
        mo.executor_factory = [rec](const std::string&, const ExecutorOptions&) -> std::unique_ptr<SegmentExecutor> {
            auto e = std::make_unique<RecordingExecutor>();
            e->rec = rec;
            return e;
        };
        const Model model = Model::load(token_artifact(call_rows), mo);
        // Rows of lengths 2, 8, 1, 3, 2: ids 1..len, then padding 0.
        const std::vector<int64_t> lengths = {2, 8, 1, 3, 2};
        std::vector<int64_t> ids(40, 0), mask(40, 0);
        for (std::size_t r = 0; r < lengths.size(); ++r)
            for (int64_t c = 0; c < lengths[r]; ++c) {
                ids[r * 8 + static_cast<std::size_t>(c)] = c + 1;
                mask[r * 8 + static_cast<std::size_t>(c)] = 1;
            }
        const RunResult result = model.run({{"ids", TensorView{DType::kInt64, Shape{5, 8}, ids.data()}},
                                            {"mask", TensorView{DType::kInt64, Shape{5, 8}, mask.data()}}});
        const auto chunks = length_chunks(lengths, call_rows, 8);
        CHECK_EQ(rec->fed.size(), chunks.size());
        int64_t fed_rows = 0;
        for (std::size_t k = 0; k < chunks.size(); ++k) {
            int64_t longest = 1;
            for (int64_t r : chunks[k]) longest = std::max(longest, lengths[static_cast<std::size_t>(r)]);
            CHECK(rec->fed[k] == (Shape{static_cast<int64_t>(chunks[k].size()), longest}));
            fed_rows += rec->fed[k][0];
        }
        CHECK_EQ(fed_rows, int64_t{5});
        const float* logits = result.output("logits").as<float>();
        for (std::size_t r = 0; r < lengths.size(); ++r) {
            const float sum = static_cast<float>(lengths[r] * (lengths[r] + 1) / 2);
            CHECK(logits[r * 3] == sum);
            CHECK(logits[r * 3 + 1] >= static_cast<float>(lengths[r]));  // run at least at its own length
            CHECK_EQ(result.exit_index[r], int64_t{0});
        }
    }
}

EXITC_TEST_MAIN
