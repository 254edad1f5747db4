// exitc::ContinuousBatcher: every call's result equals Model::run's (exit index exactly, outputs
// within float tolerance: rows run in other batch compositions), whatever the interleaving of
// calls from many threads, the policy, max_batch and the latency bound; each callback runs once;
// bad feeds throw synchronously; an engine failure fails the calls involved and the batcher
// keeps serving. argv[1]: test artifact directory (make_tiny_artifact.py).

#include <atomic>
#include <cmath>
#include <future>
#include <thread>
#include <vector>

#include "exitc/continuous.hpp"
#include "exitc/error.hpp"
#include "test_cases.hpp"
#include "test_framework.hpp"

using namespace exitc;

namespace {

std::string dir() { return exitc_test::args().at(0); }

// Equal up to float rounding (the batcher runs each row in a batch of another composition).
bool close(const RunResult& a, const RunResult& b, std::string& why) {
    if (a.exit_index != b.exit_index) {
        why = "exit_index differs";
        return false;
    }
    if (a.outputs.size() != b.outputs.size() || a.output_names != b.output_names) {
        why = "outputs differ";
        return false;
    }
    for (std::size_t i = 0; i < a.outputs.size(); ++i) {
        if (a.outputs[i].shape() != b.outputs[i].shape() || a.outputs[i].dtype() != b.outputs[i].dtype()) {
            why = a.output_names[i] + ": shape " + a.outputs[i].shape().to_string() + " vs " +
                  b.outputs[i].shape().to_string();
            return false;
        }
        const float* x = a.outputs[i].as<float>();
        const float* y = b.outputs[i].as<float>();
        for (int64_t e = 0; e < a.outputs[i].num_elements(); ++e)
            if (!(std::fabs(x[e] - y[e]) <= 1e-5f + 1e-5f * std::fabs(y[e]))) {
                why = a.output_names[i] + "[" + std::to_string(e) + "]: " + std::to_string(x[e]) + " vs " +
                      std::to_string(y[e]);
                return false;
            }
    }
    return true;
}

void run_concurrently(const std::string& name, ContinuousBatcherOptions options, int threads, int rounds) {
    ModelOptions mo;
    mo.executor.intra_op_threads = 1;
    const Model model = Model::load(dir() + "/" + name + ".exitc", mo);
    const auto cases = exitc_test::load_cases(dir() + "/" + name + ".cases");
    std::vector<RunResult> reference;
    for (const auto& c : cases) reference.push_back(model.run(c.feeds()));
    std::atomic<int> mismatches{0};
    std::atomic<uint64_t> callbacks{0}, rows{0};
    std::string first_why;
    std::mutex why_mutex;
    {
        ContinuousBatcher batcher(model, options);
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                for (int r = 0; r < rounds; ++r) {
                    std::vector<std::future<RunResult>> futures;
                    std::vector<std::size_t> which;
                    // Several calls in flight per thread, in a thread-specific order.
                    for (std::size_t k = 0; k < cases.size(); k += 3) {
                        const std::size_t i = (k + static_cast<std::size_t>(t) * 7 + static_cast<std::size_t>(r)) % cases.size();
                        futures.push_back(batcher.submit(cases[i].feeds()));
                        which.push_back(i);
                    }
                    for (std::size_t f = 0; f < futures.size(); ++f) {
                        RunResult got = futures[f].get();
                        callbacks.fetch_add(1);
                        rows.fetch_add(got.exit_index.size());
                        std::string why;
                        if (!close(got, reference[which[f]], why)) {
                            if (mismatches.fetch_add(1) == 0) {
                                std::lock_guard<std::mutex> lock(why_mutex);
                                first_why = cases[which[f]].name + ": " + why;
                            }
                        }
                    }
                }
            });
        }
        for (auto& th : pool) th.join();
        const ContinuousStats st = batcher.stats();
        CHECK_EQ(st.calls_done, callbacks.load());
        CHECK_EQ(st.calls_failed, static_cast<uint64_t>(0));
        uint64_t exited = 0;
        for (uint64_t v : st.rows_per_exit) exited += v;
        CHECK_EQ(exited, rows.load());
        for (uint64_t q : st.queue_rows) CHECK_EQ(q, static_cast<uint64_t>(0));
        CHECK(st.segment_runs.size() == model.manifest().segments.size());
        for (std::size_t s = 0; s < st.segment_runs.size(); ++s) CHECK(st.segment_rows[s] >= st.segment_runs[s]);
    }
    if (mismatches.load() != 0) EXITC_FAIL(mismatches.load() << " results differ from Model::run; first: " << first_why);
}

}  // namespace

