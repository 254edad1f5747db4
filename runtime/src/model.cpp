// exitc::Model: load-time planning (name -> slot resolution, graph/manifest cross-checks) and the
// segment-by-segment execution with exit masks, batch compaction and scatter described in
// docs/artifact-format.md ("Execution semantics").

#include "exitc/model.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "exitc/compaction.hpp"
#include "exitc/error.hpp"
#include "exitc/sequence.hpp"
#include "filesystem_util.hpp"
#include "workspace.hpp"

namespace exitc {
namespace {

constexpr const char* kExitIndexOutput = "exitc_exit_index";

std::string join_names(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
}

using Clock = std::chrono::steady_clock;

uint64_t nanoseconds_between(Clock::time_point from, Clock::time_point to) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(to - from).count();
    return ns > 0 ? static_cast<uint64_t>(ns) : 0;
}

bool contains(const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
}

// How one segment is run: feeds resolved to slots, and the outputs it must produce.
struct SegmentPlan {
    std::string label;  // "segments/seg_0.onnx", for messages
    std::unique_ptr<SegmentExecutor> executor;
    std::vector<int> feed_slots;
    std::vector<const char*> feed_names;  // point into the Impl-owned manifest
    std::vector<int> carry_slots;         // slots of carry_out, in order
    // Requested outputs: carry_out..., then (logits, score) for an exit segment, or the model's
    // outputs for the last one.
    std::vector<const char*> output_names;
    const ExitHead* exit = nullptr;
    // needed_after[slot]: a later segment reads this slot. Slots no later segment reads are
    // dropped at this segment's exit instead of being compacted (saves copies).
    std::vector<uint8_t> needed_after;
};

ExecutorFactory factory_for_backend(const std::string& backend, const std::string& origin) {
    if (backend == "onnxruntime-cpu" || backend == "onnxruntime")
        return [](const std::string& path, const ExecutorOptions& o) { return make_onnxruntime_cpu_executor(path, o); };
    throw Error(ErrorCode::kManifest, origin + ": field 'backend' is '" + backend +
                                          "', which this runtime cannot execute (supported: onnxruntime-cpu)");
}

}  // namespace

const Tensor& RunResult::output(const std::string& name) const {
    for (std::size_t i = 0; i < output_names.size(); ++i)
        if (output_names[i] == name) return outputs[i];
    throw Error(ErrorCode::kInvalidArgument, "no output named '" + name + "' (outputs: " + join_names(output_names) + ")");
}

struct Model::Impl {
    std::string artifact_dir;
    Manifest manifest;
    std::vector<TensorSpec> slots;  // graph inputs first, then carried tensors
    std::map<std::string, int> slot_of;
    std::vector<SegmentPlan> segments;
    std::unique_ptr<SegmentExecutor> conditional;
    bool full_depth = false;  // ModelOptions::full_depth
    std::vector<const char*> conditional_feed_names;
    std::vector<const char*> conditional_output_names;
    // manifest.sequence: the mask's index among the inputs, and which inputs are cut.
    int sequence_mask = -1;
    std::vector<uint8_t> sequence_input;
    int prediction_output = 0;  // index into manifest.outputs
    mutable WorkspacePool workspaces;
    std::unique_ptr<std::atomic<uint64_t>[]> exit_counts;  // num_exits + 1 entries
    mutable std::atomic<uint64_t> calls{0};
    mutable std::atomic<uint64_t> engine_ns{0};    // see ExitStats::engine_seconds
    mutable std::atomic<uint64_t> overhead_ns{0};  // see ExitStats::overhead_seconds

    void validate_graph(const SegmentExecutor& exec, const std::string& label,
                        const std::vector<std::string>& feeds, const std::vector<std::string>& outputs) const {
        for (const auto& name : exec.input_names())
            if (!contains(feeds, name))
                throw Error(ErrorCode::kManifest, label + ": the graph needs input '" + name +
                                                      "', which the manifest does not feed it (manifest feeds: " +
                                                      join_names(feeds) + ")");
        for (const auto& name : feeds)
            if (!contains(exec.input_names(), name))
                throw Error(ErrorCode::kManifest, label + ": the manifest feeds '" + name +
                                                      "', which is not a graph input (graph inputs: " +
                                                      join_names(exec.input_names()) + ")");
        for (const auto& name : outputs)
            if (!contains(exec.output_names(), name))
                throw Error(ErrorCode::kManifest, label + ": the manifest expects output '" + name +
                                                      "', which the graph does not produce (graph outputs: " +
                                                      join_names(exec.output_names()) + ")");
    }

