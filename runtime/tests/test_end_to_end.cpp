// End-to-end runs of the synthetic artifacts against the numpy reference (make_tiny_artifact.py):
// segmented path, conditional (batch 1) path, exit statistics, timing counters.
// argv[1]: directory with tiny.exitc/.cases and side.exitc/.cases.

#include <chrono>
#include <cmath>
#include <vector>

#include "exitc/model.hpp"
#include "test_cases.hpp"
#include "test_framework.hpp"

using namespace exitc;
using exitc_test::load_cases;

namespace {

std::string dir() { return exitc_test::args().at(0); }

void run_all_cases(const std::string& name, bool use_conditional) {
    ModelOptions options;
    options.use_conditional = use_conditional;
    options.executor.intra_op_threads = 1;
    const Model model = Model::load(dir() + "/" + name + ".exitc", options);
    CHECK_EQ(model.has_conditional(), use_conditional);
    const auto cases = load_cases(dir() + "/" + name + ".cases");
    CHECK(cases.size() > 90);
    std::vector<uint64_t> expected_counts(model.num_exits() + 1, 0);
    for (const auto& c : cases) {
        exitc_test::expect_matches(c, model.run(c.feeds()));
        for (int64_t r = 0; r < c.batch; ++r) ++expected_counts[static_cast<std::size_t>(c.expected_exit_index()[r])];
    }
    const ExitStats stats = model.stats();
    CHECK(stats.rows_per_exit == expected_counts);
    CHECK_EQ(stats.calls, cases.size());
    for (uint64_t n : expected_counts) CHECK(n > 0);  // the vectors exercise every exit
}

}  // namespace

EXITC_TEST(tiny_segmented) { run_all_cases("tiny", false); }
EXITC_TEST(tiny_with_conditional) { run_all_cases("tiny", true); }
EXITC_TEST(side_inputs_segmented) { run_all_cases("side", false); }
EXITC_TEST(side_inputs_with_conditional) { run_all_cases("side", true); }

EXITC_TEST(full_depth_no_row_exits) {
    // ModelOptions::full_depth (what exitc's verify stage times a row that runs to the end with):
    // no row exits, conditional.onnx is not loaded, and the rows that ran to the end in the
    // reference get the same outputs.
    ModelOptions options;
    options.full_depth = true;
    options.executor.intra_op_threads = 1;
    const Model model = Model::load(dir() + "/side.exitc", options);
    CHECK(!model.has_conditional());
    const auto cases = load_cases(dir() + "/side.cases");
    const auto end = static_cast<int64_t>(model.num_exits());
    std::size_t compared = 0, exited_in_reference = 0;
    for (const auto& c : cases) {
        const RunResult result = model.run(c.feeds());
        for (int64_t r = 0; r < c.batch; ++r) {
            CHECK_EQ(result.exit_index[static_cast<std::size_t>(r)], end);
            if (c.expected_exit_index()[r] != end) ++exited_in_reference;
        }
        for (const auto& expected : c.outputs) {
            const Tensor& got = result.output(expected.name);
            CHECK(got.shape() == Shape(expected.shape));
            if (expected.shape.empty() || expected.shape[0] != c.batch) continue;  // rows on axis 0 only
            const int64_t per_row = got.num_elements() / c.batch;
            const auto* want = reinterpret_cast<const float*>(expected.bytes.data());
            const float* have = got.as<float>();
            for (int64_t r = 0; r < c.batch; ++r) {
                if (c.expected_exit_index()[r] != end) continue;
                for (int64_t i = r * per_row; i < (r + 1) * per_row; ++i) CHECK(std::fabs(want[i] - have[i]) <= 1e-4f);
                ++compared;
            }
        }
    }
    CHECK(compared > 0);
    CHECK(exited_in_reference > 0);  // the cases do exit rows normally: full_depth changed something
    const ExitStats stats = model.stats();
    CHECK(stats.rows > 0);
    CHECK_EQ(stats.rows_per_exit.back(), stats.rows);
}

EXITC_TEST(repeated_calls_reuse_workspace) {
    // Same input twice, then a smaller batch: stale workspace contents must never leak through.
    Model model = Model::load(dir() + "/side.exitc");
    const auto cases = load_cases(dir() + "/side.cases");
    for (int round = 0; round < 3; ++round)
        for (const auto& c : cases)
            if (c.batch > 1) exitc_test::expect_matches(c, model.run(c.feeds()));
    Model moved = std::move(model);
    exitc_test::expect_matches(cases.back(), moved.run(cases.back().feeds()));
}

EXITC_TEST(stats_reset) {
    Model model = Model::load(dir() + "/tiny.exitc");
    const auto cases = load_cases(dir() + "/tiny.cases");
    model.run(cases.front().feeds());
    CHECK(model.stats().rows > 0);
    model.reset_stats();
    CHECK_EQ(model.stats().rows, 0u);
    CHECK_EQ(model.stats().calls, 0u);
}

EXITC_TEST(timing_counters) {
    // engine_seconds / overhead_seconds: zero at load and after reset, non-negative, never
    // decreasing, and growing with calls on both the segmented and the conditional path.
    ModelOptions options;
    options.executor.intra_op_threads = 1;
    Model model = Model::load(dir() + "/side.exitc", options);
    CHECK(model.has_conditional());
    const auto cases = load_cases(dir() + "/side.cases");
    CHECK_EQ(model.stats().engine_seconds, 0.0);
    CHECK_EQ(model.stats().overhead_seconds, 0.0);

    ExitStats before = model.stats();
    for (int pass = 0; pass < 2; ++pass) {
        for (const auto& c : cases) {
            if ((c.batch == 1) != (pass == 1)) continue;  // pass 0: segmented, pass 1: conditional
            model.run(c.feeds());
            const ExitStats now = model.stats();
            CHECK(now.engine_seconds >= 0.0 && now.overhead_seconds >= 0.0);
            CHECK(now.engine_seconds >= before.engine_seconds);
            CHECK(now.overhead_seconds >= before.overhead_seconds);
            CHECK_EQ(now.calls, before.calls + 1);
            before = now;
        }
        CHECK(before.engine_seconds > 0.0);
    }
    // Over many calls both grow strictly (the clock resolution is far below one engine run, and
    // every segmented call does a little work outside the engine).
    const ExitStats start = model.stats();
    for (int round = 0; round < 3; ++round)
        for (const auto& c : cases) model.run(c.feeds());
    const ExitStats end = model.stats();
    CHECK(end.engine_seconds > start.engine_seconds);
    CHECK(end.overhead_seconds > start.overhead_seconds);
    // Sanity: the split covers at most the wall time of the calls (single thread).
    const auto wall_start = std::chrono::steady_clock::now();
    const ExitStats w0 = model.stats();
    for (const auto& c : cases) model.run(c.feeds());
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
    const ExitStats w1 = model.stats();
    CHECK((w1.engine_seconds - w0.engine_seconds) + (w1.overhead_seconds - w0.overhead_seconds) <= wall);

    model.reset_stats();
    CHECK_EQ(model.stats().engine_seconds, 0.0);
    CHECK_EQ(model.stats().overhead_seconds, 0.0);
    // A failing call (bad feeds) adds nothing.
    try {
        model.run({});
        CHECK(false);
    } catch (const Error&) {
    }
    CHECK_EQ(model.stats().engine_seconds, 0.0);
    CHECK_EQ(model.stats().overhead_seconds, 0.0);
}

EXITC_TEST_MAIN
