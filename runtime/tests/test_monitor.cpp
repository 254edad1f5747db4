// exitc::AgreementMonitor: at sample rate 1 every early row is checked, so its counts must equal
// the disagreements found by running every row through the full-depth artifact; its bounds are
// the exact binomial ones (values from scipy.stats.beta.ppf); concurrent callers are counted
// exactly; a bad rate is refused. argv[1]: test artifact directory.

#include <cmath>
#include <thread>
#include <vector>

#include "exitc/error.hpp"
#include "exitc/monitor.hpp"
#include "test_cases.hpp"
#include "test_framework.hpp"

using namespace exitc;

namespace {

std::string dir() { return exitc_test::args().at(0); }

bool near(double a, double b, double tol) { return std::fabs(a - b) <= tol; }

Model load(const std::string& name, bool full_depth) {
    ModelOptions o;
    o.executor.intra_op_threads = 1;
    o.full_depth = full_depth;
    return Model::load(dir() + "/" + name + ".exitc", o);
}

int64_t argmax(const Tensor& t, int64_t row) {
    const int64_t per_row = t.num_elements() / t.shape()[0];
    const float* p = t.as<float>() + row * per_row;
    int64_t best = 0;
    for (int64_t j = 1; j < per_row; ++j)
        if (p[j] > p[best]) best = j;
    return best;
}

// Per exit: early rows, and those whose prediction differs from the full-depth artifact's.
void count_directly(const Model& model, const Model& full, const std::vector<exitc_test::Case>& cases,
                    std::vector<uint64_t>& early, std::vector<uint64_t>& wrong) {
    const std::string& pred = model.manifest().prediction_output;
    early.assign(model.num_exits() + 1, 0);
    wrong.assign(model.num_exits() + 1, 0);
    for (const auto& c : cases) {
        const RunResult served = model.run(c.feeds());
        const RunResult reference = full.run(c.feeds());
        for (std::size_t r = 0; r < served.exit_index.size(); ++r) {
            const auto e = static_cast<std::size_t>(served.exit_index[r]);
            if (e == model.num_exits()) continue;
            ++early[e];
            if (argmax(served.output(pred), static_cast<int64_t>(r)) != argmax(reference.output(pred), static_cast<int64_t>(r)))
                ++wrong[e];
        }
    }
}

void check_rate_one(const std::string& name) {
    const Model model = load(name, false);
    const Model full = load(name, true);
    const auto cases = exitc_test::load_cases(dir() + "/" + name + ".cases");
    std::vector<uint64_t> early, wrong;
    count_directly(model, full, cases, early, wrong);
    AgreementMonitor monitor(model, full, 1.0, 3);
    uint64_t rows = 0;
    for (const auto& c : cases) {
        const RunResult r = monitor.run(c.feeds());
        rows += r.exit_index.size();
    }
    const MonitorReport rep = monitor.report();
    CHECK_EQ(rep.rows, rows);
    uint64_t n_early = 0, n_wrong = 0;
    for (std::size_t e = 0; e < model.num_exits(); ++e) {
        CHECK_EQ(rep.sampled[e], early[e]);
        CHECK_EQ(rep.disagreements[e], wrong[e]);
        n_early += early[e];
        n_wrong += wrong[e];
    }
    CHECK_EQ(rep.sampled.back(), uint64_t{0});
    CHECK(n_early > 0);
    CHECK(n_wrong > 0);  // the tiny artifact's exits are deliberately imperfect
    CHECK_EQ(rep.exit_counts.back() + n_early, rows);
    const double f = static_cast<double>(n_early) / static_cast<double>(rows);
    CHECK(near(rep.early_fraction, f, 1e-12));
    CHECK(near(rep.agreement_estimate, 1.0 - f * static_cast<double>(n_wrong) / static_cast<double>(n_early), 1e-12));
    const double conf = rep.confidence;
    CHECK(near(rep.agreement_lower, 1.0 - f * (1.0 - clopper_pearson_lower(n_early - n_wrong, n_early, conf)), 1e-12));
    CHECK(near(rep.agreement_upper, 1.0 - f * clopper_pearson_lower(n_wrong, n_early, conf), 1e-12));
    CHECK(rep.agreement_lower <= rep.agreement_estimate && rep.agreement_estimate <= rep.agreement_upper);
    // These artifacts certify nothing (calibration without a target): target 1, and some exit
    // was seen to be wrong, so the agreement is below it for sure.
    CHECK_EQ(rep.target, 1.0);
    CHECK(rep.status == MonitorStatus::kBelowTarget);
    CHECK_EQ(std::string(monitor_status_name(rep.status)), std::string("below target"));
}

}  // namespace

EXITC_TEST(clopper_pearson_matches_scipy) {
    struct Case { uint64_t s, n; double conf, want; };
    const Case cases[] = {{990, 1000, 0.95, 0.9830968248794375}, {1, 1, 0.95, 0.050000000000000044},
                          {35, 35, 0.95, 0.9179683641433296},    {5, 7, 0.9, 0.403820272151956},
                          {44000, 45000, 0.99, 0.9761076545077321}, {3, 300, 0.95, 0.002731030218207038},
                          {297, 300, 0.95, 0.9743586069173904}};
    for (const Case& c : cases) {
        const double got = clopper_pearson_lower(c.s, c.n, c.conf);
        if (!near(got, c.want, 1e-11)) EXITC_FAIL("clopper_pearson_lower(" << c.s << ", " << c.n << ") = " << got << ", want " << c.want);
    }
    CHECK_EQ(clopper_pearson_lower(0, 10, 0.95), 0.0);
    CHECK_EQ(clopper_pearson_lower(0, 0, 0.95), 0.0);
}

