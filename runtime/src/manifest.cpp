// manifest.json parsing and validation. Every error names the manifest file and the JSON path of
// the offending field, so a broken artifact is diagnosable without a debugger.

#include "exitc/manifest.hpp"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "exitc/error.hpp"
#include "filesystem_util.hpp"

namespace exitc {
namespace {

using nlohmann::json;

class FieldReader {
public:
    explicit FieldReader(std::string origin) : origin_(std::move(origin)) {}

    [[noreturn]] void fail(const std::string& path, const std::string& what) const {
        throw Error(ErrorCode::kManifest, origin_ + ": field '" + path + "' " + what);
    }

    const json& member(const json& obj, const std::string& path, const char* key) const {
        auto it = obj.find(key);
        if (it == obj.end()) fail(join(path, key), "is missing");
        return *it;
    }

    std::string string(const json& obj, const std::string& path, const char* key) const {
        const json& v = member(obj, path, key);
        if (!v.is_string()) fail(join(path, key), "must be a string, got " + std::string(v.type_name()));
        return v.get<std::string>();
    }

    std::optional<std::string> optional_string(const json& obj, const std::string& path, const char* key) const {
        auto it = obj.find(key);
        if (it == obj.end() || it->is_null()) return std::nullopt;
        if (!it->is_string()) fail(join(path, key), "must be a string, got " + std::string(it->type_name()));
        return it->get<std::string>();
    }

    int64_t integer(const json& obj, const std::string& path, const char* key) const {
        const json& v = member(obj, path, key);
        if (!v.is_number_integer()) fail(join(path, key), "must be an integer, got " + describe(v));
        return v.get<int64_t>();
    }

    double number(const json& obj, const std::string& path, const char* key) const {
        const json& v = member(obj, path, key);
        if (!v.is_number()) fail(join(path, key), "must be a number, got " + describe(v));
        return v.get<double>();
    }

    const json& array(const json& obj, const std::string& path, const char* key) const {
        const json& v = member(obj, path, key);
        if (!v.is_array()) fail(join(path, key), "must be an array, got " + std::string(v.type_name()));
        return v;
    }

    std::vector<std::string> string_list(const json& obj, const std::string& path, const char* key) const {
        const json& arr = array(obj, path, key);
        std::vector<std::string> out;
        for (std::size_t i = 0; i < arr.size(); ++i) {
            if (!arr[i].is_string()) fail(index(join(path, key), i), "must be a string");
            out.push_back(arr[i].get<std::string>());
        }
        return out;
    }

    TensorSpec tensor_spec(const json& obj, const std::string& path) const {
        if (!obj.is_object()) fail(path, "must be an object");
        TensorSpec spec;
        spec.name = string(obj, path, "name");
        const std::string dtype = string(obj, path, "dtype");
        const auto parsed = parse_dtype(dtype);
        if (!parsed) fail(join(path, "dtype"), "has unsupported dtype '" + dtype + "'");
        spec.dtype = *parsed;
        const json& shape = array(obj, path, "shape");
        for (std::size_t i = 0; i < shape.size(); ++i) {
            const json& d = shape[i];
            Dim dim;
            if (d.is_number_integer() && d.get<int64_t>() >= 0) dim.size = d.get<int64_t>();
            else if (d.is_string()) dim.symbol = d.get<std::string>();
            else if (!d.is_null()) fail(index(join(path, "shape"), i), "must be a non-negative integer, a name or null");
            spec.shape.push_back(dim);
        }
        if (spec.shape.size() > 8) fail(join(path, "shape"), "has rank above the supported maximum 8");
        auto it = obj.find("batch_axis");
        spec.batch_axis = 0;  // the format's default: batch-major
        if (it != obj.end()) {
            if (!it->is_number_integer()) fail(join(path, "batch_axis"), "must be an integer");
            spec.batch_axis = it->get<int>();
        }
        if (spec.batch_axis < 0 || spec.batch_axis >= static_cast<int>(spec.shape.size()))
            fail(join(path, "batch_axis"), "is " + std::to_string(spec.batch_axis) + ", outside the tensor's rank " +
                                               std::to_string(spec.shape.size()));
        return spec;
    }

