// SegmentExecutor on ONNX Runtime's CPU provider. Sessions are configured like the Python side
// (exitc/backends/ort.py): sequential execution, all graph optimizations, no thread spinning,
// intra-op threads = EXITC_THREADS or the CPUs this process may use, inter-op threads = 1.

#include <sched.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <onnxruntime_cxx_api.h>

#include "exitc/error.hpp"
#include "exitc/executor.hpp"

namespace exitc {
namespace {

// One Ort::Env per process: ORT wants a single environment, and it must outlive every session.
std::shared_ptr<Ort::Env> shared_env() {
    static std::mutex mutex;
    static std::weak_ptr<Ort::Env> cached;
    std::lock_guard<std::mutex> lock(mutex);
    auto env = cached.lock();
    if (!env) {
        env = std::make_shared<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "exitc");
        cached = env;
    }
    return env;
}

int default_intra_op_threads() {
    if (const char* env = std::getenv("EXITC_THREADS")) {
        const int n = std::atoi(env);
        if (n > 0) return n;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    const unsigned hw = std::thread::hardware_concurrency();
    return hw > 0 ? static_cast<int>(hw) : 1;
}

ONNXTensorElementDataType to_onnx(DType dtype) { return static_cast<ONNXTensorElementDataType>(dtype); }

class OrtOutputStorage final : public OutputStorage {
public:
    explicit OrtOutputStorage(std::vector<Ort::Value> values) : values(std::move(values)) {}
    std::vector<Ort::Value> values;
};

class OnnxRuntimeCpuExecutor final : public SegmentExecutor {
public:
    OnnxRuntimeCpuExecutor(const std::string& path, const ExecutorOptions& options)
        : env_(shared_env()), label_(options.label.empty() ? path : options.label),
          memory_info_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
        try {
            Ort::SessionOptions so;
            so.SetIntraOpNumThreads(options.intra_op_threads > 0 ? options.intra_op_threads : default_intra_op_threads());
            so.SetInterOpNumThreads(options.inter_op_threads > 0 ? options.inter_op_threads : 1);
            so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
            so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
            so.AddConfigEntry("session.intra_op.allow_spinning", options.allow_spinning ? "1" : "0");
            so.AddConfigEntry("session.inter_op.allow_spinning", options.allow_spinning ? "1" : "0");
            so.SetLogSeverityLevel(3);
            session_ = std::make_unique<Ort::Session>(*env_, path.c_str(), so);
            Ort::AllocatorWithDefaultOptions allocator;
            for (std::size_t i = 0; i < session_->GetInputCount(); ++i)
                input_names_.push_back(session_->GetInputNameAllocated(i, allocator).get());
            for (std::size_t i = 0; i < session_->GetOutputCount(); ++i)
                output_names_.push_back(session_->GetOutputNameAllocated(i, allocator).get());
        } catch (const Ort::Exception& e) {
            throw Error(ErrorCode::kBackend, label_ + ": ONNX Runtime cannot load the model: " + first_line(e.what()));
        }
    }

    const std::vector<std::string>& input_names() const override { return input_names_; }
    const std::vector<std::string>& output_names() const override { return output_names_; }

    ExecutorOutputs run(const std::vector<const char*>& feed_names, const std::vector<TensorView>& feeds,
                        const std::vector<const char*>& output_names) const override {
        try {
            std::vector<Ort::Value> inputs;
            inputs.reserve(feeds.size());
            for (const TensorView& feed : feeds) {
                // ORT only reads inputs; the C API wants a mutable pointer regardless.
                inputs.push_back(Ort::Value::CreateTensor(memory_info_, const_cast<void*>(feed.data), feed.byte_size(),
                                                          feed.shape.data(), feed.shape.rank(), to_onnx(feed.dtype)));
            }
            auto storage = std::make_unique<OrtOutputStorage>(
                session_->Run(Ort::RunOptions{nullptr}, feed_names.data(), inputs.data(), inputs.size(),
                              output_names.data(), output_names.size()));
            ExecutorOutputs out;
            out.tensors.reserve(storage->values.size());
            for (std::size_t i = 0; i < storage->values.size(); ++i) {
                Ort::Value& value = storage->values[i];
                if (!value.IsTensor())
                    throw Error(ErrorCode::kBackend, label_ + ": output '" + output_names[i] + "' is not a tensor");
                const auto info = value.GetTensorTypeAndShapeInfo();
                const int32_t code = static_cast<int32_t>(info.GetElementType());
                if (!is_known_dtype(code))
                    throw Error(ErrorCode::kBackend, label_ + ": output '" + output_names[i] +
                                                         "' has unsupported element type " + std::to_string(code));
                const std::vector<int64_t> shape = info.GetShape();
                out.tensors.push_back(TensorView{static_cast<DType>(code), Shape(shape), value.GetTensorRawData()});
            }
            out.storage = std::move(storage);
            return out;
        } catch (const Ort::Exception& e) {
            throw Error(ErrorCode::kBackend, label_ + ": ONNX Runtime run failed: " + first_line(e.what()));
        }
    }

private:
    static std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

    std::shared_ptr<Ort::Env> env_;  // declared first: destroyed after the session
    std::string label_;
    Ort::MemoryInfo memory_info_;
    std::unique_ptr<Ort::Session> session_;
    std::vector<std::string> input_names_;
    std::vector<std::string> output_names_;
};

}  // namespace

std::unique_ptr<SegmentExecutor> make_onnxruntime_cpu_executor(const std::string& path,
                                                               const ExecutorOptions& options) {
    return std::make_unique<OnnxRuntimeCpuExecutor>(path, options);
}

}  // namespace exitc
