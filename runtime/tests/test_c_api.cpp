// The C ABI: load/run/result/stats/free, and errors as status codes + messages (never exceptions).
// argv[1]: test artifact directory.

#include <cstring>
#include <string>

#include "exitc/exitc.h"
#include "test_cases.hpp"
#include "test_framework.hpp"

namespace {
std::string dir() { return exitc_test::args().at(0); }
}  // namespace

EXITC_TEST(c_api_round_trip) {
    exitc_model* model = nullptr;
    CHECK_EQ(exitc_model_load((dir() + "/side.exitc").c_str(), 1, &model), EXITC_OK);
    CHECK(model != nullptr);
    CHECK_EQ(exitc_model_num_exits(model), 2u);
    CHECK_EQ(exitc_model_num_inputs(model), 2u);
    CHECK_EQ(std::string(exitc_model_input_name(model, 1)), "m");
    CHECK(exitc_model_input_name(model, 2) == nullptr);

    const auto cases = exitc_test::load_cases(dir() + "/side.cases");
    uint64_t expected_rows = 0;
    for (const auto& c : cases) {
        std::vector<exitc_tensor_view> inputs;
        for (const auto& t : c.inputs)
            inputs.push_back({t.name.c_str(), static_cast<int32_t>(t.dtype), t.shape.data(), t.shape.size(), t.bytes.data()});
        exitc_result* result = nullptr;
        CHECK_EQ(exitc_model_run(model, inputs.data(), inputs.size(), &result), EXITC_OK);
        size_t batch = 0;
        const int64_t* exits = exitc_result_exit_index(result, &batch);
        CHECK_EQ(batch, static_cast<size_t>(c.batch));
        CHECK(std::memcmp(exits, c.expected_exit_index(), batch * sizeof(int64_t)) == 0);
        CHECK_EQ(exitc_result_num_outputs(result), 2u);
        exitc_tensor_view logits{};
        CHECK_EQ(exitc_result_output(result, 0, &logits), EXITC_OK);
        CHECK_EQ(std::string(logits.name), "logits");
        CHECK_EQ(logits.dtype, static_cast<int32_t>(EXITC_FLOAT32));
        CHECK_EQ(logits.rank, 2u);
        CHECK_EQ(logits.shape[0], c.batch);
        const auto* want = reinterpret_cast<const float*>(c.outputs[0].bytes.data());
        for (int64_t i = 0; i < c.batch * 3; ++i) CHECK(std::abs(static_cast<const float*>(logits.data)[i] - want[i]) < 1e-4f);
        exitc_tensor_view none{};
        CHECK_EQ(exitc_result_output(result, 2, &none), EXITC_ERR_INVALID_ARGUMENT);
        exitc_result_free(result);
        expected_rows += static_cast<uint64_t>(c.batch);
    }
    uint64_t counts[3] = {0, 0, 0};
    size_t n = 0;
    CHECK_EQ(exitc_model_stats(model, counts, 3, &n), EXITC_OK);
    CHECK_EQ(n, 3u);
    CHECK_EQ(counts[0] + counts[1] + counts[2], expected_rows);
    exitc_model_totals totals{};
    totals.struct_size = sizeof(totals);
    CHECK_EQ(exitc_model_get_totals(model, &totals), EXITC_OK);
    CHECK_EQ(totals.struct_size, sizeof(exitc_model_totals));
    CHECK_EQ(totals.calls, static_cast<uint64_t>(cases.size()));
    CHECK_EQ(totals.rows, expected_rows);
    CHECK(totals.engine_seconds > 0.0);
    CHECK(totals.overhead_seconds > 0.0);
    exitc_model_totals small{};
    small.struct_size = EXITC_MODEL_TOTALS_V1_SIZE - 1;
    CHECK_EQ(exitc_model_get_totals(model, &small), EXITC_ERR_INVALID_ARGUMENT);
    CHECK(std::string(exitc_last_error_message()).find("struct_size") != std::string::npos);
    CHECK_EQ(exitc_model_get_totals(model, nullptr), EXITC_ERR_INVALID_ARGUMENT);
    exitc_model_reset_stats(model);
    CHECK_EQ(exitc_model_stats(model, counts, 3, &n), EXITC_OK);
    CHECK_EQ(counts[0] + counts[1] + counts[2], 0u);
    totals.struct_size = sizeof(totals);
    CHECK_EQ(exitc_model_get_totals(model, &totals), EXITC_OK);
    CHECK_EQ(totals.calls, 0u);
    CHECK_EQ(totals.engine_seconds, 0.0);
    CHECK_EQ(totals.overhead_seconds, 0.0);
    exitc_model_free(model);
}

EXITC_TEST(c_api_errors) {
    exitc_model* model = reinterpret_cast<exitc_model*>(0x1);
    CHECK_EQ(exitc_model_load((dir() + "/missing.exitc").c_str(), 0, &model), EXITC_ERR_IO);
    CHECK(model == nullptr);
    CHECK(std::string(exitc_last_error_message()).find("missing.exitc/manifest.json") != std::string::npos);
    CHECK_EQ(exitc_model_load(nullptr, 0, &model), EXITC_ERR_INVALID_ARGUMENT);

    CHECK_EQ(exitc_model_load((dir() + "/tiny.exitc").c_str(), 0, &model), EXITC_OK);
    const int64_t shape[] = {2, 5};
    const float data[10] = {};
    exitc_tensor_view bad{"x", EXITC_FLOAT32, shape, 2, data};
    exitc_result* result = nullptr;
    CHECK_EQ(exitc_model_run(model, &bad, 1, &result), EXITC_ERR_INVALID_ARGUMENT);
    CHECK(result == nullptr);
    CHECK(std::string(exitc_last_error_message()).find("dimension 1 must be 4") != std::string::npos);
    bad.dtype = 99;
    CHECK_EQ(exitc_model_run(model, &bad, 1, &result), EXITC_ERR_INVALID_ARGUMENT);
    CHECK(std::string(exitc_last_error_message()).find("unknown dtype code 99") != std::string::npos);
    const int64_t big_rank[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    exitc_tensor_view deep{"x", EXITC_FLOAT32, big_rank, 9, data};
    CHECK_EQ(exitc_model_run(model, &deep, 1, &result), EXITC_ERR_INVALID_ARGUMENT);
    exitc_model_free(model);
    exitc_model_free(nullptr);
    exitc_result_free(nullptr);
}

EXITC_TEST_MAIN
