#pragma once
// Loads the test vectors written by make_tiny_artifact.py (<name>.cases/cases.json + .bin files)
// and compares run results with them.

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "exitc/model.hpp"
#include "test_framework.hpp"

namespace exitc_test {

struct StoredTensor {
    std::string name;
    exitc::DType dtype = exitc::DType::kFloat32;
    std::vector<int64_t> shape;
    std::vector<unsigned char> bytes;

    exitc::TensorView view() const {
        return exitc::TensorView{dtype, exitc::Shape(shape), bytes.data()};
    }
};

struct Case {
    std::string name;
    int64_t batch = 0;
    std::vector<StoredTensor> inputs;
    std::vector<StoredTensor> outputs;
    StoredTensor exit_index;

    std::vector<exitc::NamedTensorView> feeds() const {
        std::vector<exitc::NamedTensorView> out;
        for (const auto& t : inputs) out.push_back({t.name, t.view()});
        return out;
    }
    const int64_t* expected_exit_index() const { return reinterpret_cast<const int64_t*>(exit_index.bytes.data()); }
};

inline StoredTensor read_stored(const std::string& dir, const nlohmann::json& j) {
    StoredTensor t;
    t.name = j.at("name").get<std::string>();
    t.dtype = *exitc::parse_dtype(j.at("dtype").get<std::string>());
    t.shape = j.at("shape").get<std::vector<int64_t>>();
    std::ifstream in(dir + "/" + j.at("file").get<std::string>(), std::ios::binary);
    if (!in) EXITC_FAIL("cannot read " << dir << "/" << j.at("file").get<std::string>());
    t.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    return t;
}

inline std::vector<Case> load_cases(const std::string& cases_dir) {
    std::ifstream in(cases_dir + "/cases.json");
    if (!in) EXITC_FAIL("cannot read " << cases_dir << "/cases.json (did make_tiny_artifact.py run?)");
    const auto root = nlohmann::json::parse(in);
    std::vector<Case> cases;
    for (const auto& jc : root.at("cases")) {
        Case c;
        c.name = jc.at("name").get<std::string>();
        c.batch = jc.at("batch").get<int64_t>();
        for (const auto& t : jc.at("inputs")) c.inputs.push_back(read_stored(cases_dir, t));
        for (const auto& t : jc.at("outputs")) c.outputs.push_back(read_stored(cases_dir, t));
        c.exit_index = read_stored(cases_dir, jc.at("exit_index"));
        cases.push_back(std::move(c));
    }
    return cases;
}

// Compares a run result with the stored expectation (float outputs within `tolerance`).
inline void expect_matches(const Case& c, const exitc::RunResult& result, float tolerance = 1e-4f) {
    CHECK_EQ(result.exit_index.size(), static_cast<std::size_t>(c.batch));
    for (int64_t r = 0; r < c.batch; ++r)
        if (result.exit_index[static_cast<std::size_t>(r)] != c.expected_exit_index()[r])
            EXITC_FAIL(c.name << ": row " << r << " exit " << result.exit_index[static_cast<std::size_t>(r)]
                              << ", expected " << c.expected_exit_index()[r]);
    for (const auto& expected : c.outputs) {
        const exitc::Tensor& got = result.output(expected.name);
        if (got.shape() != exitc::Shape(expected.shape))
            EXITC_FAIL(c.name << ": output " << expected.name << " shape " << got.shape().to_string());
        const auto* want = reinterpret_cast<const float*>(expected.bytes.data());
        const float* have = got.as<float>();
        for (int64_t i = 0; i < got.num_elements(); ++i)
            if (!(std::fabs(want[i] - have[i]) <= tolerance))
                EXITC_FAIL(c.name << ": output " << expected.name << "[" << i << "] = " << have[i] << ", expected "
                                  << want[i]);
    }
}

}  // namespace exitc_test
