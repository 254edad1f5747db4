#pragma once
// exitc::Model: a loaded compiled artifact. One Model serves concurrent run() calls from any
// number of threads; per-call scratch memory comes from a pool, so steady-state calls do not
// allocate compaction buffers.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "exitc/executor.hpp"
#include "exitc/manifest.hpp"
#include "exitc/tensor.hpp"

namespace exitc {

struct ModelOptions {
    ExecutorOptions executor;        // engine session settings (threads, spinning)
    bool use_conditional = true;     // batch-1 calls use conditional.onnx when the artifact has it
    // No row exits (every head still runs, and conditional.onnx is not used): each row pays what a
    // row that runs to the end pays. For measuring that cost (exitc's verify stage); outputs are
    // then the original's.
    bool full_depth = false;
    // Overrides the engine chosen from the manifest's "backend" (tests, other engines).
    ExecutorFactory executor_factory;
};

struct RunResult {
    std::vector<std::string> output_names;  // the model's outputs, in manifest order
    std::vector<Tensor> outputs;            // outputs[i] is output_names[i]
    std::vector<int64_t> exit_index;        // per row; num_exits() means "ran the whole model"

    // The output with this name; throws Error(kInvalidArgument) if there is none.
    const Tensor& output(const std::string& name) const;
};

struct ExitStats {
    // rows_per_exit[k] rows left at exit k; rows_per_exit[num_exits] ran the whole model.
    std::vector<uint64_t> rows_per_exit;
    uint64_t rows = 0;   // sum of rows_per_exit
    uint64_t calls = 0;  // successful run() calls
    // Time of successful run() calls, summed over calls (and so over threads: with concurrent
    // callers these can exceed wall-clock time), measured with std::chrono::steady_clock.
    //   engine_seconds: inside SegmentExecutor::run (segments, and conditional.onnx at batch 1).
    //   overhead_seconds: the rest of the call inside Model::run, after feed validation: result
    //     setup, workspace lease, feed gathering and checks of engine outputs, exit decisions
    //     (score >= threshold), compaction of carried tensors / inputs / exiting logits, scatter
    //     into the results, zero-filling outputs no row reached, releasing the engine's output
    //     buffers, and the exit statistics update.
    // Not counted in either: feed validation (names, dtypes, shapes) and anything in the C ABI /
    // Python wrappers (argument conversion, result conversion).
    double engine_seconds = 0.0;
    double overhead_seconds = 0.0;
};

class Model {
public:
    // Loads <artifact_dir>: parses and validates manifest.json, opens every segment (and
    // conditional.onnx), and checks the graphs' input/output names against the manifest.
    static Model load(const std::string& artifact_dir, const ModelOptions& options = {});

    Model(Model&&) noexcept;
    Model& operator=(Model&&) noexcept;
    ~Model();

    // Runs the early-exit model on one batch. Feeds are matched by name; every manifest input
    // must be present exactly once. Thread-safe.
    RunResult run(const std::vector<NamedTensorView>& inputs) const;

    // Segment-level access for schedulers that batch rows across calls (exitc::ContinuousBatcher).
    // check_feeds: the feed validation of run(); returns the batch size and fills `by_input` with
    // the feeds in manifest input order. Throws Error(kInvalidArgument) like run().
    int64_t check_feeds(const std::vector<NamedTensorView>& inputs, std::vector<TensorView>& by_input) const;
    // run_segment: runs segment `segment`'s graph alone. `feeds[i]` is the value of
    // manifest().segments[segment].inputs[i] (all with the same rows on their batch axes).
    // Outputs, in order: the segment's carry_out, then (logits, score) for an exit segment or the
    // model outputs for the last one; counts, dtypes and row counts are checked (Error(kBackend)).
    // Thread-safe; not counted in stats().
    ExecutorOutputs run_segment(std::size_t segment, const std::vector<TensorView>& feeds) const;

    const Manifest& manifest() const noexcept;
    const std::string& artifact_dir() const noexcept;
    std::size_t num_exits() const noexcept;
    bool has_conditional() const noexcept;

    // Snapshot of the exit and timing statistics since load (or the last reset). Thread-safe;
    // fields are read one by one, so a snapshot taken during concurrent runs may mix calls.
    ExitStats stats() const;
    void reset_stats();

private:
    struct Impl;
    explicit Model(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace exitc
