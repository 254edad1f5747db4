#include "mock_triton.hpp"

#include <cstring>
#include <memory>

namespace mock {
namespace {
uint32_t g_major = exitc_triton::kBackendApiMajor, g_minor = exitc_triton::kBackendApiMinor;
bool g_metrics = true;
std::vector<TRITONSERVER_Metric*>& metrics() {
    static std::vector<TRITONSERVER_Metric*> m;
    return m;
}
}  // namespace
std::mutex& mutex() {
    static std::mutex m;
    return m;
}
std::condition_variable& released_cv() {
    static std::condition_variable cv;
    return cv;
}
void set_api_version(uint32_t major, uint32_t minor) {
    g_major = major;
    g_minor = minor;
}
bool metrics_enabled() { return g_metrics; }
void set_metrics_enabled(bool on) { g_metrics = on; }
double metric_value(const std::string& family, const std::map<std::string, std::string>& labels) {
    std::lock_guard<std::mutex> lock(mutex());
    double total = 0;
    for (const auto* m : metrics()) {
        if (m->family->name != family) continue;
        bool match = true;
        for (const auto& kv : labels) {
            auto it = m->labels.find(kv.first);
            match = match && it != m->labels.end() && it->second == kv.second;
        }
        if (match) total += m->value;
    }
    return total;
}
}  // namespace mock

namespace {
TRITONSERVER_Error* err(TRITONSERVER_Error_Code code, const std::string& m) { return new TRITONSERVER_Error{code, m}; }
}  // namespace

