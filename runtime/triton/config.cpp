#include "config.hpp"

#include <algorithm>

#include "common.hpp"

namespace exitc_triton {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& model, const std::string& message) {
    fail(TRITONSERVER_ERROR_INVALID_ARG, "model '" + model + "': " + message);
}

// Triton's JSON renders 64-bit integers as numbers or strings: accept both.
int64_t as_int(const json& v, const std::string& model, const std::string& what) {
    try {
        if (v.is_number_integer()) return v.get<int64_t>();
        if (v.is_string()) return std::stoll(v.get<std::string>());
    } catch (const std::exception&) {
    }
    bad(model, what + " is not an integer: " + v.dump());
}

std::string dims_text(const std::vector<int64_t>& dims) {
    std::string s = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
}

std::vector<IoConfig> parse_ios(const json& config, const char* key, const std::string& model) {
    std::vector<IoConfig> out;
    if (!config.contains(key)) return out;
    for (const json& io : config.at(key)) {
        IoConfig c;
        c.name = io.value("name", "");
        const std::string what = std::string(key) + " '" + c.name + "'";
        const std::string type = io.value("data_type", "");
        const auto dtype = parse_config_type(type);
        if (!dtype) bad(model, what + " has data_type " + type + ", which exitc does not serve");
        c.dtype = *dtype;
        if (io.contains("dims"))
            for (const json& d : io.at("dims")) c.dims.push_back(as_int(d, model, what + " dims"));
        if (io.contains("reshape")) bad(model, what + ": reshape is not supported by the exitc backend");
        if (io.value("is_shape_tensor", false)) bad(model, what + ": shape tensors are not supported");
        out.push_back(std::move(c));
    }
    return out;
}

std::string parameter(const json& config, const std::string& key, const std::string& fallback) {
    if (!config.contains("parameters")) return fallback;
    const json& params = config.at("parameters");
    if (!params.is_object() || !params.contains(key)) return fallback;
    const json& p = params.at(key);
    if (p.is_object() && p.contains("string_value")) return p.at("string_value").get<std::string>();
    if (p.is_string()) return p.get<std::string>();
    return fallback;
}

