// The agreement monitor (exitc/monitor.hpp) and the exact binomial bound it reports.

#include "exitc/monitor.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <random>

#include "exitc/compaction.hpp"
#include "exitc/error.hpp"

namespace exitc {
namespace {

// Continued fraction of the regularised incomplete beta function (modified Lentz), valid and
// fast for x < (a + 1) / (a + b + 2); the caller uses the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
// otherwise.
double beta_continued_fraction(double a, double b, double x) {
    constexpr double kTiny = 1e-300;
    constexpr double kEps = 1e-16;
    double c = 1.0;
    double d = 1.0 - (a + b) * x / (a + 1.0);
    if (std::fabs(d) < kTiny) d = kTiny;
    d = 1.0 / d;
    double h = d;
    for (int m = 1; m <= 100000; ++m) {
        const double m2 = 2.0 * m;
        double num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));  // even step
        d = 1.0 + num * d;
        if (std::fabs(d) < kTiny) d = kTiny;
        c = 1.0 + num / c;
        if (std::fabs(c) < kTiny) c = kTiny;
        d = 1.0 / d;
        h *= d * c;
        num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));  // odd step
        d = 1.0 + num * d;
        if (std::fabs(d) < kTiny) d = kTiny;
        c = 1.0 + num / c;
        if (std::fabs(c) < kTiny) c = kTiny;
        d = 1.0 / d;
        const double step = d * c;
        h *= step;
        if (std::fabs(step - 1.0) < kEps) break;
    }
    return h;
}

// I_x(a, b), the CDF of Beta(a, b) at x.
double regularized_incomplete_beta(double a, double b, double x) {
    if (x <= 0.0) return 0.0;
    if (x >= 1.0) return 1.0;
    const double log_front = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
    if (x < (a + 1.0) / (a + b + 2.0)) return std::exp(log_front) * beta_continued_fraction(a, b, x) / a;
    return 1.0 - std::exp(log_front) * beta_continued_fraction(b, a, 1.0 - x) / b;  // same prefactor
}

// Argmax over the non-batch elements of row `row` of a batch-major prediction output.
template <typename T>
int64_t argmax_row(const TensorView& v, int64_t row, int64_t per_row) {
    const T* p = v.as<T>() + row * per_row;
    return static_cast<int64_t>(std::max_element(p, p + per_row) - p);
}

}  // namespace

int64_t predicted_class(const TensorView& v, int64_t row, bool probabilities) {
    const int64_t rows = v.shape.rank() > 0 ? v.shape[0] : 0;
    if (row < 0 || row >= rows || (v.dtype != DType::kFloat32 && v.dtype != DType::kFloat64))
        throw Error(ErrorCode::kInvalidArgument, "predicted_class: row " + std::to_string(row) + " of a " +
                                                     std::string(dtype_name(v.dtype)) + " " + v.shape.to_string() +
                                                     " prediction");
    const int64_t per_row = v.num_elements() / rows;
    if (per_row == 1) {
        const double score = v.dtype == DType::kFloat64 ? v.as<double>()[row] : static_cast<double>(v.as<float>()[row]);
        return score > (probabilities ? 0.5 : 0.0) ? 1 : 0;
    }
    return v.dtype == DType::kFloat64 ? argmax_row<double>(v, row, per_row) : argmax_row<float>(v, row, per_row);
}

double clopper_pearson_lower(uint64_t successes, uint64_t n, double confidence) {
    if (n == 0 || successes == 0) return 0.0;
    if (!(confidence > 0.0 && confidence < 1.0))
        throw Error(ErrorCode::kInvalidArgument, "confidence " + std::to_string(confidence) + " is outside (0, 1)");
    const double alpha = 1.0 - confidence;
    const double a = static_cast<double>(successes);
    const double b = static_cast<double>(n - successes) + 1.0;
    // The CDF is increasing in x: bisection to the last representable step.
    double lo = 0.0, hi = 1.0;
    for (int i = 0; i < 200 && hi - lo > 1e-15; ++i) {
        const double mid = 0.5 * (lo + hi);
        (regularized_incomplete_beta(a, b, mid) < alpha ? lo : hi) = mid;
    }
    return 0.5 * (lo + hi);
}

const char* monitor_status_name(MonitorStatus status) noexcept {
    switch (status) {
        case MonitorStatus::kOk: return "ok";
        case MonitorStatus::kBelowTarget: return "below target";
        case MonitorStatus::kInconclusive: return "inconclusive";
    }
    return "inconclusive";
}

uint64_t MonitorReport::total_sampled() const noexcept {
    uint64_t n = 0;
    for (uint64_t v : sampled) n += v;
    return n;
}

uint64_t MonitorReport::total_disagreements() const noexcept {
    uint64_t n = 0;
    for (uint64_t v : disagreements) n += v;
    return n;
}

struct AgreementMonitor::Impl {
    const Model* model = nullptr;
    const Model* full_depth = nullptr;
    double rate = 0.0;
    std::size_t num_exits = 0;
    std::string prediction;
    double target = 1.0, confidence = 0.95;
    mutable std::mutex mutex;
    std::mt19937_64 rng;
    std::vector<uint64_t> counts, sampled, wrong;
};

