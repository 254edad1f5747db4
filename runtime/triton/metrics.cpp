#include "metrics.hpp"

#include "common.hpp"

namespace exitc_triton {
namespace {

std::unique_ptr<MetricFamilies>& families_slot() {
    static std::unique_ptr<MetricFamilies> slot;
    return slot;
}

TRITONSERVER_MetricFamily* new_family(TRITONSERVER_MetricKind kind, const char* name, const char* help, bool& ok) {
    if (!ok) return nullptr;
    TRITONSERVER_MetricFamily* family = nullptr;
    if (TRITONSERVER_Error* e = TRITONSERVER_MetricFamilyNew(&family, kind, name, help)) {
        EXITC_LOG(TRITONSERVER_LOG_WARN, "custom metric " << name << " unavailable (" << TRITONSERVER_ErrorMessage(e)
                                                          << "); serving without exitc metrics");
        TRITONSERVER_ErrorDelete(e);
        ok = false;
        return nullptr;
    }
    return family;
}

void delete_family(TRITONSERVER_MetricFamily* f) noexcept {
    if (!f) return;
    if (TRITONSERVER_Error* e = TRITONSERVER_MetricFamilyDelete(f)) TRITONSERVER_ErrorDelete(e);
}

}  // namespace

MetricFamilies::MetricFamilies() {
    bool ok = true;
    rows = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "exitc_rows_total",
                      "Rows answered at each exit (exit=num_exits: the whole model ran)", ok);
    overhead = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "exitc_overhead_seconds_total",
                          "Seconds of exitc overhead outside the engine (exit decisions, compaction, gather, scatter)", ok);
    engine = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "exitc_engine_seconds_total",
                        "Seconds inside the engine running segments", ok);
    queue = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "exitc_queue_rows",
                       "Rows waiting in each segment's queue (continuous depth-wise batching)", ok);
    segment_runs = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "exitc_segment_runs_total",
                              "Segment runs (continuous depth-wise batching)", ok);
    segment_rows = new_family(TRITONSERVER_METRIC_KIND_COUNTER, "exitc_segment_rows_total",
                              "Rows carried by segment runs (mean batch = rows / runs; continuous)", ok);
    agreement = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "exitc_agreement",
                           "Live agreement with the original model (agreement monitor): estimate, one-sided bounds at "
                           "the artifact's confidence, certified target (NaN until an early row is checked)", ok);
    monitor_rows = new_family(TRITONSERVER_METRIC_KIND_GAUGE, "exitc_monitor_rows",
                              "Early rows checked at full depth, and how many of them the exit got wrong (agreement monitor)",
                              ok);
    ok_ = ok;
}

MetricFamilies::~MetricFamilies() {
    for (TRITONSERVER_MetricFamily* f : {rows, overhead, engine, queue, segment_runs, segment_rows, agreement, monitor_rows})
        delete_family(f);
}

MetricFamilies* metric_families() { return families_slot().get(); }
void set_metric_families(std::unique_ptr<MetricFamilies> families) { families_slot() = std::move(families); }

TRITONSERVER_Metric* ModelMetrics::make(TRITONSERVER_MetricFamily* family,
                                        const std::vector<std::pair<std::string, std::string>>& labels) {
    if (!family) return nullptr;
    std::vector<TRITONSERVER_Parameter*> params;
    for (const auto& kv : labels)
        params.push_back(TRITONSERVER_ParameterNew(kv.first.c_str(), TRITONSERVER_PARAMETER_STRING, kv.second.c_str()));
    std::vector<const TRITONSERVER_Parameter*> cparams(params.begin(), params.end());
    TRITONSERVER_Metric* metric = nullptr;
    TRITONSERVER_Error* e = TRITONSERVER_MetricNew(&metric, family, cparams.data(), cparams.size());
    for (TRITONSERVER_Parameter* p : params) TRITONSERVER_ParameterDelete(p);
    if (e) {
        EXITC_LOG(TRITONSERVER_LOG_WARN, "metric creation failed: " << TRITONSERVER_ErrorMessage(e));
        TRITONSERVER_ErrorDelete(e);
        return nullptr;
    }
    all_.push_back(metric);
    return metric;
}

