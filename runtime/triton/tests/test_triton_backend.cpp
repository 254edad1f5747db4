// The backend's entry points against the mock Triton API (mock_triton.hpp), in plain and
// continuous mode: every request gets exactly one response, one statistics report and one
// release; malformed requests (which the real server filters out before a backend sees them)
// each get their own error while the others in the same execute call succeed with the rows
// Model::run gives; multi-buffer inputs; metrics; API version refusal; config refusal; unloading
// with requests in flight. argv[1]: the ctest artifact directory (make_tiny_artifact.py).

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>

#include <unistd.h>

#include "exitc/model.hpp"
#include "mock_triton.hpp"
#include "test_framework.hpp"

namespace fs = std::filesystem;

namespace {

std::string artifacts() { return exitc_test::args().at(0); }

struct Fixture {
    fs::path dir;
    TRITONBACKEND_Backend backend;
    TRITONBACKEND_Model model;
    TRITONBACKEND_ModelInstance instance;

    explicit Fixture(const std::string& config_json, const std::string& tag) {
        dir = fs::temp_directory_path() / ("exitc_triton_backend_test_" + tag + "_" + std::to_string(::getpid()));
        fs::remove_all(dir);
        fs::create_directories(dir / "1");
        fs::create_directory_symlink(fs::absolute(artifacts() + "/tiny.exitc"), dir / "1" / "model.exitc");
        model.name = "tiny";
        model.repository = dir.string();
        model.config_json = config_json;
        instance.model = &model;
        instance.name = "tiny_0";
    }
    ~Fixture() { fs::remove_all(dir); }
};

std::string config(const std::string& mode, const std::string& dims = "[\"4\"]") {
    return R"({"name":"tiny","backend":"exitc","max_batch_size":8,
      "input":[{"name":"x","data_type":"TYPE_FP32","dims":)" + dims + R"(}],
      "output":[{"name":"logits","data_type":"TYPE_FP32","dims":[3]},
                {"name":"exitc_exit_index","data_type":"TYPE_INT64","dims":["1"]}],
      "instance_group":[{"kind":"KIND_CPU","count":1}],
      "dynamic_batching":{},
      "parameters":{"mode":{"string_value":")" + mode + R"("},
                    "intra_op_threads":{"string_value":"1"},
                    "continuous_max_batch":{"string_value":"4"}}})";
}

std::vector<float> rows_of(int64_t rows, int seed) {
    std::mt19937 gen(static_cast<unsigned>(seed));
    std::normal_distribution<float> d(0.f, 2.f);
    std::vector<float> v(static_cast<std::size_t>(rows * 4));
    for (auto& f : v) f = d(gen);
    return v;
}

std::unique_ptr<TRITONBACKEND_Request> request(const std::vector<float>& x, int64_t rows, int buffers = 1,
                                               TRITONSERVER_DataType dt = TRITONSERVER_TYPE_FP32,
                                               const std::string& name = "x") {
    auto r = std::make_unique<TRITONBACKEND_Request>();
    TRITONBACKEND_Input in;
    in.name = name;
    in.dtype = dt;
    in.shape = {rows, static_cast<int64_t>(x.size()) / std::max<int64_t>(rows, 1)};
    const auto* bytes = reinterpret_cast<const unsigned char*>(x.data());
    const std::size_t total = x.size() * sizeof(float), part = total / static_cast<std::size_t>(buffers);
    for (int b = 0; b < buffers; ++b) {
        const std::size_t from = static_cast<std::size_t>(b) * part, to = b + 1 == buffers ? total : from + part;
        in.buffers.emplace_back(bytes + from, bytes + to);
    }
    r->inputs.push_back(std::move(in));
    return r;
}

void wait_released(const std::vector<TRITONBACKEND_Request*>& rs) {
    std::unique_lock<std::mutex> lock(mock::mutex());
    const bool all = mock::released_cv().wait_for(lock, std::chrono::seconds(30), [&] {
        for (auto* r : rs)
            if (r->releases == 0) return false;
        return true;
    });
    if (!all) EXITC_FAIL("requests not released within 30 s");
}