int64_t int_parameter(const json& config, const std::string& key, int64_t fallback, int64_t min,
                      const std::string& model) {
    const std::string text = parameter(config, key, "");
    if (text.empty()) return fallback;
    std::size_t used = 0;
    int64_t v = 0;
    try {
        v = std::stoll(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || v < min)
        bad(model, "parameter " + key + " = '" + text + "' must be an integer >= " + std::to_string(min));
    return v;
}

double rate_parameter(const json& config, const std::string& key, const std::string& model) {
    const std::string text = parameter(config, key, "");
    if (text.empty()) return 0.0;
    std::size_t used = 0;
    double v = -1.0;
    try {
        v = std::stod(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || !(v >= 0.0 && v <= 1.0))
        bad(model, "parameter " + key + " = '" + text + "' must be a number in [0, 1]");
    return v;
}

}  // namespace

const IoConfig* ModelConfig::output(const std::string& name) const {
    for (const auto& o : outputs)
        if (o.name == name) return &o;
    return nullptr;
}

ModelConfig parse_model_config(const json& config) {
    ModelConfig c;
    c.model_name = config.value("name", "?");
    const std::string& m = c.model_name;
    const std::string backend = config.value("backend", "");
    if (backend != "exitc") bad(m, "backend is '" + backend + "', expected 'exitc'");
    c.max_batch_size = config.contains("max_batch_size") ? as_int(config.at("max_batch_size"), m, "max_batch_size") : 0;
    if (c.max_batch_size < 1)
        bad(m, "max_batch_size must be at least 1 (exitc batches rows; got " + std::to_string(c.max_batch_size) + ")");
    if (config.contains("sequence_batching")) bad(m, "sequence_batching is not supported (use dynamic_batching)");
    if (config.contains("model_transaction_policy") &&
        config.at("model_transaction_policy").value("decoupled", false))
        bad(m, "decoupled transaction policy is not supported");
    if (config.contains("instance_group"))
        for (const json& g : config.at("instance_group")) {
            const std::string kind = g.value("kind", "KIND_CPU");
            if (kind != "KIND_CPU" && kind != "KIND_AUTO")
                bad(m, "instance_group kind " + kind + " is not supported (the exitc backend runs on CPU: KIND_CPU)");
        }
    c.inputs = parse_ios(config, "input", m);
    c.outputs = parse_ios(config, "output", m);
    if (c.inputs.empty()) bad(m, "no inputs configured");
    if (c.outputs.empty()) bad(m, "no outputs configured");

    c.artifact = parameter(config, "artifact", c.artifact);
    if (c.artifact.empty() || c.artifact.find("..") != std::string::npos || c.artifact[0] == '/')
        bad(m, "parameter artifact = '" + c.artifact + "' must be a relative path inside the version directory");
    const std::string mode = parameter(config, "mode", "plain");
    if (mode == "plain") c.mode = Mode::kPlain;
    else if (mode == "continuous") c.mode = Mode::kContinuous;
    else bad(m, "parameter mode = '" + mode + "' must be 'plain' or 'continuous'");
    c.intra_op_threads = static_cast<int>(int_parameter(config, "intra_op_threads", 0, 0, m));
    c.continuous.max_batch = static_cast<std::size_t>(int_parameter(config, "continuous_max_batch", c.max_batch_size, 1, m));
    c.continuous.max_wait = std::chrono::microseconds(int_parameter(config, "continuous_max_wait_us", 5000, 0, m));
    c.continuous.max_pending_rows = static_cast<std::size_t>(
        int_parameter(config, "continuous_max_pending_rows", 4 * static_cast<int64_t>(c.continuous.max_batch), 1, m));
    const std::string policy = parameter(config, "continuous_policy", "fullest");
    if (policy == "fullest") c.continuous.policy = exitc::ContinuousBatcherOptions::Policy::kFullest;
    else if (policy == "deepest") c.continuous.policy = exitc::ContinuousBatcherOptions::Policy::kDeepest;
    else bad(m, "parameter continuous_policy = '" + policy + "' must be 'fullest' or 'deepest'");
    c.monitor_sample_rate = rate_parameter(config, "monitor_sample_rate", m);
    return c;
}

void validate_against_manifest(const ModelConfig& c, const exitc::Manifest& man) {
    const std::string& m = c.model_name;
    auto manifest_dims = [&](const exitc::TensorSpec& spec, const std::string& what) {
        if (spec.batch_axis != 0)
            bad(m, what + " has its batch on axis " + std::to_string(spec.batch_axis) +
                       " in the artifact; Triton batches on axis 0");
        std::vector<int64_t> dims;
        for (std::size_t a = 1; a < spec.shape.size(); ++a) dims.push_back(spec.shape[a].size);  // -1 symbolic
        return dims;
    };
    auto check_dims = [&](const IoConfig& io, const std::vector<int64_t>& want, const std::string& what) {
        bool ok = io.dims.size() == want.size();
        for (std::size_t a = 0; ok && a < want.size(); ++a)
            ok = want[a] < 0 ? (io.dims[a] == -1 || io.dims[a] >= 0) : io.dims[a] == want[a];
        if (!ok)
            bad(m, what + " has dims " + dims_text(io.dims) + ", the artifact declares " + dims_text(want) +
                       " (without the batch dim; -1 = variable)");
    };
    for (const auto& spec : man.inputs) {
        const std::string what = "input '" + spec.name + "'";
        auto it = std::find_if(c.inputs.begin(), c.inputs.end(), [&](const IoConfig& io) { return io.name == spec.name; });
        if (it == c.inputs.end()) bad(m, what + " of the artifact is not configured");
        if (it->dtype != spec.dtype)
            bad(m, what + " is configured as " + config_type_name(it->dtype) + ", the artifact declares " +
                       config_type_name(spec.dtype));
        check_dims(*it, manifest_dims(spec, what), what);
    }
    for (const auto& io : c.inputs) {
        auto it = std::find_if(man.inputs.begin(), man.inputs.end(),
                               [&](const exitc::TensorSpec& s) { return s.name == io.name; });
        if (it == man.inputs.end()) bad(m, "input '" + io.name + "' is configured but the artifact has no such input");
    }
    for (const auto& io : c.outputs) {
        const std::string what = "output '" + io.name + "'";
        if (io.name == kExitIndexOutput) {
            if (io.dtype != exitc::DType::kInt64 || io.dims != std::vector<int64_t>{1})
                bad(m, what + " must be TYPE_INT64 with dims [ 1 ]");
            continue;
        }
        auto it = std::find_if(man.outputs.begin(), man.outputs.end(),
                               [&](const exitc::TensorSpec& s) { return s.name == io.name; });
        if (it == man.outputs.end()) bad(m, what + " is configured but the artifact has no such output");
        if (it->dtype != io.dtype)
            bad(m, what + " is configured as " + config_type_name(io.dtype) + ", the artifact declares " +
                       config_type_name(it->dtype));
        check_dims(io, manifest_dims(*it, what), what);
    }
}

}  // namespace exitc_triton
