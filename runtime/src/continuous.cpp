// exitc::ContinuousBatcher (see continuous.hpp): per-segment row queues, one worker thread.
//
// A queued row holds, for every slot (graph input or carried tensor) a later segment reads, a
// reference to the block of memory its values live in: the call's copied inputs, or the engine
// outputs of the segment run that produced them (kept alive by shared ownership, no copy). A segment
// run gathers its rows' feeds densely (zero-copy when the rows are one block's rows in order).

#include "exitc/continuous.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "exitc/compaction.hpp"
#include "exitc/error.hpp"

namespace exitc {
namespace {

using Clock = std::chrono::steady_clock;

bool same_except_axis(const Shape& a, const Shape& b, int axis) {
    if (a.rank() != b.rank()) return false;
    for (std::size_t i = 0; i < a.rank(); ++i)
        if (static_cast<int>(i) != axis && a[i] != b[i]) return false;
    return true;
}

struct Block {
    std::vector<TensorView> tensors;
    std::unique_ptr<OutputStorage> storage;  // engine outputs
    std::vector<Tensor> owned;               // copied call inputs
};

struct SlotRef {
    std::shared_ptr<const Block> block;
    uint32_t tensor = 0;
    int64_t row = 0;
    const TensorView& view() const { return block->tensors[tensor]; }
};

struct Job {
    int64_t batch = 0;
    int64_t remaining = 0;
    bool finished = false;  // callback ran
    std::vector<Tensor> outputs;
    std::vector<uint8_t> allocated;
    std::vector<int64_t> exit_index;
    ContinuousBatcher::Callback done;
};

struct Row {
    std::shared_ptr<Job> job;
    int64_t index = 0;  // row of the call
    Clock::time_point since;  // when its call was submitted (kept from segment to segment)
    std::vector<SlotRef> slots;  // by slot; empty block = not held
};

struct SegPlan {
    std::vector<int> feed_slots;
    std::vector<int> carry_slots;
    std::vector<uint8_t> needed_after;  // by slot
    bool has_exit = false;
    double threshold = 0;
    int exit_index = 0;
};

uint64_t ns_between(Clock::time_point a, Clock::time_point b) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
    return ns > 0 ? static_cast<uint64_t>(ns) : 0;
}

}  // namespace

std::size_t pick_queue(const std::vector<QueueView>& queues, Clock::time_point now,
                       const ContinuousBatcherOptions& options) {
    std::size_t oldest = queues.size();
    for (std::size_t s = 0; s < queues.size(); ++s) {
        if (queues[s].rows == 0) continue;
        if (now - queues[s].front_submitted > options.max_wait &&
            (oldest == queues.size() || queues[s].front_submitted < queues[oldest].front_submitted))
            oldest = s;
    }
    if (oldest < queues.size()) return oldest;
    // kFullest: fill relative to the segment's ideal batch, i.e. the rows a full segment-0
    // batch sends to it at the survival rates seen so far (max_batch for segment 0).
    std::size_t best = queues.size();
    double best_fill = -1.0;
    for (std::size_t s = queues.size(); s-- > 0;) {
        if (queues[s].rows == 0) continue;
        if (options.policy == ContinuousBatcherOptions::Policy::kDeepest) return s;
        double ideal = static_cast<double>(options.max_batch);
        if (s > 0 && queues[0].rows_run > 0)
            ideal = std::max(1.0, ideal * static_cast<double>(queues[s].rows_run) / static_cast<double>(queues[0].rows_run));
        const double fill = static_cast<double>(std::min(queues[s].rows, options.max_batch)) / ideal;
        if (fill > best_fill) {
            best = s;
            best_fill = fill;
        }
    }
    return best;
}

struct ContinuousBatcher::Impl {
    const Model& model;
    ContinuousBatcherOptions options;
    std::vector<TensorSpec> slots;
    std::vector<SegPlan> plans;
    int prediction_output = 0;

