#pragma once
// The model configuration (config.pbtxt, as Triton hands it over in JSON) of an exitc model,
// parsed and validated up front: against what this backend supports, and against the artifact's
// manifest. Every problem is one clear BackendError naming the model and the field.
//
// Backend parameters (config.pbtxt `parameters { key: ... value { string_value: ... } }`):
//   artifact         artifact directory, relative to <model>/<version>/ (default "model.exitc")
//   mode             "plain" (one pass per execute call) or "continuous" (default "plain")
//   intra_op_threads ONNX Runtime threads per segment run (default 0: EXITC_THREADS or all CPUs)
//   continuous_max_batch   rows per segment run in continuous mode (default max_batch_size)
//   continuous_max_wait_us latency bound per row and queue (default 5000)
//   continuous_policy      "fullest" or "deepest" (default "fullest")
//   continuous_max_pending_rows  back-pressure limit (default 4 * continuous_max_batch)
//   monitor_sample_rate    share of the early rows the agreement monitor (exitc/monitor.hpp)
//                          also runs at full depth, in [0, 1] (default 0: no monitor)

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "exitc/continuous.hpp"
#include "exitc/manifest.hpp"

namespace exitc_triton {

constexpr const char* kExitIndexOutput = "exitc_exit_index";

enum class Mode { kPlain, kContinuous };

struct IoConfig {
    std::string name;
    exitc::DType dtype = exitc::DType::kFloat32;
    std::vector<int64_t> dims;  // without the batch dim; -1 = variable
};

struct ModelConfig {
    std::string model_name;
    int64_t max_batch_size = 0;
    std::vector<IoConfig> inputs;
    std::vector<IoConfig> outputs;  // may include exitc_exit_index
    Mode mode = Mode::kPlain;
    std::string artifact = "model.exitc";
    int intra_op_threads = 0;
    exitc::ContinuousBatcherOptions continuous;
    double monitor_sample_rate = 0.0;

    const IoConfig* output(const std::string& name) const;
};

// Parses Triton's JSON model configuration; throws BackendError (INVALID_ARG) on anything this
// backend does not support.
ModelConfig parse_model_config(const nlohmann::json& config);

// Checks the configuration against the artifact: every manifest input configured with its dtype
// and non-batch dims, every configured output a manifest output (or exitc_exit_index, INT64 [1]),
// batch axis 0 everywhere. Throws BackendError (INVALID_ARG).
void validate_against_manifest(const ModelConfig& config, const exitc::Manifest& manifest);

}  // namespace exitc_triton