void check_once(const TRITONBACKEND_Request& r, const char* what) {
    if (r.responses != 1 || r.releases != 1 || r.statistics != 1)
        EXITC_FAIL(what << ": " << r.responses << " responses, " << r.releases << " releases, " << r.statistics
                        << " statistics (want 1 each)");
}

void check_error(const TRITONBACKEND_Request& r, const std::string& needle, const char* what) {
    check_once(r, what);
    if (r.error.find(needle) == std::string::npos) EXITC_FAIL(what << ": error '" << r.error << "' lacks '" << needle << "'");
    CHECK(!r.stat_success);
}

const TRITONBACKEND_Output* output(const TRITONBACKEND_Request& r, const std::string& name) {
    for (const auto& o : r.outputs)
        if (o.name == name) return &o;
    return nullptr;
}

// The response rows equal Model::run on the request's own rows (exit index exactly; logits
// within 1e-5: the backend ran them inside a merged batch).
void check_success(const TRITONBACKEND_Request& r, const exitc::Model& model, const std::vector<float>& x, int64_t rows,
                   const char* what, bool want_logits = true) {
    check_once(r, what);
    if (!r.error.empty()) EXITC_FAIL(what << ": unexpected error " << r.error);
    CHECK(r.stat_success);
    const exitc::RunResult ref = model.run({{"x", exitc::TensorView{exitc::DType::kFloat32, exitc::Shape{rows, 4}, x.data()}}});
    const TRITONBACKEND_Output* ei = output(r, "exitc_exit_index");
    CHECK(ei != nullptr);
    CHECK(ei->dtype == TRITONSERVER_TYPE_INT64);
    CHECK(ei->shape == (std::vector<int64_t>{rows, 1}));
    for (int64_t i = 0; i < rows; ++i) {
        int64_t got = 0;
        std::memcpy(&got, ei->data.data() + static_cast<std::size_t>(i) * 8, 8);
        if (got != ref.exit_index[static_cast<std::size_t>(i)])
            EXITC_FAIL(what << ": row " << i << " exit " << got << ", Model::run " << ref.exit_index[static_cast<std::size_t>(i)]);
    }
    const TRITONBACKEND_Output* lg = output(r, "logits");
    if (!want_logits) {
        CHECK(lg == nullptr);
        return;
    }
    CHECK(lg != nullptr);
    CHECK(lg->shape == (std::vector<int64_t>{rows, 3}));
    const float* want = ref.output("logits").as<float>();
    for (int64_t i = 0; i < rows * 3; ++i) {
        float got = 0;
        std::memcpy(&got, lg->data.data() + static_cast<std::size_t>(i) * 4, 4);
        if (!(std::fabs(got - want[i]) <= 1e-5f)) EXITC_FAIL(what << ": logits[" << i << "] " << got << " vs " << want[i]);
    }
}