    RunResult run(const std::vector<NamedTensorView>& feeds) const;
    // An exit segment's logits and score as the manifest declares them, for `rows` rows.
    void check_exit_outputs(const SegmentPlan& plan, const ExecutorOutputs& out, int64_t rows) const;
    int64_t validate_feeds(const std::vector<NamedTensorView>& feeds, std::vector<TensorView>& by_input) const;
    // Both add the time spent inside SegmentExecutor::run to `engine_ns`.
    void run_conditional(const std::vector<TensorView>& inputs, RunResult& result, uint64_t& engine_ns) const;
    // The exit loop over the segments before `stop_before` (all by default). Returns whether every
    // row has its result; where not (stopped early), the rows left have exit index -1 and no
    // output has been completed for them.
    bool run_segments(const std::vector<TensorView>& inputs, int64_t batch, Workspace& ws, RunResult& result,
                      uint64_t& engine_ns, std::size_t stop_before = std::numeric_limits<std::size_t>::max()) const;
    // The batch-1 form at batch 1 (for the first-exit form: segment 0 and its exit, then the
    // conditional file if the row is left), else the segments (no sequence handling).
    void run_rows(const std::vector<TensorView>& inputs, int64_t batch, RunResult& result, uint64_t& engine_ns) const;
    // A token model (manifest "sequence"): the batch split by length, each part run_rows at its
    // longest row's length.
    void run_by_length(const std::vector<TensorView>& inputs, int64_t batch, RunResult& result,
                       uint64_t& engine_ns) const;
    void write_rows(RunResult& result, std::vector<uint8_t>& allocated, int output, const TensorView& src,
                    const int64_t* rows, int64_t batch, const std::string& label) const;
    void finish_unwritten_outputs(RunResult& result, const std::vector<uint8_t>& allocated, int64_t batch) const;
};

void Model::Impl::check_exit_outputs(const SegmentPlan& plan, const ExecutorOutputs& out, int64_t rows) const {
    const TensorView& logits = out.tensors[plan.carry_slots.size()];
    const TensorView& score = out.tensors[plan.carry_slots.size() + 1];
    if (score.dtype != DType::kFloat32 || score.num_elements() != rows || score.shape.rank() == 0 ||
        score.shape[0] != rows)
        throw Error(ErrorCode::kBackend, plan.label + ": exit score '" + plan.exit->score + "' is " +
                                             std::string(dtype_name(score.dtype)) + " " + score.shape.to_string() +
                                             ", expected float32 [" + std::to_string(rows) + "]");
    const TensorSpec& pred = manifest.outputs[static_cast<std::size_t>(prediction_output)];
    const auto axis = static_cast<std::size_t>(pred.batch_axis);
    if (logits.dtype != pred.dtype || logits.shape.rank() != pred.shape.size() || logits.shape[axis] != rows)
        throw Error(ErrorCode::kBackend, plan.label + ": exit logits '" + plan.exit->logits + "' are " +
                                             std::string(dtype_name(logits.dtype)) + " " + logits.shape.to_string() +
                                             ", expected " + std::string(dtype_name(pred.dtype)) + " with " +
                                             std::to_string(rows) + " rows");
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& artifact_dir, const ModelOptions& options) {
    auto impl = std::make_unique<Impl>();
    impl->artifact_dir = artifact_dir;
    impl->manifest = Manifest::load(artifact_dir);
    const Manifest& m = impl->manifest;
    const std::string manifest_path = join_path(artifact_dir, "manifest.json");

    for (const auto& spec : m.inputs) impl->slots.push_back(spec);
    for (const auto& spec : m.carried) impl->slots.push_back(spec);
    for (std::size_t i = 0; i < impl->slots.size(); ++i) impl->slot_of[impl->slots[i].name] = static_cast<int>(i);
    for (std::size_t i = 0; i < m.outputs.size(); ++i)
        if (m.outputs[i].name == m.prediction_output) impl->prediction_output = static_cast<int>(i);

    const ExecutorFactory factory =
        options.executor_factory ? options.executor_factory : factory_for_backend(m.backend, manifest_path);
    for (const Segment& seg : m.segments) {
        SegmentPlan plan;
        plan.label = join_path(artifact_dir, seg.file);
        ExecutorOptions exec_options = options.executor;
        exec_options.label = plan.label;
        plan.executor = factory(plan.label, exec_options);
        std::vector<std::string> expected_outputs = seg.carry_out;
        if (seg.exit) {
            expected_outputs.push_back(seg.exit->logits);
            expected_outputs.push_back(seg.exit->score);
        } else {
            expected_outputs.insert(expected_outputs.end(), seg.outputs.begin(), seg.outputs.end());
        }
        impl->validate_graph(*plan.executor, plan.label, seg.inputs, expected_outputs);
        for (const auto& name : seg.inputs) {
            plan.feed_slots.push_back(impl->slot_of.at(name));
            plan.feed_names.push_back(name.c_str());
        }
        for (const auto& name : seg.carry_out) plan.carry_slots.push_back(impl->slot_of.at(name));
        for (const auto& name : seg.carry_out) plan.output_names.push_back(name.c_str());
        if (seg.exit) {
            plan.exit = &*seg.exit;
            plan.output_names.push_back(seg.exit->logits.c_str());
            plan.output_names.push_back(seg.exit->score.c_str());
        } else {
            for (const auto& name : seg.outputs) plan.output_names.push_back(name.c_str());
        }
        impl->segments.push_back(std::move(plan));
    }

    std::vector<uint8_t> needed(impl->slots.size(), 0);
    for (std::size_t s = impl->segments.size(); s-- > 0;) {
        impl->segments[s].needed_after = needed;
        for (int slot : impl->segments[s].feed_slots) needed[static_cast<std::size_t>(slot)] = 1;
    }

    impl->full_depth = options.full_depth;
    if (m.conditional_file && options.use_conditional && !options.full_depth) {
        const std::string label = join_path(artifact_dir, *m.conditional_file);
        ExecutorOptions exec_options = options.executor;
        exec_options.label = label;
        impl->conditional = factory(label, exec_options);
        std::vector<std::string> feeds, outputs;
        for (const auto& spec : m.inputs) {
            feeds.push_back(spec.name);
            impl->conditional_feed_names.push_back(spec.name.c_str());
        }
        for (const auto& spec : m.outputs) {
            outputs.push_back(spec.name);
            impl->conditional_output_names.push_back(spec.name.c_str());
        }
        outputs.push_back(kExitIndexOutput);
        impl->conditional_output_names.push_back(kExitIndexOutput);
        impl->validate_graph(*impl->conditional, label, feeds, outputs);
    }

    impl->sequence_input.assign(m.inputs.size(), 0);
    if (m.sequence) {
        for (std::size_t i = 0; i < m.inputs.size(); ++i) {
            const auto& names = m.sequence->inputs;
            impl->sequence_input[i] = std::find(names.begin(), names.end(), m.inputs[i].name) != names.end();
            if (m.inputs[i].name == m.sequence->mask) impl->sequence_mask = static_cast<int>(i);
        }
    }
    impl->exit_counts = std::make_unique<std::atomic<uint64_t>[]>(m.num_exits() + 1);
    for (std::size_t i = 0; i <= m.num_exits(); ++i) impl->exit_counts[i] = 0;
    return Model(std::move(impl));
}

