#pragma once
// The engine seam. A SegmentExecutor runs one ONNX-defined graph (a segment, or the conditional
// single-graph form) on dense batch-major tensors. The core (compaction, exit masks, scatter)
// never sees engine types, so another engine (TensorRT, CUDA EP) is one more implementation of
// this interface plus a factory registered under its manifest "backend" name.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "exitc/tensor.hpp"

namespace exitc {

struct ExecutorOptions {
    int intra_op_threads = 0;      // 0: EXITC_THREADS env, else the CPUs this process may use
    int inter_op_threads = 1;
    bool allow_spinning = false;   // spinning doubled latency on small shared VMs (see Python side)
    std::string label;             // names the graph in error messages (e.g. "segments/seg_0.onnx")
};

// Keeps alive whatever memory backs a run's output views (engine-owned values, device buffers).
class OutputStorage {
public:
    virtual ~OutputStorage() = default;
};

struct ExecutorOutputs {
    std::vector<TensorView> tensors;         // in the order of the requested output names
    std::unique_ptr<OutputStorage> storage;  // owns tensors' memory
};

class SegmentExecutor {
public:
    virtual ~SegmentExecutor() = default;

    virtual const std::vector<std::string>& input_names() const = 0;
    virtual const std::vector<std::string>& output_names() const = 0;

    // Runs the graph. `feeds[i]` is the value for input_names()[i]'s counterpart named by
    // `feed_names[i]`; `outputs` are the requested output names. Must be safe to call
    // concurrently from many threads on one executor.
    virtual ExecutorOutputs run(const std::vector<const char*>& feed_names,
                                const std::vector<TensorView>& feeds,
                                const std::vector<const char*>& output_names) const = 0;
};

// Creates an executor for one graph file. Throws exitc::Error on failure.
using ExecutorFactory =
    std::function<std::unique_ptr<SegmentExecutor>(const std::string& path, const ExecutorOptions&)>;

// The ONNX Runtime CPU executor (manifest backend "onnxruntime-cpu").
std::unique_ptr<SegmentExecutor> make_onnxruntime_cpu_executor(const std::string& path,
                                                               const ExecutorOptions& options);

}  // namespace exitc
