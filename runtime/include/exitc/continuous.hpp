#pragma once
// exitc::ContinuousBatcher: continuous depth-wise batching of one loaded Model.
//
// Instead of running each call's batch through all segments before taking new work, the batcher
// keeps one queue of rows per segment. submit() puts a call's rows into segment 0's queue; one
// worker thread repeatedly picks a queue, runs that segment on up to `max_batch` of its rows, sends
// the rows that left at the segment's exit (or finished the last segment) to their call's result,
// and moves the surviving rows, with their carried tensors, to the next segment's queue. Rows of
// different calls therefore share segment runs at every depth: rows that exit free their place in
// the batch and newer rows fill it.
//
// Which queue runs next (Policy):
//   - a queue whose front row was submitted longer than `max_wait` ago (the latency bound) goes
//     first (the one whose front row was submitted earliest). The wait counts from submission,
//     not from arrival in the queue: counted per queue, a row that runs to the end could wait
//     the bound once per segment (16-client closed loop: p99 1.4-1.8x plain mode's; from
//     submission 1.2-1.3x); from submission, a row once late stays first in line at every later
//     segment;
//   - else kFullest: the queue fullest relative to its ideal batch (ties: the deeper one), the
//     ideal batch of segment s being the rows a max_batch run of segment 0 sends to s at the
//     survival rates observed so far (segment 0: max_batch);
//     kDeepest: the deepest non-empty queue (finishes started rows first).
//
// Results equal Model::run's for every row (same segments, same thresholds, the same per-row
// semantics: outputs no row of a call produced are zeros). A call's callback runs exactly once,
// on the worker thread, when the call's last row finishes (or with an error: an engine failure
// fails every call with a row in that segment run). Calls with 0 rows complete inside submit().
// submit() blocks while more than `max_pending_rows` rows are in the queues (back-pressure).
// The destructor finishes all submitted work, then joins the worker.

#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <vector>

#include "exitc/model.hpp"

namespace exitc {

struct ContinuousBatcherOptions {
    enum class Policy { kFullest, kDeepest };
    std::size_t max_batch = 64;                       // rows per segment run (>= 1)
    std::chrono::microseconds max_wait{5000};         // latency bound per row, from submission
    std::size_t max_pending_rows = 1024;              // submit() blocks above this (>= max_batch)
    Policy policy = Policy::kFullest;
};

struct ContinuousStats {
    std::vector<uint64_t> rows_per_exit;    // as ExitStats (num_exits + 1 entries)
    std::vector<uint64_t> segment_runs;     // per segment: runs
    std::vector<uint64_t> segment_rows;     // per segment: rows over all runs (mean batch = rows / runs)
    std::vector<uint64_t> queue_rows;       // per segment: rows waiting now
    uint64_t calls_done = 0;                // calls whose callback ran (success or error)
    uint64_t calls_failed = 0;
    // Worker time, std::chrono::steady_clock: engine = inside Model::run_segment, overhead = the
    // rest of the worker's busy time (picking, gathering rows, exit decisions, scatter, callbacks
    // are excluded: their time is the caller's).
    double engine_seconds = 0.0;
    double overhead_seconds = 0.0;
};

// What the worker knows of one segment's queue when it picks the next segment to run.
struct QueueView {
    std::size_t rows = 0;                                    // rows waiting
    std::chrono::steady_clock::time_point front_submitted;   // when the front row's call was submitted
    uint64_t rows_run = 0;                                   // rows this segment has run so far
};

// The queue the worker runs next under `options` (the rule above); queues.size() if all are empty.
std::size_t pick_queue(const std::vector<QueueView>& queues, std::chrono::steady_clock::time_point now,
                       const ContinuousBatcherOptions& options);

class ContinuousBatcher {
public:
    // error == nullptr on success; then `result` holds the call's outputs and exit indices.
    using Callback = std::function<void(std::exception_ptr error, RunResult result)>;

    // `model` must outlive the batcher. Throws Error(kInvalidArgument) on bad options.
    explicit ContinuousBatcher(const Model& model, ContinuousBatcherOptions options = {});
    ~ContinuousBatcher();
    ContinuousBatcher(const ContinuousBatcher&) = delete;
    ContinuousBatcher& operator=(const ContinuousBatcher&) = delete;

    // Validates the feeds like Model::run (throws Error(kInvalidArgument) synchronously, nothing
    // is queued), copies them, and queues their rows. `done` must not throw; it must not call
    // submit() on this batcher (it runs on the worker thread).
    void submit(const std::vector<NamedTensorView>& inputs, Callback done);
    // Convenience: the result as a future (errors rethrown by get()).
    std::future<RunResult> submit(const std::vector<NamedTensorView>& inputs);

    ContinuousStats stats() const;
    const ContinuousBatcherOptions& options() const noexcept;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace exitc