int64_t Model::Impl::validate_feeds(const std::vector<NamedTensorView>& feeds, std::vector<TensorView>& by_input) const {
    const auto& inputs = manifest.inputs;
    std::vector<std::string> input_names;
    for (const auto& spec : inputs) input_names.push_back(spec.name);
    by_input.assign(inputs.size(), TensorView{});
    std::vector<uint8_t> seen(inputs.size(), 0);
    for (const auto& feed : feeds) {
        auto it = std::find(input_names.begin(), input_names.end(), feed.name);
        if (it == input_names.end())
            throw Error(ErrorCode::kInvalidArgument,
                        "unknown input '" + feed.name + "' (model inputs: " + join_names(input_names) + ")");
        const std::size_t i = static_cast<std::size_t>(it - input_names.begin());
        if (seen[i]) throw Error(ErrorCode::kInvalidArgument, "input '" + feed.name + "' is given more than once");
        seen[i] = 1;
        by_input[i] = feed.view;
    }
    int64_t batch = -1;
    std::string batch_from;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const TensorSpec& spec = inputs[i];
        if (!seen[i])
            throw Error(ErrorCode::kInvalidArgument,
                        "missing input '" + spec.name + "' (model inputs: " + join_names(input_names) + ")");
        const TensorView& v = by_input[i];
        const std::string what = "input '" + spec.name + "'";
        if (v.dtype != spec.dtype)
            throw Error(ErrorCode::kInvalidArgument, what + " has dtype " + std::string(dtype_name(v.dtype)) +
                                                         ", expected " + std::string(dtype_name(spec.dtype)));
        if (v.shape.rank() != spec.shape.size())
            throw Error(ErrorCode::kInvalidArgument, what + " has rank " + std::to_string(v.shape.rank()) + " (shape " +
                                                         v.shape.to_string() + "), expected rank " +
                                                         std::to_string(spec.shape.size()));
        for (std::size_t a = 0; a < spec.shape.size(); ++a) {
            if (v.shape[a] < 0)
                throw Error(ErrorCode::kInvalidArgument, what + " has a negative dimension: " + v.shape.to_string());
            if (static_cast<int>(a) == spec.batch_axis) continue;
            const Dim& d = spec.shape[a];
            if (!d.is_symbolic() && d.size != v.shape[a])
                throw Error(ErrorCode::kInvalidArgument, what + " has shape " + v.shape.to_string() + ": dimension " +
                                                             std::to_string(a) + " must be " + std::to_string(d.size));
        }
        const int64_t rows = v.shape[static_cast<std::size_t>(spec.batch_axis)];
        if (batch < 0) {
            batch = rows;
            batch_from = spec.name;
        } else if (rows != batch) {
            throw Error(ErrorCode::kInvalidArgument, what + " has batch size " + std::to_string(rows) + " but input '" +
                                                         batch_from + "' has " + std::to_string(batch));
        }
        if (v.data == nullptr && v.num_elements() > 0)
            throw Error(ErrorCode::kInvalidArgument, what + " has no data");
    }
    return batch;
}