extern "C" {

TRITONSERVER_Error* TRITONSERVER_ErrorNew(TRITONSERVER_Error_Code code, const char* msg) { return err(code, msg); }
void TRITONSERVER_ErrorDelete(TRITONSERVER_Error* e) { delete e; }
const char* TRITONSERVER_ErrorMessage(TRITONSERVER_Error* e) { return e->message.c_str(); }
bool TRITONSERVER_LogIsEnabled(TRITONSERVER_LogLevel) { return false; }
TRITONSERVER_Error* TRITONSERVER_LogMessage(TRITONSERVER_LogLevel, const char*, const int, const char*) { return nullptr; }
TRITONSERVER_Error* TRITONSERVER_MessageSerializeToJson(TRITONSERVER_Message* m, const char** base, size_t* size) {
    *base = m->json.data();
    *size = m->json.size();
    return nullptr;
}
TRITONSERVER_Error* TRITONSERVER_MessageDelete(TRITONSERVER_Message* m) {
    delete m;
    return nullptr;
}

TRITONSERVER_Error* TRITONSERVER_MetricFamilyNew(TRITONSERVER_MetricFamily** f, const TRITONSERVER_MetricKind kind,
                                                 const char* name, const char*) {
    if (!mock::metrics_enabled()) return err(TRITONSERVER_ERROR_UNAVAILABLE, "metrics are disabled");
    *f = new TRITONSERVER_MetricFamily{name, kind};
    return nullptr;
}
TRITONSERVER_Error* TRITONSERVER_MetricFamilyDelete(TRITONSERVER_MetricFamily* f) {
    delete f;
    return nullptr;
}
TRITONSERVER_Error* TRITONSERVER_MetricNew(TRITONSERVER_Metric** m, TRITONSERVER_MetricFamily* f,
                                           const TRITONSERVER_Parameter** labels, const uint64_t n) {
    auto* metric = new TRITONSERVER_Metric{f, {}, 0};
    for (uint64_t i = 0; i < n; ++i) metric->labels[labels[i]->name] = labels[i]->value;
    std::lock_guard<std::mutex> lock(mock::mutex());
    mock::metrics().push_back(metric);
    *m = metric;
    return nullptr;
}
TRITONSERVER_Error* TRITONSERVER_MetricDelete(TRITONSERVER_Metric* m) {
    std::lock_guard<std::mutex> lock(mock::mutex());
    auto& all = mock::metrics();
    for (auto it = all.begin(); it != all.end(); ++it)
        if (*it == m) {
            all.erase(it);
            break;
        }
    delete m;
    return nullptr;
}
TRITONSERVER_Error* TRITONSERVER_MetricIncrement(TRITONSERVER_Metric* m, double v) {
    std::lock_guard<std::mutex> lock(mock::mutex());
    if (m->family->kind != TRITONSERVER_METRIC_KIND_COUNTER) return err(TRITONSERVER_ERROR_UNSUPPORTED, "not a counter");
    if (v < 0) return err(TRITONSERVER_ERROR_INVALID_ARG, "negative increment");
    m->value += v;
    return nullptr;
}
TRITONSERVER_Error* TRITONSERVER_MetricSet(TRITONSERVER_Metric* m, double v) {
    std::lock_guard<std::mutex> lock(mock::mutex());
    if (m->family->kind != TRITONSERVER_METRIC_KIND_GAUGE) return err(TRITONSERVER_ERROR_UNSUPPORTED, "not a gauge");
    m->value = v;
    return nullptr;
}
TRITONSERVER_Parameter* TRITONSERVER_ParameterNew(const char* name, const TRITONSERVER_ParameterType type,
                                                  const void* value) {
    if (type != TRITONSERVER_PARAMETER_STRING) return nullptr;
    return new TRITONSERVER_Parameter{name, static_cast<const char*>(value)};
}
void TRITONSERVER_ParameterDelete(TRITONSERVER_Parameter* p) { delete p; }

TRITONSERVER_Error* TRITONBACKEND_ApiVersion(uint32_t* major, uint32_t* minor) {
    *major = mock::g_major;
    *minor = mock::g_minor;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_BackendName(TRITONBACKEND_Backend* b, const char** name) {
    *name = b->name.c_str();
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelName(TRITONBACKEND_Model* m, const char** name) {
    *name = m->name.c_str();
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelVersion(TRITONBACKEND_Model* m, uint64_t* v) {
    *v = m->version;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelRepository(TRITONBACKEND_Model* m, TRITONBACKEND_ArtifactType* t, const char** loc) {
    *t = TRITONBACKEND_ARTIFACT_FILESYSTEM;
    *loc = m->repository.c_str();
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelConfig(TRITONBACKEND_Model* m, const uint32_t version, TRITONSERVER_Message** msg) {
    if (version != 1) return err(TRITONSERVER_ERROR_UNSUPPORTED, "config version");
    *msg = new TRITONSERVER_Message{m->config_json};
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelSetState(TRITONBACKEND_Model* m, void* s) {
    m->state = s;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelState(TRITONBACKEND_Model* m, void** s) {
    *s = m->state;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceModel(TRITONBACKEND_ModelInstance* i, TRITONBACKEND_Model** m) {
    *m = i->model;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceName(TRITONBACKEND_ModelInstance* i, const char** name) {
    *name = i->name.c_str();
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceSetState(TRITONBACKEND_ModelInstance* i, void* s) {
    i->state = s;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceState(TRITONBACKEND_ModelInstance* i, void** s) {
    *s = i->state;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceReportStatistics(TRITONBACKEND_ModelInstance*, TRITONBACKEND_Request* r,
                                                                const bool success, const uint64_t a, const uint64_t b,
                                                                const uint64_t c, const uint64_t d) {
    std::lock_guard<std::mutex> lock(mock::mutex());
    if (r->releases > 0) return err(TRITONSERVER_ERROR_INTERNAL, "statistics after release");
    if (!(a <= b && b <= c && c <= d)) return err(TRITONSERVER_ERROR_INVALID_ARG, "timestamps out of order");
    ++r->statistics;
    r->stat_success = success;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ModelInstanceReportBatchStatistics(TRITONBACKEND_ModelInstance*, const uint64_t,
                                                                     const uint64_t, const uint64_t, const uint64_t,
                                                                     const uint64_t) {
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_RequestId(TRITONBACKEND_Request*, const char** id) {
    *id = "";
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_RequestInputCount(TRITONBACKEND_Request* r, uint32_t* n) {
    *n = static_cast<uint32_t>(r->inputs.size());
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_RequestInputName(TRITONBACKEND_Request* r, const uint32_t i, const char** name) {
    if (i >= r->inputs.size()) return err(TRITONSERVER_ERROR_INVALID_ARG, "input index");
    *name = r->inputs[i].name.c_str();
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_RequestInput(TRITONBACKEND_Request* r, const char* name, TRITONBACKEND_Input** in) {
    for (auto& i : r->inputs)
        if (i.name == name) {
            *in = &i;
            return nullptr;
        }
    return err(TRITONSERVER_ERROR_INVALID_ARG, std::string("no input ") + name);
}
TRITONSERVER_Error* TRITONBACKEND_RequestOutputCount(TRITONBACKEND_Request* r, uint32_t* n) {
    *n = static_cast<uint32_t>(r->requested_outputs.size());
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_RequestOutputName(TRITONBACKEND_Request* r, const uint32_t i, const char** name) {
    if (i >= r->requested_outputs.size()) return err(TRITONSERVER_ERROR_INVALID_ARG, "output index");
    *name = r->requested_outputs[i].c_str();
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_RequestRelease(TRITONBACKEND_Request* r, uint32_t flags) {
    {
        std::lock_guard<std::mutex> lock(mock::mutex());
        if (flags != TRITONSERVER_REQUEST_RELEASE_ALL) return err(TRITONSERVER_ERROR_INVALID_ARG, "flags");
        ++r->releases;
    }
    mock::released_cv().notify_all();
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_InputProperties(TRITONBACKEND_Input* in, const char** name, TRITONSERVER_DataType* dt,
                                                  const int64_t** shape, uint32_t* dims, uint64_t* bytes,
                                                  uint32_t* buffers) {
    if (name) *name = in->name.c_str();
    if (dt) *dt = in->dtype;
    if (shape) *shape = in->shape.data();
    if (dims) *dims = static_cast<uint32_t>(in->shape.size());
    uint64_t total = 0;
    for (const auto& b : in->buffers) total += b.size();
    if (bytes) *bytes = total;
    if (buffers) *buffers = static_cast<uint32_t>(in->buffers.size());
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_InputBuffer(TRITONBACKEND_Input* in, const uint32_t i, const void** buf, uint64_t* size,
                                              TRITONSERVER_MemoryType* mem, int64_t* id) {
    if (i >= in->buffers.size()) return err(TRITONSERVER_ERROR_INVALID_ARG, "buffer index");
    *buf = in->buffers[i].data();
    *size = in->buffers[i].size();
    *mem = TRITONSERVER_MEMORY_CPU;
    *id = 0;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ResponseNew(TRITONBACKEND_Response** resp, TRITONBACKEND_Request* r) {
    std::lock_guard<std::mutex> lock(mock::mutex());
    if (r->releases > 0) return err(TRITONSERVER_ERROR_INTERNAL, "response for a released request");
    *resp = new TRITONBACKEND_Response{r, {}};
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ResponseDelete(TRITONBACKEND_Response* resp) {
    delete resp;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ResponseOutput(TRITONBACKEND_Response* resp, TRITONBACKEND_Output** out, const char* name,
                                                 const TRITONSERVER_DataType dt, const int64_t* shape, const uint32_t dims) {
    auto* o = new TRITONBACKEND_Output{name, dt, std::vector<int64_t>(shape, shape + dims), {}};
    resp->outputs.push_back(o);
    *out = o;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_OutputBuffer(TRITONBACKEND_Output* o, void** buf, const uint64_t size,
                                               TRITONSERVER_MemoryType* mem, int64_t* id) {
    o->data.assign(size, 0xAB);
    *buf = o->data.data();
    *mem = TRITONSERVER_MEMORY_CPU;
    *id = 0;
    return nullptr;
}
TRITONSERVER_Error* TRITONBACKEND_ResponseSend(TRITONBACKEND_Response* resp, const uint32_t flags, TRITONSERVER_Error* e) {
    std::unique_ptr<TRITONBACKEND_Response> owned(resp);
    std::lock_guard<std::mutex> lock(mock::mutex());
    TRITONBACKEND_Request* r = resp->request;
    if (flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL) return err(TRITONSERVER_ERROR_INVALID_ARG, "flags");
    ++r->responses;
    r->error = e ? e->message : "";
    r->outputs.clear();
    if (!e)
        for (auto* o : resp->outputs) r->outputs.push_back(*o);
    return nullptr;
}

}  // extern "C"
