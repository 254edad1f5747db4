// Manifest validation (unknown version, missing/corrupt files, bad JSON, bad fields, graph and
// manifest disagreeing) and feed validation. argv[1]: directory with tiny.exitc and side.exitc.

#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "exitc/error.hpp"
#include "exitc/model.hpp"
#include "test_framework.hpp"

using namespace exitc;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string artifacts() { return exitc_test::args().at(0); }

// A scratch copy of an artifact, optionally with its manifest edited.
std::string scratch_copy(const std::string& name, const std::function<void(json&)>& edit = {}) {
    static int counter = 0;
    const fs::path dst = fs::temp_directory_path() /
                         ("exitc_manifest_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(dst);
    fs::copy(fs::path(artifacts()) / name, dst, fs::copy_options::recursive);
    if (edit) {
        json m;
        std::ifstream(dst / "manifest.json") >> m;
        edit(m);
        std::ofstream(dst / "manifest.json") << m.dump(2);
    }
    return dst.string();
}

void write_file(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

}  // namespace

EXITC_TEST(loads_valid_artifacts) {
    for (const char* name : {"tiny.exitc", "side.exitc"}) {
        const Model model = Model::load(artifacts() + "/" + name);
        CHECK_EQ(model.num_exits(), 2u);
        CHECK(model.has_conditional());
        CHECK_EQ(model.manifest().segments.size(), 3u);
    }
}

EXITC_TEST(unknown_schema_version) {
    const auto dir = scratch_copy("tiny.exitc", [](json& m) { m["schema_version"] = 2; });
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, "unsupported schema_version 2 (this runtime supports: 1)");
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, "manifest.json");
}

EXITC_TEST(prediction_kind_outside_the_documented_kinds) {
    const auto dir = scratch_copy("tiny.exitc", [](json& m) { m["prediction_kind"] = "softmax"; });
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest,
                 "field 'prediction_kind' must be \"logits\", \"probabilities\" or \"log_probabilities\", got \"softmax\"");
    const auto ok = scratch_copy("tiny.exitc", [](json& m) { m["prediction_kind"] = "log_probabilities"; });
    Model::load(ok);  // argmax classes, like logits
}

EXITC_TEST(schema_version_not_integer) {
    const auto dir = scratch_copy("tiny.exitc", [](json& m) { m["schema_version"] = "1"; });
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, "field 'schema_version' must be an integer");
}

EXITC_TEST(bad_json) {
    const auto dir = scratch_copy("tiny.exitc");
    write_file(dir + "/manifest.json", "{\"format\": \"exitc\", \"schema_version\": 1,");
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, "invalid JSON");
}

EXITC_TEST(missing_manifest) {
    CHECK_THROWS(Model::load(artifacts() + "/no_such.exitc"), ErrorCode::kIo, "no_such.exitc/manifest.json");
}

EXITC_TEST(missing_segment_file) {
    const auto dir = scratch_copy("tiny.exitc");
    fs::remove(dir + "/segments/seg_1.onnx");
    CHECK_THROWS(Model::load(dir), ErrorCode::kIo, "segments/seg_1.onnx");
    CHECK_THROWS(Model::load(dir), ErrorCode::kIo, "segments[1].file");
}

EXITC_TEST(missing_conditional_file) {
    const auto dir = scratch_copy("tiny.exitc");
    fs::remove(dir + "/conditional.onnx");
    CHECK_THROWS(Model::load(dir), ErrorCode::kIo, "conditional.onnx");
}

EXITC_TEST(corrupt_segment_file) {
    const auto dir = scratch_copy("tiny.exitc");
    write_file(dir + "/segments/seg_2.onnx", "this is not a protobuf");
    CHECK_THROWS(Model::load(dir), ErrorCode::kBackend, "segments/seg_2.onnx");
}