void mixed_call(const std::string& mode) {
    Fixture f(config(mode), mode);
    CHECK(TRITONBACKEND_Initialize(&f.backend) == nullptr);
    CHECK(TRITONBACKEND_ModelInitialize(&f.model) == nullptr);
    CHECK(TRITONBACKEND_ModelInstanceInitialize(&f.instance) == nullptr);
    const exitc::Model model = exitc::Model::load(artifacts() + "/tiny.exitc");

    const auto x3 = rows_of(3, 1), x2 = rows_of(2, 2), x5 = rows_of(5, 3), x9 = rows_of(9, 4), x1 = rows_of(1, 5);
    std::vector<std::unique_ptr<TRITONBACKEND_Request>> owned;
    owned.push_back(request(x3, 3));                                // 0 good
    owned.push_back(request(x2, 2, 1, TRITONSERVER_TYPE_FP64));     // 1 wrong dtype
    owned.push_back(request(x5, 5, 3));                             // 2 good, 3 buffers
    owned.push_back(request(x9, 9));                                // 3 over max_batch_size
    owned.push_back(request(x2, 2, 1, TRITONSERVER_TYPE_FP32, "y")); // 4 unknown / missing input
    owned.push_back(request(rows_of(2, 6), 1));                     // 5 wrong shape [1, 8]
    owned.push_back(request(x1, 1));                                // 6 good, only exitc_exit_index
    owned.back()->requested_outputs = {"exitc_exit_index"};
    owned.push_back(request(x1, 1));                                // 7 unknown output requested
    owned.back()->requested_outputs = {"nope"};
    owned.push_back(std::make_unique<TRITONBACKEND_Request>());     // 8 no inputs at all
    std::vector<TRITONBACKEND_Request*> rs;
    for (auto& r : owned) rs.push_back(r.get());
    CHECK(TRITONBACKEND_ModelInstanceExecute(&f.instance, rs.data(), static_cast<uint32_t>(rs.size())) == nullptr);
    wait_released(rs);

    check_success(*rs[0], model, x3, 3, "good request 0");
    check_error(*rs[1], "datatype FP64, expected FP32", "wrong dtype");
    check_success(*rs[2], model, x5, 5, "good request with 3 buffers");
    check_error(*rs[3], "batch size 9, over max_batch_size 8", "batch over the limit");
    check_error(*rs[4], "unexpected input 'y'", "unknown input");
    check_error(*rs[5], "dim 1 must be 4", "wrong shape");
    check_success(*rs[6], model, x1, 1, "only exitc_exit_index requested", false);
    check_error(*rs[7], "unknown output 'nope'", "unknown output");
    check_error(*rs[8], "missing input 'x'", "no inputs");

    // Metrics: the 9 good rows (3 + 5 + 1), counted per exit.
    CHECK_EQ(mock::metric_value("exitc_rows_total", {{"model", "tiny"}}), 9.0);
    CHECK(mock::metric_value("exitc_engine_seconds_total", {{"model", "tiny"}}) > 0.0);
    if (mode == "continuous") {
        CHECK(mock::metric_value("exitc_segment_runs_total", {{"model", "tiny"}, {"segment", "0"}}) >= 3.0);
        CHECK_EQ(mock::metric_value("exitc_segment_rows_total", {{"model", "tiny"}, {"segment", "0"}}), 9.0);
    }

    CHECK(TRITONBACKEND_ModelInstanceFinalize(&f.instance) == nullptr);
    CHECK(TRITONBACKEND_ModelFinalize(&f.model) == nullptr);
    CHECK(TRITONBACKEND_Finalize(&f.backend) == nullptr);
}

}  // namespace

EXITC_TEST(plain_mixed_call) { mixed_call("plain"); }
EXITC_TEST(continuous_mixed_call) { mixed_call("continuous"); }

EXITC_TEST(continuous_many_calls_then_unload_answers_everything) {
    Fixture f(config("continuous"), "unload");
    CHECK(TRITONBACKEND_Initialize(&f.backend) == nullptr);
    CHECK(TRITONBACKEND_ModelInitialize(&f.model) == nullptr);
    CHECK(TRITONBACKEND_ModelInstanceInitialize(&f.instance) == nullptr);
    const exitc::Model model = exitc::Model::load(artifacts() + "/tiny.exitc");
    std::vector<std::vector<float>> xs;
    std::vector<int64_t> rows;
    std::vector<std::unique_ptr<TRITONBACKEND_Request>> owned;
    std::vector<TRITONBACKEND_Request*> all;
    for (int call = 0; call < 20; ++call) {
        std::vector<TRITONBACKEND_Request*> rs;
        for (int k = 0; k < 3; ++k) {
            const int64_t n = 1 + (call * 3 + k) % 8;
            xs.push_back(rows_of(n, 100 + call * 3 + k));
            rows.push_back(n);
            owned.push_back(request(xs.back(), n));
            rs.push_back(owned.back().get());
            all.push_back(owned.back().get());
        }
        CHECK(TRITONBACKEND_ModelInstanceExecute(&f.instance, rs.data(), static_cast<uint32_t>(rs.size())) == nullptr);
    }
    // Unload right away: finalize must answer every queued request before returning.
    CHECK(TRITONBACKEND_ModelInstanceFinalize(&f.instance) == nullptr);
    for (std::size_t i = 0; i < all.size(); ++i) check_success(*all[i], model, xs[i], rows[i], "queued request");
    CHECK(TRITONBACKEND_ModelFinalize(&f.model) == nullptr);
    CHECK(TRITONBACKEND_Finalize(&f.backend) == nullptr);
}