    mutable std::mutex mutex;
    std::condition_variable work_cv;   // worker: a queue got rows, or stop
    std::condition_variable space_cv;  // submitters: pending rows went down
    std::vector<std::deque<Row>> queues;
    std::size_t pending_rows = 0;
    bool stop = false;
    // Stats (under mutex).
    std::vector<uint64_t> rows_per_exit, segment_runs, segment_rows;
    uint64_t calls_done = 0, calls_failed = 0, engine_ns = 0, overhead_ns = 0;
    std::thread worker;

    Impl(const Model& m, ContinuousBatcherOptions o) : model(m), options(o) {
        if (options.max_batch < 1)
            throw Error(ErrorCode::kInvalidArgument, "ContinuousBatcher: max_batch must be at least 1");
        if (options.max_pending_rows < options.max_batch) options.max_pending_rows = options.max_batch;
        const Manifest& man = model.manifest();
        std::map<std::string, int> slot_of;
        for (const auto& s : man.inputs) slots.push_back(s);
        for (const auto& s : man.carried) slots.push_back(s);
        for (std::size_t i = 0; i < slots.size(); ++i) slot_of[slots[i].name] = static_cast<int>(i);
        for (std::size_t k = 0; k < man.outputs.size(); ++k)
            if (man.outputs[k].name == man.prediction_output) prediction_output = static_cast<int>(k);
        for (const Segment& seg : man.segments) {
            SegPlan p;
            for (const auto& n : seg.inputs) p.feed_slots.push_back(slot_of.at(n));
            for (const auto& n : seg.carry_out) p.carry_slots.push_back(slot_of.at(n));
            if (seg.exit) {
                p.has_exit = true;
                p.threshold = seg.exit->threshold;
                p.exit_index = seg.exit->index;
            }
            plans.push_back(std::move(p));
        }
        std::vector<uint8_t> needed(slots.size(), 0);
        for (std::size_t s = plans.size(); s-- > 0;) {
            plans[s].needed_after = needed;
            for (int slot : plans[s].feed_slots) needed[static_cast<std::size_t>(slot)] = 1;
        }
        queues.resize(plans.size());
        rows_per_exit.assign(man.num_exits() + 1, 0);
        segment_runs.assign(plans.size(), 0);
        segment_rows.assign(plans.size(), 0);
        worker = std::thread([this] { work(); });
    }

    ~Impl() {
        {
            std::lock_guard<std::mutex> lock(mutex);
            stop = true;
        }
        work_cv.notify_all();
        if (worker.joinable()) worker.join();
    }

    RunResult empty_result(int64_t batch) const {
        RunResult r;
        const Manifest& man = model.manifest();
        for (const auto& spec : man.outputs) r.output_names.push_back(spec.name);
        r.outputs.resize(man.outputs.size());
        r.exit_index.assign(static_cast<std::size_t>(batch), -1);
        return r;
    }

    // Outputs no row produced: zeros of the declared shape, symbolic non-batch dims taken as 0
    // (Model::run's rule).
    void finish_unwritten(Job& job) const {
        const Manifest& man = model.manifest();
        for (std::size_t k = 0; k < man.outputs.size(); ++k) {
            if (job.allocated[k]) continue;
            const TensorSpec& spec = man.outputs[k];
            std::vector<int64_t> dims;
            for (std::size_t a = 0; a < spec.shape.size(); ++a)
                dims.push_back(static_cast<int>(a) == spec.batch_axis ? job.batch
                                                                      : std::max<int64_t>(spec.shape[a].size, 0));
            job.outputs[k] = Tensor(spec.dtype, Shape(dims));
            job.allocated[k] = 1;
        }
    }

    void write_row(Job& job, int output, const TensorView& src, int64_t src_row, int64_t dst_row) const {
        const TensorSpec& spec = model.manifest().outputs[static_cast<std::size_t>(output)];
        Tensor& dst = job.outputs[static_cast<std::size_t>(output)];
        const Shape full = compacted_shape(src.shape, spec.batch_axis, job.batch);
        if (!job.allocated[static_cast<std::size_t>(output)]) {
            dst = Tensor(spec.dtype, full);
            job.allocated[static_cast<std::size_t>(output)] = 1;
        } else if (dst.shape() != full) {
            throw Error(ErrorCode::kBackend, "output '" + spec.name + "': rows of shape " + src.shape.to_string() +
                                                 " are inconsistent with earlier rows (result shape " +
                                                 dst.shape().to_string() + ")");
        }
        copy_row(src, spec.batch_axis, src_row, dst.data(), dst.shape(), dst_row);
    }