    std::vector<TensorSpec> tensor_specs(const json& obj, const std::string& path, const char* key) const {
        const json& arr = array(obj, path, key);
        std::vector<TensorSpec> out;
        for (std::size_t i = 0; i < arr.size(); ++i) out.push_back(tensor_spec(arr[i], index(join(path, key), i)));
        return out;
    }

    static std::string join(const std::string& path, const char* key) {
        return path.empty() ? std::string(key) : path + "." + key;
    }
    static std::string index(const std::string& path, std::size_t i) { return path + "[" + std::to_string(i) + "]"; }
    static std::string describe(const json& v) {
        std::string dumped = v.dump();
        if (dumped.size() > 40) dumped = dumped.substr(0, 40) + "...";
        return std::string(v.type_name()) + " " + dumped;
    }

private:
    std::string origin_;
};

}  // namespace

Manifest Manifest::parse(const std::string& json_text, const std::string& origin) {
    json root;
    try {
        root = json::parse(json_text);
    } catch (const json::parse_error& e) {
        throw Error(ErrorCode::kManifest, origin + ": invalid JSON: " + e.what());
    }
    const FieldReader r(origin);
    if (!root.is_object()) r.fail("(root)", "must be a JSON object");

    Manifest m;
    // The version decides how everything else reads, so it is checked first.
    const json& version = r.member(root, "", "schema_version");
    if (!version.is_number_integer())
        r.fail("schema_version", "must be an integer, got " + FieldReader::describe(version));
    m.schema_version = version.get<int>();
    if (m.schema_version != kSchemaVersion)
        throw Error(ErrorCode::kManifest, origin + ": unsupported schema_version " + std::to_string(m.schema_version) +
                                              " (this runtime supports: " + std::to_string(kSchemaVersion) + ")");
    const std::string format = r.string(root, "", "format");
    if (format != "exitc") r.fail("format", "must be \"exitc\", got \"" + format + "\"");
    m.exitc_version = r.optional_string(root, "", "exitc_version").value_or("");
    m.backend = r.optional_string(root, "", "backend").value_or("onnxruntime-cpu");
    m.inputs = r.tensor_specs(root, "", "inputs");
    m.outputs = r.tensor_specs(root, "", "outputs");
    if (m.inputs.empty()) r.fail("inputs", "must list at least one input");
    if (m.outputs.empty()) r.fail("outputs", "must list at least one output");
    m.prediction_output = r.string(root, "", "prediction_output");
    const std::string kind = r.optional_string(root, "", "prediction_kind").value_or("logits");
    if (kind != "logits" && kind != "probabilities" && kind != "log_probabilities")
        r.fail("prediction_kind", "must be \"logits\", \"probabilities\" or \"log_probabilities\", got \"" + kind + "\"");
    m.prediction_probabilities = kind == "probabilities";
    auto carried_it = root.find("carried");
    if (carried_it != root.end() && !carried_it->is_null()) m.carried = r.tensor_specs(root, "", "carried");

    // Names: unique, and every reference resolves.
    std::set<std::string> graph_inputs, carried_names, output_names;
    for (std::size_t i = 0; i < m.inputs.size(); ++i)
        if (!graph_inputs.insert(m.inputs[i].name).second)
            r.fail(FieldReader::index("inputs", i) + ".name", "repeats the input '" + m.inputs[i].name + "'");
    for (std::size_t i = 0; i < m.outputs.size(); ++i)
        if (!output_names.insert(m.outputs[i].name).second)
            r.fail(FieldReader::index("outputs", i) + ".name", "repeats the output '" + m.outputs[i].name + "'");
    for (std::size_t i = 0; i < m.carried.size(); ++i)
        if (graph_inputs.count(m.carried[i].name) || !carried_names.insert(m.carried[i].name).second)
            r.fail(FieldReader::index("carried", i) + ".name", "repeats the name '" + m.carried[i].name + "'");
    if (!output_names.count(m.prediction_output))
        r.fail("prediction_output", "names '" + m.prediction_output + "', which is not among 'outputs'");

    const json& segments = r.array(root, "", "segments");
    if (segments.empty()) r.fail("segments", "must list at least one segment");
    std::set<std::string> available = graph_inputs;  // what a segment may read
    for (std::size_t s = 0; s < segments.size(); ++s) {
        const std::string path = FieldReader::index("segments", s);
        const json& js = segments[s];
        if (!js.is_object()) r.fail(path, "must be an object");
        Segment seg;
        seg.index = static_cast<int>(r.integer(js, path, "index"));
        if (seg.index != static_cast<int>(s))
            r.fail(path + ".index", "is " + std::to_string(seg.index) + ", expected " + std::to_string(s));
        seg.file = r.string(js, path, "file");
        if (seg.file.empty()) r.fail(path + ".file", "is empty");
        seg.inputs = r.string_list(js, path, "inputs");
        for (std::size_t i = 0; i < seg.inputs.size(); ++i)
            if (!available.count(seg.inputs[i]))
                r.fail(FieldReader::index(path + ".inputs", i),
                       "names '" + seg.inputs[i] + "', which is neither a graph input nor carried by an earlier segment");
        auto carry_it = js.find("carry_out");
        if (carry_it != js.end() && !carry_it->is_null()) seg.carry_out = r.string_list(js, path, "carry_out");
        for (std::size_t i = 0; i < seg.carry_out.size(); ++i) {
            if (!carried_names.count(seg.carry_out[i]))
                r.fail(FieldReader::index(path + ".carry_out", i),
                       "names '" + seg.carry_out[i] + "', which is not declared in 'carried'");
            available.insert(seg.carry_out[i]);
        }
        const bool is_last = s + 1 == segments.size();
        auto exit_it = js.find("exit");
        const bool has_exit = exit_it != js.end() && !exit_it->is_null();
        if (is_last && has_exit) r.fail(path + ".exit", "must be null for the last segment");
        if (!is_last && !has_exit) r.fail(path + ".exit", "is missing; every segment but the last has an exit");
        if (has_exit) {
            const std::string epath = path + ".exit";
            if (!exit_it->is_object()) r.fail(epath, "must be an object or null");
            ExitHead head;
            head.index = static_cast<int>(r.integer(*exit_it, epath, "index"));
            if (head.index != static_cast<int>(s))
                r.fail(epath + ".index", "is " + std::to_string(head.index) + ", expected " + std::to_string(s));
            head.logits = r.string(*exit_it, epath, "logits");
            head.score = r.string(*exit_it, epath, "score");
            head.threshold = r.number(*exit_it, epath, "threshold");
            head.candidate = r.optional_string(*exit_it, epath, "candidate").value_or("");
            seg.exit = head;
        }
        if (is_last) {
            seg.outputs = r.string_list(js, path, "outputs");
            std::vector<std::string> expected;
            for (const auto& o : m.outputs) expected.push_back(o.name);
            if (seg.outputs != expected) r.fail(path + ".outputs", "must list the model's outputs in manifest order");
        }
        m.segments.push_back(std::move(seg));
    }

    auto cond_it = root.find("conditional");
    if (cond_it != root.end() && !cond_it->is_null()) {
        if (!cond_it->is_object()) r.fail("conditional", "must be an object or null");
        m.conditional_file = r.string(*cond_it, "conditional", "file");
        auto first_it = cond_it->find("after_first_exit");
        if (first_it != cond_it->end() && !first_it->is_null()) {
            if (!first_it->is_boolean())
                r.fail("conditional.after_first_exit", "must be true or false, got " + std::string(first_it->type_name()));
            m.conditional_after_first_exit = first_it->get<bool>();
        }
        if (m.conditional_after_first_exit && m.num_exits() == 0)
            r.fail("conditional.after_first_exit", "is true but the model has no exit");
    }

    auto seq_it = root.find("sequence");
    if (seq_it != root.end() && !seq_it->is_null()) {
        if (!seq_it->is_object()) r.fail("sequence", "must be an object or null");
        SequenceSpec seq;
        seq.axis = static_cast<int>(r.integer(*seq_it, "sequence", "axis"));
        seq.inputs = r.string_list(*seq_it, "sequence", "inputs");
        seq.mask = r.string(*seq_it, "sequence", "mask");
        seq.length = r.integer(*seq_it, "sequence", "length");
        seq.call_rows = r.number(*seq_it, "sequence", "call_rows");
        if (seq.axis != 1) r.fail("sequence.axis", "is " + std::to_string(seq.axis) + "; this runtime supports 1");
        if (seq.length < 1) r.fail("sequence.length", "must be >= 1");
        if (!(seq.call_rows >= 0)) r.fail("sequence.call_rows", "must be >= 0");
        if (std::find(seq.inputs.begin(), seq.inputs.end(), seq.mask) == seq.inputs.end())
            r.fail("sequence.mask", "'" + seq.mask + "' is not one of sequence.inputs");
        for (std::size_t i = 0; i < seq.inputs.size(); ++i) {
            auto spec = std::find_if(m.inputs.begin(), m.inputs.end(),
                                     [&](const TensorSpec& t) { return t.name == seq.inputs[i]; });
            if (spec == m.inputs.end())
                r.fail(FieldReader::index("sequence.inputs", i), "'" + seq.inputs[i] + "' is not a model input");
            if (spec->batch_axis != 0 || spec->shape.size() < 2 ||
                (!spec->shape[1].is_symbolic() && spec->shape[1].size != seq.length))
                r.fail(FieldReader::index("sequence.inputs", i),
                       "'" + seq.inputs[i] + "' must be batch-major with sequence.length (or an open length) on axis 1");
        }
        m.sequence = std::move(seq);
    }

    auto cal_it = root.find("calibration");
    if (cal_it != root.end() && !cal_it->is_null()) {
        if (!cal_it->is_object()) r.fail("calibration", "must be an object or null");
        CalibrationSpec cal;
        if (cal_it->contains("target_acc")) cal.target_acc = r.number(*cal_it, "calibration", "target_acc");
        if (cal_it->contains("confidence")) cal.confidence = r.number(*cal_it, "calibration", "confidence");
        if (!(cal.target_acc >= 0.0 && cal.target_acc <= 1.0)) r.fail("calibration.target_acc", "must be in [0, 1]");
        if (!(cal.confidence > 0.0 && cal.confidence < 1.0)) r.fail("calibration.confidence", "must be in (0, 1)");
        m.calibration = cal;
    }
    return m;
}

Manifest Manifest::load(const std::string& artifact_dir) {
    const std::string manifest_path = join_path(artifact_dir, "manifest.json");
    std::ifstream in(manifest_path, std::ios::binary);
    if (!in) {
        const std::string why = is_directory(artifact_dir) ? "cannot be opened" : "not found (is '" + artifact_dir + "' an exitc artifact directory?)";
        throw Error(ErrorCode::kIo, manifest_path + ": " + why);
    }
    std::ostringstream text;
    text << in.rdbuf();
    Manifest m = parse(text.str(), manifest_path);
    auto require_file = [&](const std::string& relative, const std::string& field) {
        const std::string path = join_path(artifact_dir, relative);
        if (!is_regular_file(path))
            throw Error(ErrorCode::kIo, path + ": file named by " + manifest_path + " field '" + field + "' is missing");
    };
    for (const auto& seg : m.segments)
        require_file(seg.file, "segments[" + std::to_string(seg.index) + "].file");
    if (m.conditional_file) require_file(*m.conditional_file, "conditional.file");
    return m;
}

}  // namespace exitc
