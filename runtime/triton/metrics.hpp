#pragma once
// exitc's custom metrics through Triton's metrics API (shown on the server's /metrics endpoint):
//   exitc_rows_total{model,version,exit}          counter: rows answered at each exit
//                                                 (exit = num_exits means the whole model)
//   exitc_overhead_seconds_total{model,version}   counter: exit decisions, compaction, gathering, scatter
//   exitc_engine_seconds_total{model,version}     counter: time inside the engine (ONNX Runtime)
//   exitc_queue_rows{model,version,segment}       gauge: rows waiting per segment queue (continuous)
//   exitc_segment_runs_total{model,version,segment} / exitc_segment_rows_total{...}: segment runs and
//                                                 the rows they carried (mean batch = rows / runs; continuous)
//   exitc_agreement{model,version,value}          gauge: the agreement monitor's live agreement with the
//                                                 original (value = estimate | lower | upper | target)
//   exitc_monitor_rows{model,version,rows}        gauge: early rows checked at full depth (rows = sampled)
//                                                 and how many of them the exit got wrong (disagreements)
// Families are process-wide (created at backend initialisation); metrics are per model. When the
// server runs without metrics, creation fails: the backend logs one warning and serves without.

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "exitc/monitor.hpp"
#include "triton_api.hpp"

namespace exitc_triton {

class MetricFamilies {
public:
    MetricFamilies();  // never throws; `available()` tells whether the families exist
    ~MetricFamilies();
    MetricFamilies(const MetricFamilies&) = delete;
    MetricFamilies& operator=(const MetricFamilies&) = delete;
    bool available() const noexcept { return ok_; }

    TRITONSERVER_MetricFamily* rows = nullptr;
    TRITONSERVER_MetricFamily* overhead = nullptr;
    TRITONSERVER_MetricFamily* engine = nullptr;
    TRITONSERVER_MetricFamily* queue = nullptr;
    TRITONSERVER_MetricFamily* segment_runs = nullptr;
    TRITONSERVER_MetricFamily* segment_rows = nullptr;
    TRITONSERVER_MetricFamily* agreement = nullptr;
    TRITONSERVER_MetricFamily* monitor_rows = nullptr;

private:
    bool ok_ = false;
};

// The process-wide families (nullptr before TRITONBACKEND_Initialize / after Finalize).
MetricFamilies* metric_families();
void set_metric_families(std::unique_ptr<MetricFamilies> families);

// One model's metrics. Thread-safe (Triton's metric calls are; the delta bookkeeping is locked).
class ModelMetrics {
public:
    ModelMetrics(const std::string& model, uint64_t version, std::size_t num_exits, std::size_t num_segments,
                 bool monitored = false);
    ~ModelMetrics();
    ModelMetrics(const ModelMetrics&) = delete;
    ModelMetrics& operator=(const ModelMetrics&) = delete;

    void add_rows(const std::vector<uint64_t>& rows_per_exit);
    void add_seconds(double overhead, double engine);
    void add_segment_runs(const std::vector<uint64_t>& runs, const std::vector<uint64_t>& rows);
    void set_queue_rows(const std::vector<uint64_t>& rows);
    void set_monitor(const exitc::MonitorReport& report);

private:
    static void increment(TRITONSERVER_Metric* m, double v) noexcept;
    static void set(TRITONSERVER_Metric* m, double v) noexcept;
    TRITONSERVER_Metric* make(TRITONSERVER_MetricFamily* family, const std::vector<std::pair<std::string, std::string>>& labels);
    std::vector<TRITONSERVER_Metric*> rows_, queue_, seg_runs_, seg_rows_;
    std::vector<TRITONSERVER_Metric*> agreement_;  // estimate, lower, upper, target
    TRITONSERVER_Metric* sampled_ = nullptr;
    TRITONSERVER_Metric* disagreements_ = nullptr;
    TRITONSERVER_Metric* overhead_ = nullptr;
    TRITONSERVER_Metric* engine_ = nullptr;
    std::vector<TRITONSERVER_Metric*> all_;
};

}  // namespace exitc_triton