ModelMetrics::ModelMetrics(const std::string& model, uint64_t version, std::size_t num_exits, std::size_t num_segments,
                           bool monitored) {
    MetricFamilies* f = metric_families();
    if (!f || !f->available()) return;
    const std::string v = std::to_string(version);
    for (std::size_t e = 0; e <= num_exits; ++e)
        rows_.push_back(make(f->rows, {{"model", model}, {"version", v}, {"exit", std::to_string(e)}}));
    overhead_ = make(f->overhead, {{"model", model}, {"version", v}});
    engine_ = make(f->engine, {{"model", model}, {"version", v}});
    for (std::size_t s = 0; s < num_segments; ++s) {
        const std::string seg = std::to_string(s);
        queue_.push_back(make(f->queue, {{"model", model}, {"version", v}, {"segment", seg}}));
        seg_runs_.push_back(make(f->segment_runs, {{"model", model}, {"version", v}, {"segment", seg}}));
        seg_rows_.push_back(make(f->segment_rows, {{"model", model}, {"version", v}, {"segment", seg}}));
    }
    if (monitored) {
        for (const char* value : {"estimate", "lower", "upper", "target"})
            agreement_.push_back(make(f->agreement, {{"model", model}, {"version", v}, {"value", value}}));
        sampled_ = make(f->monitor_rows, {{"model", model}, {"version", v}, {"rows", "sampled"}});
        disagreements_ = make(f->monitor_rows, {{"model", model}, {"version", v}, {"rows", "disagreements"}});
    }
}

ModelMetrics::~ModelMetrics() {
    for (TRITONSERVER_Metric* m : all_)
        if (TRITONSERVER_Error* e = TRITONSERVER_MetricDelete(m)) TRITONSERVER_ErrorDelete(e);
}

void ModelMetrics::increment(TRITONSERVER_Metric* m, double v) noexcept {
    if (!m || v <= 0) return;
    if (TRITONSERVER_Error* e = TRITONSERVER_MetricIncrement(m, v)) TRITONSERVER_ErrorDelete(e);
}

void ModelMetrics::set(TRITONSERVER_Metric* m, double v) noexcept {
    if (!m) return;
    if (TRITONSERVER_Error* e = TRITONSERVER_MetricSet(m, v)) TRITONSERVER_ErrorDelete(e);
}

void ModelMetrics::set_monitor(const exitc::MonitorReport& r) {
    if (agreement_.size() == 4) {
        set(agreement_[0], r.agreement_estimate);
        set(agreement_[1], r.agreement_lower);
        set(agreement_[2], r.agreement_upper);
        set(agreement_[3], r.target);
    }
    set(sampled_, static_cast<double>(r.total_sampled()));
    set(disagreements_, static_cast<double>(r.total_disagreements()));
}

void ModelMetrics::add_rows(const std::vector<uint64_t>& rows_per_exit) {
    for (std::size_t e = 0; e < rows_per_exit.size() && e < rows_.size(); ++e)
        increment(rows_[e], static_cast<double>(rows_per_exit[e]));
}

void ModelMetrics::add_seconds(double overhead, double engine) {
    increment(overhead_, overhead);
    increment(engine_, engine);
}

void ModelMetrics::add_segment_runs(const std::vector<uint64_t>& runs, const std::vector<uint64_t>& rows) {
    for (std::size_t s = 0; s < runs.size() && s < seg_runs_.size(); ++s) increment(seg_runs_[s], static_cast<double>(runs[s]));
    for (std::size_t s = 0; s < rows.size() && s < seg_rows_.size(); ++s) increment(seg_rows_[s], static_cast<double>(rows[s]));
}

void ModelMetrics::set_queue_rows(const std::vector<uint64_t>& rows) {
    for (std::size_t s = 0; s < rows.size() && s < queue_.size(); ++s) set(queue_[s], static_cast<double>(rows[s]));
}

}  // namespace exitc_triton
