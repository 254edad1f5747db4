#pragma once
// exitc::AgreementMonitor: a served artifact's agreement with its original, watched on live
// traffic without labels. The C++ form of exitc/monitor.py: the same estimator, bounds and
// statuses, for the Triton backend and for C++ embedders.
//
// An early exit can only disagree with the original on rows it takes (a row that runs to the end
// gets the original's output: the compiler checks that), so live agreement is 1 - f * r, with f
// the share of rows that left early (counted on every row) and r the disagreement rate among
// them. r is estimated from a uniform random sample (`sample_rate`) of the early rows, each run
// again through the same artifact loaded with ModelOptions::full_depth; exact one-sided
// Clopper-Pearson bounds on r, at the artifact's certified confidence, bound the agreement.
// Status: kOk when the lower bound reaches the certified target, kBelowTarget when the upper
// bound is under it (the guarantee no longer holds for this traffic), else kInconclusive.

#include <cstdint>
#include <memory>
#include <vector>

#include "exitc/model.hpp"
#include "exitc/tensor.hpp"

namespace exitc {

// One-sided lower confidence bound on a binomial proportion from `successes` of `n` at
// `confidence` (the alpha = 1 - confidence quantile of Beta(successes, n - successes + 1));
// 0 when successes or n is 0. Agrees with scipy.stats.beta.ppf to about 1e-12.
double clopper_pearson_lower(uint64_t successes, uint64_t n, double confidence);

// The class row `row` of a batch-major prediction output (float32/float64) stands for, as
// exitc/predictions.py defines it: the argmax over the row; for one score per row (a binary
// classifier, [batch, 1]) 1 where the score is above 0.5 (`probabilities`, the manifest's
// prediction_kind) or above 0 (a logit), else 0.
int64_t predicted_class(const TensorView& prediction, int64_t row, bool probabilities);

enum class MonitorStatus { kOk, kBelowTarget, kInconclusive };
const char* monitor_status_name(MonitorStatus status) noexcept;  // "ok", "below target", "inconclusive"

struct MonitorReport {
    uint64_t rows = 0;                    // rows served since the monitor started
    std::vector<uint64_t> exit_counts;    // per exit, then "ran to the end"
    std::vector<uint64_t> sampled;        // per exit: early rows also run at full depth
    std::vector<uint64_t> disagreements;  // per exit: of those, how many the exit got wrong
    double early_fraction = 0.0;          // f
    double agreement_estimate = 0.0;      // 1 - f * r_hat; NaN before any early row was checked
    double agreement_lower = 0.0;         // one-sided, at `confidence`
    double agreement_upper = 1.0;
    double target = 1.0;                  // the certified target (manifest "calibration")
    double confidence = 0.95;
    MonitorStatus status = MonitorStatus::kInconclusive;

    uint64_t total_sampled() const noexcept;
    uint64_t total_disagreements() const noexcept;
};

class AgreementMonitor {
public:
    // `model` serves; `full_depth` is the same artifact loaded with ModelOptions::full_depth.
    // Both must outlive the monitor. `sample_rate` in (0, 1]; `seed` seeds the row sampling.
    // Throws Error(kInvalidArgument) on a bad rate, artifacts that differ in exits or outputs, or a
    // prediction output that is not float32/float64 [batch, classes...].
    AgreementMonitor(const Model& model, const Model& full_depth, double sample_rate, uint64_t seed);
    ~AgreementMonitor();
    AgreementMonitor(const AgreementMonitor&) = delete;
    AgreementMonitor& operator=(const AgreementMonitor&) = delete;

    // model.run(inputs), then observe(inputs, result).
    RunResult run(const std::vector<NamedTensorView>& inputs);

    // Counts one served call's rows (`result`: model.run(inputs)) and runs the sampled early rows
    // of `inputs` through the full-depth artifact (one call, rows gathered densely). Thread-safe;
    // the full-depth call runs outside the monitor's lock.
    void observe(const std::vector<NamedTensorView>& inputs, const RunResult& result);

    MonitorReport report() const;
    double sample_rate() const noexcept;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace exitc