    void submit(const std::vector<NamedTensorView>& inputs, Callback done) {
        std::vector<TensorView> by_input;
        const int64_t batch = model.check_feeds(inputs, by_input);
        auto job = std::make_shared<Job>();
        job->batch = batch;
        job->remaining = batch;
        job->done = std::move(done);
        const std::size_t n_out = model.manifest().outputs.size();
        job->outputs.resize(n_out);
        job->allocated.assign(n_out, 0);
        job->exit_index.assign(static_cast<std::size_t>(batch), -1);
        if (batch == 0) {
            finish_unwritten(*job);
            RunResult r = empty_result(0);
            r.outputs = std::move(job->outputs);
            {
                std::lock_guard<std::mutex> lock(mutex);
                ++calls_done;
            }
            job->done(nullptr, std::move(r));
            return;
        }
        auto block = std::make_shared<Block>();
        for (const TensorView& v : by_input) {
            Tensor t(v.dtype, v.shape);
            if (v.byte_size() > 0) std::memcpy(t.data(), v.data, v.byte_size());
            block->owned.push_back(std::move(t));
        }
        for (const Tensor& t : block->owned) block->tensors.push_back(t.view());
        std::vector<Row> rows(static_cast<std::size_t>(batch));
        for (int64_t r = 0; r < batch; ++r) {
            Row& row = rows[static_cast<std::size_t>(r)];
            row.job = job;
            row.index = r;
            row.slots.resize(slots.size());
            for (std::size_t i = 0; i < by_input.size(); ++i)
                row.slots[i] = SlotRef{block, static_cast<uint32_t>(i), r};
        }
        std::unique_lock<std::mutex> lock(mutex);
        space_cv.wait(lock, [&] {
            return stop || pending_rows == 0 || pending_rows + static_cast<std::size_t>(batch) <= options.max_pending_rows;
        });
        if (stop) throw Error(ErrorCode::kInternal, "ContinuousBatcher: submit() during shutdown");
        const Clock::time_point now = Clock::now();
        for (Row& row : rows) {
            row.since = now;
            queues[0].push_back(std::move(row));
        }
        pending_rows += static_cast<std::size_t>(batch);
        lock.unlock();
        work_cv.notify_one();
    }

    // Under mutex.
    std::size_t pick(Clock::time_point now) const {
        std::vector<QueueView> views(queues.size());
        for (std::size_t s = 0; s < queues.size(); ++s) {
            views[s].rows = queues[s].size();
            if (!queues[s].empty()) views[s].front_submitted = queues[s].front().since;
            views[s].rows_run = segment_rows[s];
        }
        return pick_queue(views, now, options);
    }

    // Under mutex: takes up to max_batch rows from queue s whose feeds have the same non-batch
    // shapes as the first row's (symbolic dims may differ between calls), skipping rows of calls
    // that already failed.
    std::vector<Row> take(std::size_t s) {
        std::vector<Row> rows;
        std::deque<Row>& q = queues[s];
        const SegPlan& plan = plans[s];
        while (!q.empty() && rows.size() < options.max_batch) {
            Row& row = q.front();
            if (row.job->finished) {
                q.pop_front();
                --pending_rows;
                continue;
            }
            if (!rows.empty()) {
                bool same = true;
                for (int slot : plan.feed_slots) {
                    const auto sl = static_cast<std::size_t>(slot);
                    if (!same_except_axis(row.slots[sl].view().shape, rows.front().slots[sl].view().shape,
                                          slots[sl].batch_axis)) {
                        same = false;
                        break;
                    }
                }
                if (!same) break;
            }
            rows.push_back(std::move(row));
            q.pop_front();
            --pending_rows;
        }
        return rows;
    }

