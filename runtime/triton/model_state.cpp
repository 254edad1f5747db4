#include "model_state.hpp"

#include <sys/stat.h>

#include <random>

#include "common.hpp"
#include "exitc/error.hpp"

namespace exitc_triton {

std::unique_ptr<ModelState> ModelState::create(TRITONBACKEND_Model* model) {
    std::unique_ptr<ModelState> state(new ModelState());
    const char* name = nullptr;
    check(TRITONBACKEND_ModelName(model, &name), "TRITONBACKEND_ModelName");
    state->name_ = name;
    check(TRITONBACKEND_ModelVersion(model, &state->version_), "TRITONBACKEND_ModelVersion");
    TRITONBACKEND_ArtifactType artifact_type = TRITONBACKEND_ARTIFACT_FILESYSTEM;
    const char* location = nullptr;
    check(TRITONBACKEND_ModelRepository(model, &artifact_type, &location), "TRITONBACKEND_ModelRepository");
    if (artifact_type != TRITONBACKEND_ARTIFACT_FILESYSTEM)
        fail(TRITONSERVER_ERROR_UNSUPPORTED, "model '" + state->name_ + "': only filesystem repositories are supported");

    TRITONSERVER_Message* message = nullptr;
    check(TRITONBACKEND_ModelConfig(model, 1, &message), "TRITONBACKEND_ModelConfig");
    std::string json_text;
    {
        const char* base = nullptr;
        size_t size = 0;
        TRITONSERVER_Error* e = TRITONSERVER_MessageSerializeToJson(message, &base, &size);
        if (!e) json_text.assign(base, size);
        if (TRITONSERVER_Error* d = TRITONSERVER_MessageDelete(message)) TRITONSERVER_ErrorDelete(d);
        check(e, "TRITONSERVER_MessageSerializeToJson");
    }
    nlohmann::json config_json;
    try {
        config_json = nlohmann::json::parse(json_text);
    } catch (const std::exception& e) {
        fail(TRITONSERVER_ERROR_INVALID_ARG, "model '" + state->name_ + "': unreadable model configuration: " + e.what());
    }
    state->config_ = parse_model_config(config_json);

    const std::string artifact =
        std::string(location) + "/" + std::to_string(state->version_) + "/" + state->config_.artifact;
    struct stat st {};
    if (::stat((artifact + "/manifest.json").c_str(), &st) != 0)
        fail(TRITONSERVER_ERROR_NOT_FOUND, "model '" + state->name_ + "': no exitc artifact at " + artifact +
                                               " (expected <model>/<version>/" + state->config_.artifact +
                                               "/manifest.json; see `exitc export-triton`)");
    exitc::ModelOptions options;
    options.executor.intra_op_threads = state->config_.intra_op_threads;
    options.executor.allow_spinning = false;
    try {
        state->model_ = std::make_unique<exitc::Model>(exitc::Model::load(artifact, options));
    } catch (const exitc::Error& e) {
        fail(TRITONSERVER_ERROR_INVALID_ARG, "model '" + state->name_ + "': cannot load " + artifact + ": " + e.what());
    }
    validate_against_manifest(state->config_, state->model_->manifest());
    if (state->config_.monitor_sample_rate > 0) {
        exitc::ModelOptions twin = options;
        twin.full_depth = true;
        try {
            state->full_depth_ = std::make_unique<exitc::Model>(exitc::Model::load(artifact, twin));
            state->monitor_ = std::make_unique<exitc::AgreementMonitor>(
                *state->model_, *state->full_depth_, state->config_.monitor_sample_rate, std::random_device{}());
        } catch (const exitc::Error& e) {
            fail(TRITONSERVER_ERROR_INVALID_ARG, "model '" + state->name_ + "': agreement monitor: " + e.what());
        }
    }
    state->metrics_ = std::make_unique<ModelMetrics>(state->name_, state->version_, state->model_->num_exits(),
                                                     state->model_->manifest().segments.size(),
                                                     state->monitor_ != nullptr);
    state->last_ = state->model_->stats();
    EXITC_LOG(TRITONSERVER_LOG_INFO, "model '" << state->name_ << "' version " << state->version_ << ": "
                                               << artifact << ", " << state->model_->manifest().segments.size()
                                               << " segments, " << state->model_->num_exits() << " exits, mode "
                                               << (state->config_.mode == Mode::kPlain ? "plain" : "continuous")
                                               << ", max_batch_size " << state->config_.max_batch_size
                                               << (state->monitor_ ? ", agreement monitor sampling " +
                                                                         std::to_string(state->config_.monitor_sample_rate) +
                                                                         " of the early rows"
                                                                   : std::string()));
    return state;
}

void ModelState::publish_plain_stats() {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    const exitc::ExitStats now = model_->stats();
    std::vector<uint64_t> rows(now.rows_per_exit.size(), 0);
    for (std::size_t e = 0; e < rows.size() && e < last_.rows_per_exit.size(); ++e)
        rows[e] = now.rows_per_exit[e] - last_.rows_per_exit[e];
    metrics_->add_rows(rows);
    metrics_->add_seconds(now.overhead_seconds - last_.overhead_seconds, now.engine_seconds - last_.engine_seconds);
    last_ = now;
}

void ModelState::monitor_batch(const std::vector<exitc::NamedTensorView>& feeds, const exitc::RunResult& result) {
    if (!monitor_) return;
    try {
        monitor_->observe(feeds, result);
    } catch (const exitc::Error& e) {
        EXITC_LOG(TRITONSERVER_LOG_WARN, "model '" << name_ << "': agreement monitor: " << e.what());
        return;
    }
    metrics_->set_monitor(monitor_->report());
}

}  // namespace exitc_triton