EXITC_TEST(predicted_class_is_the_argmax_or_the_binary_threshold) {
    const float probs[] = {0.2f, 0.5f, 0.51f, 0.9f};  // [4, 1] sigmoid probabilities
    const TensorView p{DType::kFloat32, Shape({4, 1}), probs};
    CHECK_EQ(predicted_class(p, 0, true), int64_t{0});
    CHECK_EQ(predicted_class(p, 1, true), int64_t{0});  // 0.5 is not above 0.5
    CHECK_EQ(predicted_class(p, 2, true), int64_t{1});
    CHECK_EQ(predicted_class(p, 0, false), int64_t{1});  // read as logits: above 0
    const double logits[] = {-0.1, 0.0, 3.0};           // [3, 1] single logits
    const TensorView z{DType::kFloat64, Shape({3, 1}), logits};
    CHECK_EQ(predicted_class(z, 0, false), int64_t{0});
    CHECK_EQ(predicted_class(z, 1, false), int64_t{0});
    CHECK_EQ(predicted_class(z, 2, false), int64_t{1});
    const float scores[] = {0.1f, 0.7f, 0.2f, 0.9f, 0.05f, 0.05f};  // [2, 3]: argmax
    const TensorView m{DType::kFloat32, Shape({2, 3}), scores};
    CHECK_EQ(predicted_class(m, 0, false), int64_t{1});
    CHECK_EQ(predicted_class(m, 1, true), int64_t{0});
    CHECK_THROWS(predicted_class(m, 2, false), ErrorCode::kInvalidArgument, "predicted_class");
}

EXITC_TEST(rate_one_counts_every_early_row_exactly) { check_rate_one("tiny"); }

// The side artifact's inputs include one whose batch axis is 1: the sampled rows are gathered
// along each input's own batch axis.
EXITC_TEST(rate_one_gathers_rows_along_each_inputs_batch_axis) { check_rate_one("side"); }

// As exitc.monitor: no row has left early, so none can disagree (f = 0): the bounds are 1 and the
// status is ok; the estimate is undefined until an early row is checked.
EXITC_TEST(before_any_row_nothing_can_disagree) {
    const Model model = load("tiny", false);
    const Model full = load("tiny", true);
    AgreementMonitor monitor(model, full, 0.5, 1);
    const MonitorReport rep = monitor.report();
    CHECK_EQ(rep.rows, uint64_t{0});
    CHECK(std::isnan(rep.agreement_estimate));
    CHECK_EQ(rep.agreement_lower, 1.0);
    CHECK_EQ(rep.agreement_upper, 1.0);
    CHECK(rep.status == MonitorStatus::kOk);
}

EXITC_TEST(sampled_share_is_near_the_rate) {
    const Model model = load("tiny", false);
    const Model full = load("tiny", true);
    const auto cases = exitc_test::load_cases(dir() + "/tiny.cases");
    AgreementMonitor monitor(model, full, 0.3, 11);
    for (int round = 0; round < 4; ++round)
        for (const auto& c : cases) monitor.run(c.feeds());
    const MonitorReport rep = monitor.report();
    const double early = static_cast<double>(rep.rows - rep.exit_counts.back());
    const double share = static_cast<double>(rep.total_sampled()) / early;
    // Binomial: 5 standard deviations around 0.3.
    const double sd = std::sqrt(0.3 * 0.7 / early);
    if (!(std::fabs(share - 0.3) < 5 * sd)) EXITC_FAIL("sampled share " << share << " of " << early << " early rows");
}

EXITC_TEST(concurrent_callers_are_all_counted) {
    const Model model = load("tiny", false);
    const Model full = load("tiny", true);
    const auto cases = exitc_test::load_cases(dir() + "/tiny.cases");
    std::vector<uint64_t> early, wrong;
    count_directly(model, full, cases, early, wrong);
    AgreementMonitor monitor(model, full, 1.0, 5);
    constexpr int kThreads = 4;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&] {
            for (const auto& c : cases) monitor.run(c.feeds());
        });
    for (auto& th : threads) th.join();
    const MonitorReport rep = monitor.report();
    for (std::size_t e = 0; e < model.num_exits(); ++e) {
        CHECK_EQ(rep.sampled[e], kThreads * early[e]);
        CHECK_EQ(rep.disagreements[e], kThreads * wrong[e]);
    }
}

EXITC_TEST(bad_rate_is_refused) {
    const Model model = load("tiny", false);
    const Model full = load("tiny", true);
    CHECK_THROWS(AgreementMonitor(model, full, 0.0, 1), ErrorCode::kInvalidArgument, "sample rate");
    CHECK_THROWS(AgreementMonitor(model, full, 1.5, 1), ErrorCode::kInvalidArgument, "sample rate");
    CHECK_THROWS(AgreementMonitor(model, full, std::nan(""), 1), ErrorCode::kInvalidArgument, "sample rate");
    CHECK_THROWS(clopper_pearson_lower(1, 2, 1.0), ErrorCode::kInvalidArgument, "confidence");
}

EXITC_TEST_MAIN