EXITC_TEST(tiny_fullest_concurrent) {
    ContinuousBatcherOptions o;
    o.max_batch = 16;
    run_concurrently("tiny", o, 6, 3);
}

EXITC_TEST(side_inputs_fullest_concurrent) {
    // Carried tensor and graph input with batch axis 1, an input read only by the last segment.
    ContinuousBatcherOptions o;
    o.max_batch = 16;
    run_concurrently("side", o, 6, 3);
}

EXITC_TEST(side_inputs_deepest_batch1_no_wait) {
    ContinuousBatcherOptions o;
    o.max_batch = 1;
    o.max_wait = std::chrono::microseconds(0);
    o.policy = ContinuousBatcherOptions::Policy::kDeepest;
    run_concurrently("side", o, 4, 1);
}

EXITC_TEST(tiny_large_batch_small_pending_limit) {
    ContinuousBatcherOptions o;
    o.max_batch = 256;
    o.max_pending_rows = 8;  // raised to max_batch; submit blocks (back-pressure) without deadlock
    run_concurrently("tiny", o, 3, 2);
}

EXITC_TEST(pick_queue_rules) {
    using std::chrono::milliseconds;
    const auto t0 = std::chrono::steady_clock::now();
    ContinuousBatcherOptions o;
    o.max_batch = 32;
    o.max_wait = std::chrono::microseconds(4000);
    // Segment 0: 10 rows of calls submitted at 1 ms; segment 1: one row of a call submitted at 0
    // (it has gone through segment 0). Half the rows reach segment 1, so its ideal batch is 16.
    std::vector<QueueView> q(3);
    q[0] = {10, t0 + milliseconds(1), 200};
    q[1] = {1, t0, 100};
    q[2] = {0, {}, 50};
    // Within the bound: the fuller queue relative to its ideal batch (10/32 against 1/16).
    CHECK_EQ(pick_queue(q, t0 + milliseconds(2), o), std::size_t{0});
    // Past the bound, counted from submission: the row submitted first goes first, although it
    // reached its queue only now (a bound counted per queue would let it wait again).
    CHECK_EQ(pick_queue(q, t0 + milliseconds(5), o), std::size_t{1});
    // kDeepest: the deepest non-empty queue while nothing is past the bound.
    o.policy = ContinuousBatcherOptions::Policy::kDeepest;
    CHECK_EQ(pick_queue(q, t0 + milliseconds(2), o), std::size_t{1});
    q[1].rows = 0;
    CHECK_EQ(pick_queue(q, t0 + milliseconds(2), o), std::size_t{0});
    q[0].rows = 0;
    CHECK_EQ(pick_queue(q, t0, o), q.size());
}

EXITC_TEST(single_call_matches_and_counts) {
    const Model model = Model::load(dir() + "/tiny.exitc");
    const auto cases = exitc_test::load_cases(dir() + "/tiny.cases");
    ContinuousBatcher batcher(model);
    uint64_t rows = 0;
    for (const auto& c : cases) {
        exitc_test::expect_matches(c, batcher.submit(c.feeds()).get());
        rows += static_cast<uint64_t>(c.batch);
    }
    const ContinuousStats st = batcher.stats();
    uint64_t total = 0;
    for (uint64_t v : st.rows_per_exit) total += v;
    CHECK_EQ(total, rows);
    CHECK(st.engine_seconds > 0.0);
    CHECK(st.overhead_seconds >= 0.0);
    CHECK(st.segment_runs[0] > 0);
}

