#pragma once
// ModelState: one loaded exitc model (TRITONBACKEND_Model): the validated configuration, the
// artifact loaded with libexitc (one exitc::Model, shared by all instances: it is thread-safe),
// the agreement monitor where configured (with the artifact's full-depth twin), and the
// model's metrics.

#include <memory>
#include <mutex>
#include <string>

#include "config.hpp"
#include "exitc/continuous.hpp"
#include "exitc/model.hpp"
#include "exitc/monitor.hpp"
#include "metrics.hpp"
#include "triton_api.hpp"

namespace exitc_triton {

class ModelState {
public:
    // Reads and validates the configuration, loads the artifact. Throws BackendError.
    static std::unique_ptr<ModelState> create(TRITONBACKEND_Model* model);

    const ModelConfig& config() const noexcept { return config_; }
    const exitc::Model& model() const noexcept { return *model_; }
    const std::string& name() const noexcept { return name_; }
    ModelMetrics* metrics() noexcept { return metrics_.get(); }
    // nullptr unless monitor_sample_rate > 0.
    exitc::AgreementMonitor* monitor() noexcept { return monitor_.get(); }
    // Counts a served batch in the agreement monitor (if any) and publishes its figures. A
    // failure of the full-depth check is logged and does not fail the served requests.
    void monitor_batch(const std::vector<exitc::NamedTensorView>& feeds, const exitc::RunResult& result);

    // Publishes the Model's statistics accumulated since the last call (plain mode).
    void publish_plain_stats();

private:
    ModelState() = default;
    std::string name_;
    uint64_t version_ = 0;
    ModelConfig config_;
    std::unique_ptr<exitc::Model> model_;
    std::unique_ptr<exitc::Model> full_depth_;  // the monitor's twin (ModelOptions::full_depth)
    std::unique_ptr<exitc::AgreementMonitor> monitor_;
    std::unique_ptr<ModelMetrics> metrics_;
    std::mutex stats_mutex_;
    exitc::ExitStats last_;
};

}  // namespace exitc_triton