void Model::Impl::write_rows(RunResult& result, std::vector<uint8_t>& allocated, int output, const TensorView& src,
                             const int64_t* rows, int64_t batch, const std::string& label) const {
    const TensorSpec& spec = manifest.outputs[static_cast<std::size_t>(output)];
    if (src.dtype != spec.dtype)
        throw Error(ErrorCode::kBackend, label + ": produced '" + spec.name + "' as " + std::string(dtype_name(src.dtype)) +
                                             ", the manifest declares " + std::string(dtype_name(spec.dtype)));
    if (src.shape.rank() != spec.shape.size())
        throw Error(ErrorCode::kBackend, label + ": produced '" + spec.name + "' with shape " + src.shape.to_string() +
                                             ", the manifest declares rank " + std::to_string(spec.shape.size()));
    Tensor& dst = result.outputs[static_cast<std::size_t>(output)];
    const Shape full = compacted_shape(src.shape, spec.batch_axis, batch);
    if (!allocated[static_cast<std::size_t>(output)]) {
        dst = Tensor(spec.dtype, full);
        allocated[static_cast<std::size_t>(output)] = 1;
    } else if (dst.shape() != full) {
        throw Error(ErrorCode::kBackend, label + ": produced '" + spec.name + "' rows of shape " + src.shape.to_string() +
                                             ", inconsistent with earlier rows (result shape " + dst.shape().to_string() + ")");
    }
    scatter_rows(src, spec.batch_axis, rows, dst.data(), dst.shape());
}

void Model::Impl::finish_unwritten_outputs(RunResult& result, const std::vector<uint8_t>& allocated,
                                           int64_t batch) const {
    // An output no row produced (every row exited early, or batch 0): zeros of the declared shape,
    // symbolic non-batch dims taken as 0.
    for (std::size_t k = 0; k < manifest.outputs.size(); ++k) {
        if (allocated[k]) continue;
        const TensorSpec& spec = manifest.outputs[k];
        std::vector<int64_t> dims;
        for (std::size_t a = 0; a < spec.shape.size(); ++a)
            dims.push_back(static_cast<int>(a) == spec.batch_axis ? batch : std::max<int64_t>(spec.shape[a].size, 0));
        result.outputs[k] = Tensor(spec.dtype, Shape(dims));
    }
}

void Model::Impl::run_conditional(const std::vector<TensorView>& inputs, RunResult& result,
                                  uint64_t& engine_ns) const {
    const std::string label = join_path(artifact_dir, *manifest.conditional_file);
    const Clock::time_point engine_start = Clock::now();
    ExecutorOutputs out = conditional->run(conditional_feed_names, inputs, conditional_output_names);
    engine_ns += nanoseconds_between(engine_start, Clock::now());
    std::vector<uint8_t> allocated(manifest.outputs.size(), 0);
    const int64_t row0 = 0;
    for (std::size_t k = 0; k < manifest.outputs.size(); ++k) {
        const TensorView& v = out.tensors[k];
        const int axis = manifest.outputs[k].batch_axis;
        if (v.shape.rank() <= static_cast<std::size_t>(axis) || v.shape[static_cast<std::size_t>(axis)] != 1)
            throw Error(ErrorCode::kBackend, label + ": output '" + manifest.outputs[k].name + "' has shape " +
                                                 v.shape.to_string() + ", expected batch 1");
        write_rows(result, allocated, static_cast<int>(k), v, &row0, 1, label);
    }
    const TensorView& exit_index = out.tensors.back();
    if (exit_index.dtype != DType::kInt64 || exit_index.num_elements() != 1)
        throw Error(ErrorCode::kBackend, label + ": output '" + std::string(kExitIndexOutput) + "' must be int64 [1], got " +
                                             std::string(dtype_name(exit_index.dtype)) + " " + exit_index.shape.to_string());
    const int64_t e = *exit_index.as<int64_t>();
    if (e < 0 || e > static_cast<int64_t>(manifest.num_exits()))
        throw Error(ErrorCode::kBackend, label + ": exit index " + std::to_string(e) + " is out of range 0.." +
                                             std::to_string(manifest.num_exits()));
    result.exit_index.assign(1, e);
}