EXITC_TEST(metrics_disabled_still_serves) {
    mock::set_metrics_enabled(false);
    Fixture f(config("plain"), "nometrics");
    CHECK(TRITONBACKEND_Initialize(&f.backend) == nullptr);
    CHECK(TRITONBACKEND_ModelInitialize(&f.model) == nullptr);
    CHECK(TRITONBACKEND_ModelInstanceInitialize(&f.instance) == nullptr);
    const exitc::Model model = exitc::Model::load(artifacts() + "/tiny.exitc");
    const auto x = rows_of(4, 9);
    auto r = request(x, 4);
    TRITONBACKEND_Request* rp = r.get();
    CHECK(TRITONBACKEND_ModelInstanceExecute(&f.instance, &rp, 1) == nullptr);
    check_success(*r, model, x, 4, "without metrics");
    CHECK(TRITONBACKEND_ModelInstanceFinalize(&f.instance) == nullptr);
    CHECK(TRITONBACKEND_ModelFinalize(&f.model) == nullptr);
    CHECK(TRITONBACKEND_Finalize(&f.backend) == nullptr);
    mock::set_metrics_enabled(true);
}

EXITC_TEST(api_major_mismatch_is_refused) {
    TRITONBACKEND_Backend b;
    mock::set_api_version(exitc_triton::kBackendApiMajor + 1, 0);
    TRITONSERVER_Error* e = TRITONBACKEND_Initialize(&b);
    mock::set_api_version(exitc_triton::kBackendApiMajor, exitc_triton::kBackendApiMinor);
    CHECK(e != nullptr);
    CHECK(e->code == TRITONSERVER_ERROR_UNSUPPORTED);
    CHECK(e->message.find("backend API version mismatch") != std::string::npos);
    TRITONSERVER_ErrorDelete(e);
    mock::set_api_version(exitc_triton::kBackendApiMajor, exitc_triton::kBackendApiMinor + 3);  // newer minor: fine
    e = TRITONBACKEND_Initialize(&b);
    mock::set_api_version(exitc_triton::kBackendApiMajor, exitc_triton::kBackendApiMinor);
    CHECK(e == nullptr);
    CHECK(TRITONBACKEND_Finalize(&b) == nullptr);
}

EXITC_TEST(bad_configs_are_refused_with_the_field) {
    TRITONBACKEND_Backend b;
    CHECK(TRITONBACKEND_Initialize(&b) == nullptr);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {config("plain", "[5]"), "input 'x' has dims [5], the artifact declares [4]"},
        {config("sideways"), "parameter mode = 'sideways'"},
        {R"({"name":"tiny","backend":"exitc","max_batch_size":0,"input":[],"output":[]})", "max_batch_size must be at least 1"},
        {R"({"name":"tiny","backend":"onnxruntime","max_batch_size":4})", "backend is 'onnxruntime', expected 'exitc'"},
    };
    int i = 0;
    for (const auto& c : cases) {
        Fixture f(c.first, "bad" + std::to_string(i++));
        TRITONSERVER_Error* e = TRITONBACKEND_ModelInitialize(&f.model);
        if (!e) EXITC_FAIL("config accepted: " << c.second);
        if (e->message.find(c.second) == std::string::npos) EXITC_FAIL("message '" << e->message << "' lacks '" << c.second << "'");
        CHECK(f.model.state == nullptr);
        TRITONSERVER_ErrorDelete(e);
    }
    CHECK(TRITONBACKEND_Finalize(&b) == nullptr);
}

EXITC_TEST_MAIN