    void work() {
        std::vector<std::vector<unsigned char>> buffers;
        for (;;) {
            std::unique_lock<std::mutex> lock(mutex);
            work_cv.wait(lock, [&] {
                if (stop) return true;
                for (const auto& q : queues)
                    if (!q.empty()) return true;
                return false;
            });
            bool any = false;
            for (const auto& q : queues) any = any || !q.empty();
            if (!any) return;  // stop, and every submitted row is done
            const Clock::time_point busy_start = Clock::now();
            const std::size_t s = pick(busy_start);
            std::vector<Row> rows = take(s);
            lock.unlock();
            space_cv.notify_all();
            if (rows.empty()) continue;

            std::vector<Row> survivors;
            std::vector<std::shared_ptr<Job>> completed;
            std::exception_ptr failure;
            uint64_t run_engine_ns = 0;
            try {
                run_segment(s, rows, buffers, survivors, completed, run_engine_ns);
            } catch (...) {
                failure = std::current_exception();
                survivors.clear();
                completed.clear();
            }
            const uint64_t busy_ns = ns_between(busy_start, Clock::now());

            // Callbacks outside the lock.
            std::vector<std::pair<std::shared_ptr<Job>, RunResult>> results;
            std::vector<std::shared_ptr<Job>> failed;
            if (failure) {
                for (Row& row : rows)
                    if (!row.job->finished) {
                        row.job->finished = true;
                        failed.push_back(row.job);
                    }
            } else {
                for (auto& job : completed) {
                    finish_unwritten(*job);
                    RunResult r = empty_result(0);
                    r.outputs = std::move(job->outputs);
                    r.exit_index = std::move(job->exit_index);
                    job->finished = true;
                    results.emplace_back(job, std::move(r));
                }
            }
            lock.lock();
            engine_ns += run_engine_ns;
            overhead_ns += busy_ns > run_engine_ns ? busy_ns - run_engine_ns : 0;
            ++segment_runs[s];
            segment_rows[s] += rows.size();
            for (auto& jr : results)
                for (int64_t e : jr.second.exit_index) ++rows_per_exit[static_cast<std::size_t>(e)];
            calls_done += results.size() + failed.size();
            calls_failed += failed.size();
            if (!survivors.empty()) {
                // `since` stays the call's submission time: the latency bound counts from there.
                for (Row& row : survivors) queues[s + 1].push_back(std::move(row));
                pending_rows += survivors.size();
            }
            lock.unlock();
            rows.clear();  // drop block references before the callbacks
            for (auto& jr : results) jr.first->done(nullptr, std::move(jr.second));
            for (auto& job : failed) job->done(failure, RunResult{});
        }
    }