bool Model::Impl::run_segments(const std::vector<TensorView>& inputs, int64_t batch, Workspace& ws,
                               RunResult& result, uint64_t& engine_ns, std::size_t stop_before) const {
    ws.reset(slots.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        ws.state[i] = inputs[i];
        ws.present[i] = 1;
    }
    ws.active.resize(static_cast<std::size_t>(batch));
    for (int64_t r = 0; r < batch; ++r) ws.active[static_cast<std::size_t>(r)] = r;
    std::vector<uint8_t> allocated(manifest.outputs.size(), 0);
    result.exit_index.assign(static_cast<std::size_t>(batch), -1);

    // Gathers the kept rows of slot `slot`'s current view (`src`) into the slot's own buffer.
    auto compact_slot = [&](int slot, const TensorView& src) {
        const TensorSpec& spec = slots[static_cast<std::size_t>(slot)];
        auto& buffer = ws.slot_buffers[static_cast<std::size_t>(slot)];
        const std::size_t needed = static_cast<std::size_t>(
                                       compacted_shape(src.shape, spec.batch_axis, static_cast<int64_t>(ws.keep.size()))
                                           .num_elements()) *
                                   dtype_size(src.dtype);
        // Compaction only shrinks, so a view already in this buffer never needs it to grow.
        if (src.data != buffer.data() && buffer.size() < needed) buffer.resize(needed);
        ws.state[static_cast<std::size_t>(slot)] =
            compact_rows(src, spec.batch_axis, ws.keep.data(), ws.keep.size(), buffer.data());
        ws.present[static_cast<std::size_t>(slot)] = 1;
    };

    const std::size_t last = segments.size() - 1;
    for (std::size_t s = 0; s < segments.size(); ++s) {
        if (s == stop_before) return false;  // rows are left: the caller runs them another way
        const SegmentPlan& plan = segments[s];
        const int64_t rows = static_cast<int64_t>(ws.active.size());
        ws.feeds.clear();
        for (int slot : plan.feed_slots) {
            if (!ws.present[static_cast<std::size_t>(slot)])
                throw Error(ErrorCode::kInternal, plan.label + ": feed '" + slots[static_cast<std::size_t>(slot)].name +
                                                      "' has not been produced");
            ws.feeds.push_back(ws.state[static_cast<std::size_t>(slot)]);
        }
        const Clock::time_point engine_start = Clock::now();
        ExecutorOutputs out = plan.executor->run(plan.feed_names, ws.feeds, plan.output_names);
        engine_ns += nanoseconds_between(engine_start, Clock::now());
        if (out.tensors.size() != plan.output_names.size())
            throw Error(ErrorCode::kBackend, plan.label + ": engine returned " + std::to_string(out.tensors.size()) +
                                                 " outputs, expected " + std::to_string(plan.output_names.size()));
        // Carried outputs: check them against their declaration before anything reads them.
        for (std::size_t c = 0; c < plan.carry_slots.size(); ++c) {
            const TensorSpec& spec = slots[static_cast<std::size_t>(plan.carry_slots[c])];
            const TensorView& v = out.tensors[c];
            if (v.dtype != spec.dtype || v.shape.rank() != spec.shape.size() ||
                v.shape[static_cast<std::size_t>(spec.batch_axis)] != rows)
                throw Error(ErrorCode::kBackend, plan.label + ": carried tensor '" + spec.name + "' is " +
                                                     std::string(dtype_name(v.dtype)) + " " + v.shape.to_string() +
                                                     ", expected " + std::string(dtype_name(spec.dtype)) + " of rank " +
                                                     std::to_string(spec.shape.size()) + " with " + std::to_string(rows) +
                                                     " rows on axis " + std::to_string(spec.batch_axis));
        }

        if (s == last) {
            for (std::size_t k = 0; k < manifest.outputs.size(); ++k) {
                const TensorView& v = out.tensors[plan.carry_slots.size() + k];
                const auto axis = static_cast<std::size_t>(manifest.outputs[k].batch_axis);
                if (v.shape.rank() <= axis || v.shape[axis] != rows)
                    throw Error(ErrorCode::kBackend, plan.label + ": output '" + manifest.outputs[k].name +
                                                         "' has shape " + v.shape.to_string() + ", expected " +
                                                         std::to_string(rows) + " rows");
                write_rows(result, allocated, static_cast<int>(k), v, ws.active.data(), batch, plan.label);
            }
            for (int64_t r : ws.active) result.exit_index[static_cast<std::size_t>(r)] = static_cast<int64_t>(manifest.num_exits());
            break;
        }

        check_exit_outputs(plan, out, rows);
        const TensorView& logits = out.tensors[plan.carry_slots.size()];
        const TensorView& score = out.tensors[plan.carry_slots.size() + 1];
        const auto pred_axis = static_cast<std::size_t>(manifest.outputs[static_cast<std::size_t>(prediction_output)].batch_axis);

        const std::size_t leaving =
            full_depth ? 0 : exit_mask(score.as<float>(), static_cast<std::size_t>(rows), plan.exit->threshold, ws.exits);
        if (leaving > 0) {
            ws.keep.clear();
            ws.leaving.clear();
            ws.exiting.clear();
            for (std::size_t i = 0; i < static_cast<std::size_t>(rows); ++i) {
                if (ws.exits[i]) {
                    ws.exiting.push_back(static_cast<int64_t>(i));
                    ws.leaving.push_back(ws.active[i]);
                } else {
                    ws.keep.push_back(static_cast<int64_t>(i));
                }
            }
            // The exiting rows' logits go to their request rows.
            if (leaving == static_cast<std::size_t>(rows)) {
                write_rows(result, allocated, prediction_output, logits, ws.active.data(), batch, plan.label);
            } else {
                const std::size_t need = logits.byte_size() / static_cast<std::size_t>(rows) * leaving;
                if (ws.exiting_logits.size() < need) ws.exiting_logits.resize(need);
                const TensorView dense = compact_rows(logits, static_cast<int>(pred_axis), ws.exiting.data(),
                                                      ws.exiting.size(), ws.exiting_logits.data());
                write_rows(result, allocated, prediction_output, dense, ws.leaving.data(), batch, plan.label);
            }
            for (int64_t r : ws.leaving) result.exit_index[static_cast<std::size_t>(r)] = plan.exit->index;
            if (ws.keep.empty()) break;  // every row has left: later segments do not run
            // Compact: active rows, every tensor in state, and this segment's carried outputs.
            for (std::size_t j = 0; j < ws.keep.size(); ++j) ws.active[j] = ws.active[static_cast<std::size_t>(ws.keep[j])];
            ws.active.resize(ws.keep.size());
            for (std::size_t slot = 0; slot < slots.size(); ++slot) {
                if (!ws.present[slot]) continue;
                if (plan.needed_after[slot]) compact_slot(static_cast<int>(slot), ws.state[slot]);
                else ws.present[slot] = 0;  // no later segment reads it
            }
            for (std::size_t c = 0; c < plan.carry_slots.size(); ++c)
                if (plan.needed_after[static_cast<std::size_t>(plan.carry_slots[c])])
                    compact_slot(plan.carry_slots[c], out.tensors[c]);
        } else {
            for (std::size_t c = 0; c < plan.carry_slots.size(); ++c) {
                ws.state[static_cast<std::size_t>(plan.carry_slots[c])] = out.tensors[c];
                ws.present[static_cast<std::size_t>(plan.carry_slots[c])] = 1;
            }
            ws.alive.push_back(std::move(out));  // state now points into the engine's memory
        }
    }
    finish_unwritten_outputs(result, allocated, batch);
    return true;
}