EXITC_TEST(bad_feeds_throw_synchronously_and_batcher_keeps_serving) {
    const Model model = Model::load(dir() + "/tiny.exitc");
    const auto cases = exitc_test::load_cases(dir() + "/tiny.cases");
    ContinuousBatcher batcher(model);
    const float x[3] = {1, 2, 3};
    std::atomic<int> called{0};
    auto cb = [&](std::exception_ptr, RunResult) { called.fetch_add(1); };
    CHECK_THROWS(batcher.submit({{"x", TensorView{DType::kFloat32, Shape{1, 3}, x}}}, cb), ErrorCode::kInvalidArgument,
                 "dimension 1");
    CHECK_THROWS(batcher.submit({{"nope", TensorView{DType::kFloat32, Shape{1, 4}, x}}}, cb),
                 ErrorCode::kInvalidArgument, "unknown input");
    CHECK_THROWS(batcher.submit({{"x", TensorView{DType::kInt64, Shape{1, 4}, x}}}, cb), ErrorCode::kInvalidArgument,
                 "dtype");
    CHECK_EQ(called.load(), 0);
    exitc_test::expect_matches(cases.back(), batcher.submit(cases.back().feeds()).get());
}

EXITC_TEST(zero_rows_completes_inline) {
    const Model model = Model::load(dir() + "/tiny.exitc");
    ContinuousBatcher batcher(model);
    const float* none = nullptr;
    RunResult r = batcher.submit({{"x", TensorView{DType::kFloat32, Shape{0, 4}, none}}}).get();
    CHECK_EQ(r.exit_index.size(), static_cast<std::size_t>(0));
    CHECK_EQ(r.output("logits").shape()[0], 0);
}

namespace {
// An engine that fails on demand: wraps the real one.
struct FlakyExecutor : SegmentExecutor {
    std::unique_ptr<SegmentExecutor> inner;
    std::shared_ptr<std::atomic<bool>> fail;
    const std::vector<std::string>& input_names() const override { return inner->input_names(); }
    const std::vector<std::string>& output_names() const override { return inner->output_names(); }
    ExecutorOutputs run(const std::vector<const char*>& n, const std::vector<TensorView>& f,
                        const std::vector<const char*>& o) const override {
        if (fail->load()) throw Error(ErrorCode::kBackend, "injected engine failure");
        return inner->run(n, f, o);
    }
};
}  // namespace

EXITC_TEST(engine_failure_fails_the_calls_and_batcher_recovers) {
    auto fail = std::make_shared<std::atomic<bool>>(false);
    ModelOptions mo;
    mo.executor_factory = [fail](const std::string& path, const ExecutorOptions& o) -> std::unique_ptr<SegmentExecutor> {
        auto e = std::make_unique<FlakyExecutor>();
        e->inner = make_onnxruntime_cpu_executor(path, o);
        e->fail = fail;
        return e;
    };
    const Model model = Model::load(dir() + "/tiny.exitc", mo);
    const auto cases = exitc_test::load_cases(dir() + "/tiny.cases");
    ContinuousBatcher batcher(model);
    fail->store(true);
    bool threw = false;
    try {
        batcher.submit(cases.back().feeds()).get();
    } catch (const Error& e) {
        threw = std::string(e.what()).find("injected") != std::string::npos;
    }
    CHECK(threw);
    fail->store(false);
    exitc_test::expect_matches(cases.back(), batcher.submit(cases.back().feeds()).get());
    CHECK_EQ(batcher.stats().calls_failed, static_cast<uint64_t>(1));
}

EXITC_TEST_MAIN