    void run_segment(std::size_t s, std::vector<Row>& rows, std::vector<std::vector<unsigned char>>& buffers,
                     std::vector<Row>& survivors, std::vector<std::shared_ptr<Job>>& completed,
                     uint64_t& run_engine_ns) {
        const SegPlan& plan = plans[s];
        const auto n = static_cast<int64_t>(rows.size());
        std::vector<TensorView> feeds;
        if (buffers.size() < plan.feed_slots.size()) buffers.resize(plan.feed_slots.size());
        for (std::size_t f = 0; f < plan.feed_slots.size(); ++f) {
            const auto sl = static_cast<std::size_t>(plan.feed_slots[f]);
            const int axis = slots[sl].batch_axis;
            const SlotRef& first = rows.front().slots[sl];
            if (!first.block) throw Error(ErrorCode::kInternal, "ContinuousBatcher: feed '" + slots[sl].name + "' missing");
            const TensorView& src0 = first.view();
            // Zero-copy when the rows are all of one block's tensor, in order, from its start.
            bool whole = first.row == 0 && src0.shape[static_cast<std::size_t>(axis)] == n;
            for (int64_t j = 1; whole && j < n; ++j) {
                const SlotRef& ref = rows[static_cast<std::size_t>(j)].slots[sl];
                whole = ref.block == first.block && ref.tensor == first.tensor && ref.row == j;
            }
            if (whole) {
                feeds.push_back(src0);
                continue;
            }
            TensorView dense{src0.dtype, compacted_shape(src0.shape, axis, n), nullptr};
            auto& buf = buffers[f];
            if (buf.size() < dense.byte_size()) buf.resize(dense.byte_size());
            dense.data = buf.data();
            for (int64_t j = 0; j < n; ++j) {
                const SlotRef& ref = rows[static_cast<std::size_t>(j)].slots[sl];
                copy_row(ref.view(), axis, ref.row, buf.data(), dense.shape, j);
            }
            feeds.push_back(dense);
        }
        const Clock::time_point engine_start = Clock::now();
        ExecutorOutputs out = model.run_segment(s, feeds);
        run_engine_ns += ns_between(engine_start, Clock::now());
        auto block = std::make_shared<Block>();
        block->tensors = std::move(out.tensors);
        block->storage = std::move(out.storage);
        const Manifest& man = model.manifest();
        const std::size_t nc = plan.carry_slots.size();

        auto finish_row = [&](Row& row, int64_t exit) {
            Job& job = *row.job;
            job.exit_index[static_cast<std::size_t>(row.index)] = exit;
            if (--job.remaining == 0) completed.push_back(row.job);
        };
        if (!plan.has_exit) {
            for (int64_t j = 0; j < n; ++j) {
                Row& row = rows[static_cast<std::size_t>(j)];
                for (std::size_t k = 0; k < man.outputs.size(); ++k)
                    write_row(*row.job, static_cast<int>(k), block->tensors[nc + k], j, row.index);
                finish_row(row, static_cast<int64_t>(man.num_exits()));
            }
            return;
        }
        const TensorView& logits = block->tensors[nc];
        const TensorView& score = block->tensors[nc + 1];
        std::vector<uint8_t> exits;
        exit_mask(score.as<float>(), static_cast<std::size_t>(n), plan.threshold, exits);
        for (int64_t j = 0; j < n; ++j) {
            Row& row = rows[static_cast<std::size_t>(j)];
            if (exits[static_cast<std::size_t>(j)]) {
                write_row(*row.job, prediction_output, logits, j, row.index);
                finish_row(row, plan.exit_index);
                continue;
            }
            for (std::size_t c = 0; c < nc; ++c) {
                const auto sl = static_cast<std::size_t>(plan.carry_slots[c]);
                if (plan.needed_after[sl]) row.slots[sl] = SlotRef{block, static_cast<uint32_t>(c), j};
            }
            for (std::size_t sl = 0; sl < slots.size(); ++sl)
                if (!plan.needed_after[sl]) row.slots[sl] = SlotRef{};
            survivors.push_back(std::move(row));
        }
    }
};

ContinuousBatcher::ContinuousBatcher(const Model& model, ContinuousBatcherOptions options)
    : impl_(std::make_unique<Impl>(model, options)) {}

ContinuousBatcher::~ContinuousBatcher() = default;

void ContinuousBatcher::submit(const std::vector<NamedTensorView>& inputs, Callback done) {
    impl_->submit(inputs, std::move(done));
}

std::future<RunResult> ContinuousBatcher::submit(const std::vector<NamedTensorView>& inputs) {
    auto promise = std::make_shared<std::promise<RunResult>>();
    std::future<RunResult> future = promise->get_future();
    impl_->submit(inputs, [promise](std::exception_ptr error, RunResult result) {
        if (error) promise->set_exception(error);
        else promise->set_value(std::move(result));
    });
    return future;
}

ContinuousStats ContinuousBatcher::stats() const {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    ContinuousStats st;
    st.rows_per_exit = impl_->rows_per_exit;
    st.segment_runs = impl_->segment_runs;
    st.segment_rows = impl_->segment_rows;
    for (const auto& q : impl_->queues) st.queue_rows.push_back(q.size());
    st.calls_done = impl_->calls_done;
    st.calls_failed = impl_->calls_failed;
    st.engine_seconds = static_cast<double>(impl_->engine_ns) * 1e-9;
    st.overhead_seconds = static_cast<double>(impl_->overhead_ns) * 1e-9;
    return st;
}

const ContinuousBatcherOptions& ContinuousBatcher::options() const noexcept { return impl_->options; }

}  // namespace exitc
