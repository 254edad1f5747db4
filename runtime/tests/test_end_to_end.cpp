// End-to-end runs of the synthetic artifacts against the numpy reference (make_tiny_artifact.py):
// segmented path, conditional (batch 1) path, exit statistics.
// argv[1]: directory with tiny.exitc/.cases and side.exitc/.cases.

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

EXITC_TEST_MAIN