void Model::Impl::run_rows(const std::vector<TensorView>& inputs, int64_t batch, RunResult& result,
                           uint64_t& engine_ns) const {
    if (batch == 1 && conditional) {
        if (manifest.conditional_after_first_exit) {
            auto ws = workspaces.acquire();
            if (run_segments(inputs, 1, *ws, result, engine_ns, 1)) return;  // exit 0 took the row
        }
        run_conditional(inputs, result, engine_ns);
    } else {
        auto ws = workspaces.acquire();
        run_segments(inputs, batch, *ws, result, engine_ns);
    }
}

void Model::Impl::run_by_length(const std::vector<TensorView>& inputs, int64_t batch, RunResult& result,
                                uint64_t& engine_ns) const {
    // exitc.runtime.ExitModel.run: the rows split by length (length_chunks), each part cut to its
    // longest row and run alone, its results scattered back to request order.
    const SequenceSpec& seq = *manifest.sequence;
    const std::vector<int64_t> lengths = row_lengths(inputs[static_cast<std::size_t>(sequence_mask)]);
    const std::vector<std::vector<int64_t>> chunks = length_chunks(lengths, seq.call_rows, seq.length);
    std::vector<int64_t> identity;
    if (chunks.size() == 1) {  // one part: the rows keep their order
        identity.resize(static_cast<std::size_t>(batch));
        for (int64_t i = 0; i < batch; ++i) identity[static_cast<std::size_t>(i)] = i;
    }
    std::vector<uint8_t> allocated(manifest.outputs.size(), 0);
    result.exit_index.assign(static_cast<std::size_t>(batch), -1);
    for (const auto& chunk : chunks) {
        const std::vector<int64_t>& rows = chunks.size() == 1 ? identity : chunk;
        const auto count = static_cast<int64_t>(rows.size());
        int64_t longest = 1;
        for (int64_t r : rows) longest = std::max(longest, lengths[static_cast<std::size_t>(r)]);
        std::vector<Tensor> owned;
        owned.reserve(inputs.size());
        std::vector<TensorView> part(inputs.size());
        for (std::size_t i = 0; i < inputs.size(); ++i) {
            const bool trim = sequence_input[i] && longest < seq.length;
            if (!trim && chunks.size() == 1) {  // all rows in order, full length: the caller's memory
                part[i] = inputs[i];
                continue;
            }
            owned.push_back(take_rows(inputs[i], manifest.inputs[i].batch_axis, rows.data(), count, seq.axis,
                                      trim ? longest : -1));
            part[i] = owned.back().view();
        }
        RunResult sub;
        sub.outputs.resize(manifest.outputs.size());
        run_rows(part, count, sub, engine_ns);
        for (std::size_t k = 0; k < manifest.outputs.size(); ++k)
            write_rows(result, allocated, static_cast<int>(k), sub.outputs[k].view(), rows.data(), batch,
                       "sequence part");
        for (int64_t i = 0; i < count; ++i)
            result.exit_index[static_cast<std::size_t>(rows[static_cast<std::size_t>(i)])] =
                sub.exit_index[static_cast<std::size_t>(i)];
    }
}