AgreementMonitor::AgreementMonitor(const Model& model, const Model& full_depth, double sample_rate, uint64_t seed)
    : impl_(std::make_unique<Impl>()) {
    if (!(sample_rate > 0.0 && sample_rate <= 1.0))
        throw Error(ErrorCode::kInvalidArgument, "monitor sample rate " + std::to_string(sample_rate) + " is outside (0, 1]");
    const Manifest& m = model.manifest();
    if (full_depth.num_exits() != model.num_exits() || full_depth.manifest().prediction_output != m.prediction_output)
        throw Error(ErrorCode::kInvalidArgument, "monitor: the full-depth model is not the served artifact ('" +
                                                     full_depth.artifact_dir() + "' vs '" + model.artifact_dir() + "')");
    auto spec = std::find_if(m.outputs.begin(), m.outputs.end(),
                             [&](const TensorSpec& t) { return t.name == m.prediction_output; });
    if (spec == m.outputs.end() || spec->batch_axis != 0 || spec->shape.size() < 2 ||
        (spec->dtype != DType::kFloat32 && spec->dtype != DType::kFloat64))
        throw Error(ErrorCode::kInvalidArgument, "monitor: prediction output '" + m.prediction_output +
                                                     "' must be float32 or float64 [batch, classes]");
    Impl& s = *impl_;
    s.model = &model;
    s.full_depth = &full_depth;
    s.rate = sample_rate;
    s.num_exits = model.num_exits();
    s.prediction = m.prediction_output;
    if (m.calibration) {
        s.target = m.calibration->target_acc;
        s.confidence = m.calibration->confidence;
    }
    s.rng.seed(seed);
    s.counts.assign(s.num_exits + 1, 0);
    s.sampled.assign(s.num_exits + 1, 0);
    s.wrong.assign(s.num_exits + 1, 0);
}

AgreementMonitor::~AgreementMonitor() = default;

double AgreementMonitor::sample_rate() const noexcept { return impl_->rate; }

RunResult AgreementMonitor::run(const std::vector<NamedTensorView>& inputs) {
    RunResult result = impl_->model->run(inputs);
    observe(inputs, result);
    return result;
}

void AgreementMonitor::observe(const std::vector<NamedTensorView>& inputs, const RunResult& result) {
    Impl& s = *impl_;
    const auto& exit_index = result.exit_index;
    std::vector<int64_t> pick;  // sampled early rows, increasing
    {
        std::lock_guard<std::mutex> lock(s.mutex);
        std::uniform_real_distribution<double> uniform(0.0, 1.0);
        for (std::size_t r = 0; r < exit_index.size(); ++r)
            if (static_cast<std::size_t>(exit_index[r]) < s.num_exits && uniform(s.rng) < s.rate)
                pick.push_back(static_cast<int64_t>(r));
    }
    std::vector<uint64_t> counts(s.num_exits + 1, 0), sampled(s.num_exits + 1, 0), wrong(s.num_exits + 1, 0);
    for (int64_t e : exit_index) ++counts[std::min(static_cast<std::size_t>(e), s.num_exits)];
    if (!pick.empty()) {
        // The sampled rows of every input, gathered densely, run through the full-depth twin.
        std::vector<Tensor> gathered;
        std::vector<NamedTensorView> part;
        gathered.reserve(inputs.size());
        const Manifest& m = s.model->manifest();
        for (const NamedTensorView& in : inputs) {
            auto spec = std::find_if(m.inputs.begin(), m.inputs.end(), [&](const TensorSpec& t) { return t.name == in.name; });
            const int axis = spec == m.inputs.end() ? 0 : spec->batch_axis;  // run() accepted these feeds
            gathered.emplace_back(in.view.dtype, compacted_shape(in.view.shape, axis, static_cast<int64_t>(pick.size())));
            compact_rows(in.view, axis, pick.data(), pick.size(), gathered.back().data());
            part.push_back({in.name, gathered.back().view()});
        }
        const RunResult full = s.full_depth->run(part);
        const TensorView served = result.output(s.prediction).view();
        const TensorView reference = full.output(s.prediction).view();
        for (std::size_t i = 0; i < pick.size(); ++i) {
            const auto e = static_cast<std::size_t>(exit_index[static_cast<std::size_t>(pick[i])]);
            ++sampled[e];
            const bool probs = s.model->manifest().prediction_probabilities;
            if (predicted_class(served, pick[i], probs) != predicted_class(reference, static_cast<int64_t>(i), probs))
                ++wrong[e];
        }
    }
    std::lock_guard<std::mutex> lock(s.mutex);
    for (std::size_t e = 0; e <= s.num_exits; ++e) {
        s.counts[e] += counts[e];
        s.sampled[e] += sampled[e];
        s.wrong[e] += wrong[e];
    }
}

MonitorReport AgreementMonitor::report() const {
    const Impl& s = *impl_;
    MonitorReport r;
    {
        std::lock_guard<std::mutex> lock(s.mutex);
        r.exit_counts = s.counts;
        r.sampled = s.sampled;
        r.disagreements = s.wrong;
    }
    r.target = s.target;
    r.confidence = s.confidence;
    for (uint64_t c : r.exit_counts) r.rows += c;
    const uint64_t early = r.rows - r.exit_counts.back();
    r.early_fraction = r.rows ? static_cast<double>(early) / static_cast<double>(r.rows) : 0.0;
    const uint64_t n = r.total_sampled(), k = r.total_disagreements();
    // One-sided bounds on the disagreement rate among early rows (exitc.monitor.rate_bounds).
    const double rate_low = clopper_pearson_lower(k, n, s.confidence);
    const double rate_high = n ? 1.0 - clopper_pearson_lower(n - k, n, s.confidence) : 1.0;
    r.agreement_estimate = n ? 1.0 - r.early_fraction * (static_cast<double>(k) / static_cast<double>(n))
                             : std::numeric_limits<double>::quiet_NaN();
    r.agreement_lower = 1.0 - r.early_fraction * rate_high;
    r.agreement_upper = 1.0 - r.early_fraction * rate_low;
    r.status = r.agreement_lower >= r.target ? MonitorStatus::kOk
               : r.agreement_upper < r.target ? MonitorStatus::kBelowTarget
                                               : MonitorStatus::kInconclusive;
    return r;
}

}  // namespace exitc