EXITC_TEST(bad_fields_name_the_field) {
    struct BadField {
        std::function<void(json&)> edit;
        const char* needle;
    };
    const std::vector<BadField> cases = {
        {[](json& m) { m["format"] = "onnx"; }, "field 'format' must be \"exitc\""},
        {[](json& m) { m.erase("segments"); }, "field 'segments' is missing"},
        {[](json& m) { m["segments"][0]["exit"]["threshold"] = "high"; }, "field 'segments[0].exit.threshold' must be a number"},
        {[](json& m) { m["inputs"][0]["dtype"] = "complex64"; }, "field 'inputs[0].dtype' has unsupported dtype 'complex64'"},
        {[](json& m) { m["inputs"][0]["batch_axis"] = 5; }, "field 'inputs[0].batch_axis' is 5"},
        {[](json& m) { m["prediction_output"] = "probs"; }, "field 'prediction_output' names 'probs'"},
        {[](json& m) { m["segments"][1]["inputs"] = {"nope"}; }, "field 'segments[1].inputs[0]' names 'nope'"},
        {[](json& m) { m["segments"][0]["exit"] = nullptr; }, "field 'segments[0].exit' is missing"},
        {[](json& m) { m["segments"][2]["exit"] = m["segments"][1]["exit"]; }, "field 'segments[2].exit' must be null"},
        {[](json& m) { m["segments"][1]["index"] = 7; }, "field 'segments[1].index' is 7, expected 1"},
        {[](json& m) { m["segments"][0]["carry_out"] = {"undeclared"}; }, "field 'segments[0].carry_out[0]' names 'undeclared'"},
        {[](json& m) { m["segments"][2]["outputs"] = {"other"}; }, "field 'segments[2].outputs'"},
        {[](json& m) { m["outputs"][0]["shape"] = {"batch", -3}; }, "field 'outputs[0].shape[1]'"},
        {[](json& m) { m["conditional"]["after_first_exit"] = "yes"; },
         "field 'conditional.after_first_exit' must be true or false, got string"},
    };
    for (const auto& c : cases) {
        const auto dir = scratch_copy("tiny.exitc", c.edit);
        CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, c.needle);
    }
}

EXITC_TEST(unsupported_backend) {
    const auto dir = scratch_copy("tiny.exitc", [](json& m) { m["backend"] = "tensorrt"; });
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, "'backend' is 'tensorrt'");
}

EXITC_TEST(manifest_and_graph_disagree) {
    // The exit score name does not exist in the segment graph.
    auto dir = scratch_copy("tiny.exitc", [](json& m) {
        m["segments"][0]["exit"]["score"] = "exitc_exit0_confidence";
    });
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, "expects output 'exitc_exit0_confidence'");
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, "seg_0.onnx");
    // The last segment needs g and m but the manifest does not feed them.
    dir = scratch_copy("side.exitc", [](json& m) { m["segments"][2]["inputs"] = {"h1"}; });
    CHECK_THROWS(Model::load(dir), ErrorCode::kManifest, "the graph needs input 'g'");
}

EXITC_TEST(feed_validation) {
    const Model model = Model::load(artifacts() + "/side.exitc");
    std::vector<float> x(2 * 4, 0.5f), m(2 * 2, 0.25f);
    auto feeds = [&](Shape xs, Shape ms, DType xd = DType::kFloat32) {
        return std::vector<NamedTensorView>{{"x", TensorView{xd, xs, x.data()}},
                                            {"m", TensorView{DType::kFloat32, ms, m.data()}}};
    };
    CHECK_EQ(model.run(feeds({2, 4}, {2, 2})).exit_index.size(), 2u);
    CHECK_THROWS(model.run(feeds({2, 4}, {2, 2}, DType::kFloat64)), ErrorCode::kInvalidArgument,
                 "input 'x' has dtype float64, expected float32");
    CHECK_THROWS(model.run(feeds({8}, {2, 2})), ErrorCode::kInvalidArgument, "input 'x' has rank 1");
    CHECK_THROWS(model.run(feeds({1, 8}, {2, 1})), ErrorCode::kInvalidArgument, "dimension 1 must be 4");
    CHECK_THROWS(model.run(feeds({2, 4}, {1, 4})), ErrorCode::kInvalidArgument, "dimension 0 must be 2");
    CHECK_THROWS(model.run(feeds({2, 4}, {2, 1})), ErrorCode::kInvalidArgument, "input 'm' has batch size 1 but input 'x' has 2");
    auto f = feeds({2, 4}, {2, 2});
    f.push_back({"y", f[0].view});
    CHECK_THROWS(model.run(f), ErrorCode::kInvalidArgument, "unknown input 'y' (model inputs: x, m)");
    f.pop_back();
    f.push_back(f[0]);
    CHECK_THROWS(model.run(f), ErrorCode::kInvalidArgument, "input 'x' is given more than once");
    f.resize(1);
    CHECK_THROWS(model.run(f), ErrorCode::kInvalidArgument, "missing input 'm'");
}

EXITC_TEST(empty_batch) {
    const Model model = Model::load(artifacts() + "/tiny.exitc");
    const RunResult r = model.run({{"x", TensorView{DType::kFloat32, Shape{0, 4}, nullptr}}});
    CHECK(r.exit_index.empty());
    CHECK_EQ(r.output("logits").shape(), (Shape{0, 3}));
}

EXITC_TEST_MAIN