RunResult Model::Impl::run(const std::vector<NamedTensorView>& feeds) const {
    std::vector<TensorView> inputs;
    const int64_t batch = validate_feeds(feeds, inputs);
    // Timing (ExitStats): everything from here to the end of the call is overhead, except the
    // engine runs, which run_segments / run_conditional time themselves (two clock reads each).
    const Clock::time_point call_start = Clock::now();
    uint64_t call_engine_ns = 0;
    RunResult result;
    for (const auto& spec : manifest.outputs) result.output_names.push_back(spec.name);
    result.outputs.resize(manifest.outputs.size());
    if (batch == 0) {
        finish_unwritten_outputs(result, std::vector<uint8_t>(manifest.outputs.size(), 0), 0);
    } else if (manifest.sequence) {
        run_by_length(inputs, batch, result, call_engine_ns);
    } else {
        run_rows(inputs, batch, result, call_engine_ns);
    }
    for (int64_t e : result.exit_index) {
        if (e < 0) throw Error(ErrorCode::kInternal, "a row received no result (bug in exitc)");
        exit_counts[static_cast<std::size_t>(e)].fetch_add(1, std::memory_order_relaxed);
    }
    const uint64_t call_ns = nanoseconds_between(call_start, Clock::now());
    engine_ns.fetch_add(call_engine_ns, std::memory_order_relaxed);
    overhead_ns.fetch_add(call_ns > call_engine_ns ? call_ns - call_engine_ns : 0, std::memory_order_relaxed);
    calls.fetch_add(1, std::memory_order_relaxed);
    return result;
}

RunResult Model::run(const std::vector<NamedTensorView>& inputs) const { return impl_->run(inputs); }

int64_t Model::check_feeds(const std::vector<NamedTensorView>& inputs, std::vector<TensorView>& by_input) const {
    return impl_->validate_feeds(inputs, by_input);
}

