#pragma once
// An in-process stand-in for the parts of Triton's C API that libtriton_exitc.so calls
// (triton_api.hpp), for ctest: models, instances, requests with arbitrary (also malformed)
// inputs, recorded responses / releases / statistics, and metrics. Written for these tests only;
// it mimics the documented behaviour, not Triton's implementation.

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "triton_api.hpp"

struct TRITONSERVER_Error {
    TRITONSERVER_Error_Code code;
    std::string message;
};
struct TRITONSERVER_Message {
    std::string json;
};
struct TRITONSERVER_MetricFamily {
    std::string name;
    TRITONSERVER_MetricKind kind;
};
struct TRITONSERVER_Metric {
    TRITONSERVER_MetricFamily* family;
    std::map<std::string, std::string> labels;
    double value = 0;
};
struct TRITONSERVER_Parameter {
    std::string name, value;
};
struct TRITONBACKEND_Backend {
    std::string name = "exitc";
};
struct TRITONBACKEND_Model {
    std::string name;
    uint64_t version = 1;
    std::string repository;  // the model directory
    std::string config_json;
    void* state = nullptr;
};
struct TRITONBACKEND_ModelInstance {
    TRITONBACKEND_Model* model = nullptr;
    std::string name;
    void* state = nullptr;
};
struct TRITONBACKEND_Input {
    std::string name;
    TRITONSERVER_DataType dtype = TRITONSERVER_TYPE_FP32;
    std::vector<int64_t> shape;
    std::vector<std::vector<unsigned char>> buffers;
};
struct TRITONBACKEND_Output {
    std::string name;
    TRITONSERVER_DataType dtype = TRITONSERVER_TYPE_INVALID;
    std::vector<int64_t> shape;
    std::vector<unsigned char> data;
};
struct TRITONBACKEND_Request {
    std::vector<TRITONBACKEND_Input> inputs;
    std::vector<std::string> requested_outputs;
    // Recorded by the mock (guarded by mock::mutex()):
    int responses = 0;
    int releases = 0;
    int statistics = 0;
    bool stat_success = false;
    std::string error;  // of the response, "" on success
    std::vector<TRITONBACKEND_Output> outputs;
};
struct TRITONBACKEND_Response {
    TRITONBACKEND_Request* request = nullptr;
    std::vector<TRITONBACKEND_Output*> outputs;
    ~TRITONBACKEND_Response() {
        for (auto* o : outputs) delete o;
    }
};

namespace mock {
std::mutex& mutex();
std::condition_variable& released_cv();  // notified on every release
void set_api_version(uint32_t major, uint32_t minor);
bool metrics_enabled();
void set_metrics_enabled(bool on);
// Sum of the values of the metrics of `family` whose labels include `labels`.
double metric_value(const std::string& family, const std::map<std::string, std::string>& labels);
}  // namespace mock
