// The TRITONBACKEND_* entry points of libtriton_exitc.so. Each one is an exception barrier
// (common.hpp: guarded): nothing is thrown across the C ABI; failures become TRITONSERVER_Errors.

#include <memory>

#include "common.hpp"
#include "instance_state.hpp"
#include "metrics.hpp"
#include "model_state.hpp"

using namespace exitc_triton;

extern "C" {

TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend* backend) {
    return guarded("TRITONBACKEND_Initialize", [&] {
        const char* name = nullptr;
        check(TRITONBACKEND_BackendName(backend, &name), "TRITONBACKEND_BackendName");
        uint32_t major = 0, minor = 0;
        check(TRITONBACKEND_ApiVersion(&major, &minor), "TRITONBACKEND_ApiVersion");
        if (major != kBackendApiMajor) {
            EXITC_LOG(TRITONSERVER_LOG_ERROR, "refusing to load: the server's backend API is " << major << "." << minor
                                              << ", this backend was written for " << kBackendApiMajor << "."
                                              << kBackendApiMinor << " (Triton " << kCheckedRelease << ")");
            fail(TRITONSERVER_ERROR_UNSUPPORTED,
                 "exitc backend: backend API version mismatch: server " + std::to_string(major) + "." +
                     std::to_string(minor) + ", backend built for " + std::to_string(kBackendApiMajor) + "." +
                     std::to_string(kBackendApiMinor));
        }
        if (minor < kBackendApiMinor)
            EXITC_LOG(TRITONSERVER_LOG_WARN, "server backend API " << major << "." << minor << " is older than "
                                             << kBackendApiMajor << "." << kBackendApiMinor
                                             << " (checked against Triton " << kCheckedRelease << ")");
        set_metric_families(std::make_unique<MetricFamilies>());
        EXITC_LOG(TRITONSERVER_LOG_INFO, "backend '" << name << "' initialised (backend API " << major << "." << minor
                                         << "; declarations checked against " << kBackendApiMajor << "."
                                         << kBackendApiMinor << ", Triton " << kCheckedRelease << ")");
    });
}

TRITONSERVER_Error* TRITONBACKEND_Finalize(TRITONBACKEND_Backend*) {
    return guarded("TRITONBACKEND_Finalize", [&] { set_metric_families(nullptr); });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
    return guarded("TRITONBACKEND_ModelInitialize", [&] {
        std::unique_ptr<ModelState> state = ModelState::create(model);
        check(TRITONBACKEND_ModelSetState(model, state.get()), "TRITONBACKEND_ModelSetState");
        state.release();  // owned by Triton's model until ModelFinalize
    });
}

TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
    return guarded("TRITONBACKEND_ModelFinalize", [&] {
        void* state = nullptr;
        check(TRITONBACKEND_ModelState(model, &state), "TRITONBACKEND_ModelState");
        delete static_cast<ModelState*>(state);
    });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
    return guarded("TRITONBACKEND_ModelInstanceInitialize", [&] {
        TRITONBACKEND_Model* model = nullptr;
        check(TRITONBACKEND_ModelInstanceModel(instance, &model), "TRITONBACKEND_ModelInstanceModel");
        void* model_state = nullptr;
        check(TRITONBACKEND_ModelState(model, &model_state), "TRITONBACKEND_ModelState");
        auto state = std::make_unique<ModelInstanceState>(*static_cast<ModelState*>(model_state), instance);
        check(TRITONBACKEND_ModelInstanceSetState(instance, state.get()), "TRITONBACKEND_ModelInstanceSetState");
        state.release();
    });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
    return guarded("TRITONBACKEND_ModelInstanceFinalize", [&] {
        void* state = nullptr;
        check(TRITONBACKEND_ModelInstanceState(instance, &state), "TRITONBACKEND_ModelInstanceState");
        delete static_cast<ModelInstanceState*>(state);
    });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                       TRITONBACKEND_Request** requests, const uint32_t request_count) {
    // Once the state is found, execute() owns every request (answers and releases each) and so
    // this returns success; an error return would hand the requests back to Triton.
    void* state = nullptr;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceState(instance, &state)) return e;
    if (state == nullptr)
        return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, "exitc backend: instance has no state");
    static_cast<ModelInstanceState*>(state)->execute(requests, request_count);
    return nullptr;
}

}  // extern "C"