ExecutorOutputs Model::run_segment(std::size_t segment, const std::vector<TensorView>& feeds) const {
    if (segment >= impl_->segments.size())
        throw Error(ErrorCode::kInvalidArgument, "segment " + std::to_string(segment) + " does not exist (the model has " +
                                                     std::to_string(impl_->segments.size()) + ")");
    const SegmentPlan& plan = impl_->segments[segment];
    if (feeds.size() != plan.feed_names.size())
        throw Error(ErrorCode::kInvalidArgument, plan.label + ": got " + std::to_string(feeds.size()) +
                                                     " feeds, the segment reads " + std::to_string(plan.feed_names.size()));
    int64_t rows = -1;
    for (std::size_t i = 0; i < feeds.size(); ++i) {
        const TensorSpec& spec = impl_->slots[static_cast<std::size_t>(plan.feed_slots[i])];
        const TensorView& v = feeds[i];
        const auto axis = static_cast<std::size_t>(spec.batch_axis);
        if (v.dtype != spec.dtype || v.shape.rank() != spec.shape.size())
            throw Error(ErrorCode::kInvalidArgument, plan.label + ": feed '" + spec.name + "' is " +
                                                         std::string(dtype_name(v.dtype)) + " " + v.shape.to_string() +
                                                         ", expected " + std::string(dtype_name(spec.dtype)) +
                                                         " of rank " + std::to_string(spec.shape.size()));
        if (rows < 0) rows = v.shape[axis];
        else if (v.shape[axis] != rows)
            throw Error(ErrorCode::kInvalidArgument, plan.label + ": feeds disagree on the number of rows");
    }
    ExecutorOutputs out = plan.executor->run(plan.feed_names, feeds, plan.output_names);
    if (out.tensors.size() != plan.output_names.size())
        throw Error(ErrorCode::kBackend, plan.label + ": engine returned " + std::to_string(out.tensors.size()) +
                                             " outputs, expected " + std::to_string(plan.output_names.size()));
    for (std::size_t c = 0; c < plan.carry_slots.size(); ++c) {
        const TensorSpec& spec = impl_->slots[static_cast<std::size_t>(plan.carry_slots[c])];
        const TensorView& v = out.tensors[c];
        if (v.dtype != spec.dtype || v.shape.rank() != spec.shape.size() ||
            v.shape[static_cast<std::size_t>(spec.batch_axis)] != rows)
            throw Error(ErrorCode::kBackend, plan.label + ": carried tensor '" + spec.name + "' is " +
                                                 std::string(dtype_name(v.dtype)) + " " + v.shape.to_string() +
                                                 ", expected " + std::to_string(rows) + " rows on axis " +
                                                 std::to_string(spec.batch_axis));
    }
    const Manifest& m = impl_->manifest;
    if (plan.exit) {
        impl_->check_exit_outputs(plan, out, rows);
    } else {
        for (std::size_t k = 0; k < m.outputs.size(); ++k) {
            const TensorSpec& spec = m.outputs[k];
            const TensorView& v = out.tensors[plan.carry_slots.size() + k];
            const auto axis = static_cast<std::size_t>(spec.batch_axis);
            if (v.dtype != spec.dtype || v.shape.rank() != spec.shape.size() || v.shape[axis] != rows)
                throw Error(ErrorCode::kBackend, plan.label + ": output '" + spec.name + "' is " +
                                                     std::string(dtype_name(v.dtype)) + " " + v.shape.to_string() +
                                                     ", expected " + std::string(dtype_name(spec.dtype)) + " with " +
                                                     std::to_string(rows) + " rows");
        }
    }
    return out;
}
const Manifest& Model::manifest() const noexcept { return impl_->manifest; }
const std::string& Model::artifact_dir() const noexcept { return impl_->artifact_dir; }
std::size_t Model::num_exits() const noexcept { return impl_->manifest.num_exits(); }
bool Model::has_conditional() const noexcept { return impl_->conditional != nullptr; }

ExitStats Model::stats() const {
    ExitStats stats;
    for (std::size_t i = 0; i <= num_exits(); ++i) {
        stats.rows_per_exit.push_back(impl_->exit_counts[i].load(std::memory_order_relaxed));
        stats.rows += stats.rows_per_exit.back();
    }
    stats.calls = impl_->calls.load(std::memory_order_relaxed);
    stats.engine_seconds = static_cast<double>(impl_->engine_ns.load(std::memory_order_relaxed)) * 1e-9;
    stats.overhead_seconds = static_cast<double>(impl_->overhead_ns.load(std::memory_order_relaxed)) * 1e-9;
    return stats;
}

void Model::reset_stats() {
    for (std::size_t i = 0; i <= num_exits(); ++i) impl_->exit_counts[i].store(0, std::memory_order_relaxed);
    impl_->calls.store(0, std::memory_order_relaxed);
    impl_->engine_ns.store(0, std::memory_order_relaxed);
    impl_->overhead_ns.store(0, std::memory_order_relaxed);
}

}  // namespace exitc
