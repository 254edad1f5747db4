"""Split a model at chosen exits into segments, and build the graphs derived from that split.

* :func:`probe_model`: the original model plus pooled-feature outputs at every candidate
  (used once over the calibration data for self-distillation).
* :func:`build_segments`: one standalone model per segment, each exit head fused into the
  segment that computes its activation (one runtime call per segment).
* :func:`head_model`: a head alone, for profiling its cost.
* :func:`conditional_model`: the single-graph form with nested ONNX ``If`` nodes.

All functions return new models and leave their inputs untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from .candidates import Candidate
from .graph import GraphIndex, const_tensor, default_opset, extract
from .heads import ExitHead, head_nodes, pooling_nodes

EXIT_INDEX = "exitc_exit_index"


@dataclass
class SegmentGraph:
    index: int
    model: onnx.ModelProto
    inputs: list[str]                 # feeds: graph inputs and carried tensors
    carry_out: list[str]              # carried tensors first produced here
    head: ExitHead | None = None      # fused exit head, if any
    outputs: list[str] = field(default_factory=list)  # last segment: model outputs


def find_mask_input(model: onnx.ModelProto) -> str | None:
    """The attention-mask graph input of a token model (rank 2, batch-major, named *mask*)."""
    idx = GraphIndex.build(model)
    for name in idx.graph_inputs:
        info = idx.infos.get(name)
        if info is not None and info.rank == 2 and "mask" in name.lower():
            return name
    return None


def _elem_type(idx: GraphIndex, name: str) -> int:
    info = idx.infos.get(name)
    return info.elem_type if info is not None else TensorProto.FLOAT


def probe_name(k: int) -> str:
    return f"exitc_probe{k}"


def probe_model(model: onnx.ModelProto, candidates: list[Candidate], mask_input: str | None) -> onnx.ModelProto:
    """The model with extra outputs ``exitc_probe{k}`` = pooled features [batch, D_k] at candidate k."""
    model = copy.deepcopy(model)
    idx = GraphIndex.build(model)
    g = model.graph
    mask_type = _elem_type(idx, mask_input) if mask_input else None
    for k, c in enumerate(candidates):
        nodes, inits, out = pooling_nodes(c.tensor, c.layout, _elem_type(idx, c.tensor), mask_input,
                                          f"exitc_p{k}", mask_type, c.pooling)
        g.node.extend(nodes)
        g.initializer.extend(inits)
        g.node.append(helper.make_node("Identity", [out], [probe_name(k)], name=f"exitc_p{k}_out"))
        g.output.append(helper.make_tensor_value_info(probe_name(k), TensorProto.FLOAT, ["batch", None]))
    return model


def build_segments(model: onnx.ModelProto, cuts: list[Candidate], heads: list[ExitHead | None],
                   mask_input: str | None = None) -> list[SegmentGraph]:
    """Segments for exits at `cuts` (graph order). ``heads[k]`` is fused into segment k (None:
    no head, e.g. for profiling the bare backbone slices). Returns len(cuts)+1 segments, each
    declaring its inputs and outputs and no inner value_info."""
    idx = GraphIndex.build(model)
    output = idx.graph_outputs[0]
    mask_type = _elem_type(idx, mask_input) if mask_input else None
    segments: list[SegmentGraph] = []
    available: list[str] = []  # carried tensors produced by earlier segments
    head_infos: dict[str, onnx.ValueInfoProto] = {}  # carried tensors made by heads (chained gates)
    for k in range(len(cuts) + 1):
        last = k == len(cuts)
        # Graph inputs are never carried: every segment may read them (an input exit at cut 0).
        targets = [output] if last else [t for t in cuts[k].carried if t not in available and t not in idx.graph_inputs]
        head = None if last else heads[k]
        extra_nodes, extra_inits, extra_outs = [], [], []
        if head is not None:
            extra_nodes, extra_inits, extra_outs = head_nodes(head, mask_type, _elem_type(idx, output))
        m = extract(model, inputs=available, outputs=targets, name=f"exitc_segment_{k}", index=idx,
                    extra_nodes=extra_nodes, extra_initializers=extra_inits, extra_outputs=extra_outs,
                    known_infos=head_infos)
        if head is not None and head.export_probs:
            targets = targets + [head.probs_name]
            head_infos[head.probs_name] = next(o for o in extra_outs if o.name == head.probs_name)
        # Segment inputs: whatever the extracted graph declares (earlier carried tensors it uses,
        # plus graph inputs); drop unused declared carried tensors.
        used = {i for n in m.graph.node for i in n.input}
        used |= {o.name for o in m.graph.output}
        keep_inputs = [i for i in m.graph.input if i.name in used]
        del m.graph.input[:]
        m.graph.input.extend(keep_inputs)
        # No inner shapes: ONNX Runtime infers them from the segment's inputs. The ones observed on
        # calibration rows (normalize.observe_shapes) made the segments slower: a full-depth row at
        # batch 1 paid +4.0% (p50) over the original with them and -0.3% without (nlp_austen, 256
        # test rows, interleaved), +26.6% and +25.0% on cv_native.
        del m.graph.value_info[:]
        seg = SegmentGraph(index=k, model=m, inputs=[i.name for i in keep_inputs],
                           carry_out=[] if last else targets, head=head, outputs=[output] if last else [])
        segments.append(seg)
        if not last:
            available.extend(targets)
    return segments


def head_model(model: onnx.ModelProto, head: ExitHead, mask_input: str | None) -> onnx.ModelProto:
    """A standalone model: the head reading `head.tensor` (and the mask input) as graph inputs."""
    idx = GraphIndex.build(model)
    mask_type = _elem_type(idx, mask_input) if mask_input else None
    nodes, inits, outs = head_nodes(head, mask_type, _elem_type(idx, idx.graph_outputs[0]))
    info = idx.infos[head.tensor]
    inputs = [helper.make_tensor_value_info(head.tensor, info.elem_type, info.shape)]
    if head.layout == "btc" and mask_input:
        minfo = idx.infos[mask_input]
        inputs.append(helper.make_tensor_value_info(mask_input, minfo.elem_type, minfo.shape))
    graph = helper.make_graph(nodes, f"exitc_head_{head.index}", inputs, outs, initializer=inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def original_form(model: onnx.ModelProto, num_exits: int) -> onnx.ModelProto:
    """The original model with the conditional form's interface: its outputs, then
    ``exitc_exit_index`` = `num_exits` ("ran the whole model") for every row. The artifact's batch-1
    form where exits would make the median batch-1 request slower (exitc.policy.batch1_exits)."""
    m = copy.deepcopy(model)
    g = m.graph
    out = g.output[0].name
    g.initializer.extend([const_tensor("exitc_orig_zero", np.array([0], np.int64))])
    g.node.extend([
        helper.make_node("Shape", [out], ["exitc_orig_shape"], name="exitc_orig_shape"),
        helper.make_node("Gather", ["exitc_orig_shape", "exitc_orig_zero"], ["exitc_orig_b"], axis=0,
                         name="exitc_orig_b"),
        helper.make_node("ConstantOfShape", ["exitc_orig_b"], [EXIT_INDEX],
                         value=helper.make_tensor("v", TensorProto.INT64, [1], [num_exits]), name="exitc_orig_idx")])
    g.output.append(helper.make_tensor_value_info(EXIT_INDEX, TensorProto.INT64, ["batch"]))
    return m


def conditional_model(segments: list[SegmentGraph], source: onnx.ModelProto) -> onnx.ModelProto:
    """Single graph: segment 0, then ``If(all rows exited)`` whose else-branch holds the rest.

    Rows are never compacted here, so a branch simply reuses tensors from enclosing scopes. Each
    level merges per row: rows that pass exit k take head k's output, others the deeper result,
    which makes the outputs identical to the segmented runtime's at any batch size (the form pays
    off at batch 1, where "all rows exited" is the row's own decision).
    Outputs: the model's prediction output, then ``exitc_exit_index`` (int64 [batch]).
    """
    output = segments[-1].outputs[0]
    out_vi = next(o for o in source.graph.output if o.name == output)
    out_type = out_vi.type.tensor_type.elem_type or TensorProto.FLOAT
    inits: dict[str, onnx.TensorProto] = {}
    for s in segments:
        for t in s.model.graph.initializer:
            inits.setdefault(t.name, t)

    def level(k: int, defined: set[str], out_name: str, idx_name: str) -> list[onnx.NodeProto]:
        seg = segments[k]
        nodes = [copy.deepcopy(n) for n in seg.model.graph.node
                 if not all(o in defined for o in n.output if o)]
        defined = defined | {o for n in nodes for o in n.output}
        if seg.head is None:  # last segment: rename its output inside this scope
            for n in nodes:
                for j, o in enumerate(n.output):
                    if o == output:
                        n.output[j] = f"exitc_c{k}_final"
                for j, i in enumerate(n.input):
                    if i == output:
                        n.input[j] = f"exitc_c{k}_final"
            nodes.append(helper.make_node("Identity", [f"exitc_c{k}_final"], [out_name], name=f"exitc_c{k}_fin_out"))
            nodes += [helper.make_node("Shape", [f"exitc_c{k}_final"], [f"exitc_c{k}_shape"], name=f"exitc_c{k}_shape"),
                      helper.make_node("Gather", [f"exitc_c{k}_shape", "exitc_cond_zero"], [f"exitc_c{k}_b"], axis=0,
                                       name=f"exitc_c{k}_b"),
                      helper.make_node("ConstantOfShape", [f"exitc_c{k}_b"], [idx_name],
                                       value=helper.make_tensor("v", TensorProto.INT64, [1], [k]), name=f"exitc_c{k}_idx")]
            return nodes
        h = seg.head
        thr = f"exitc_c{k}_thr"
        inits[thr] = const_tensor(thr, np.array(h.meta["threshold"], np.float32))
        p = f"exitc_c{k}"
        if default_opset(source) >= 12:
            nodes.append(helper.make_node("GreaterOrEqual", [h.score_name, thr], [f"{p}_ge"], name=f"{p}_cmp"))
        else:  # GreaterOrEqual arrived in opset 12
            nodes += [helper.make_node("Greater", [h.score_name, thr], [f"{p}_gt"], name=f"{p}_gt"),
                      helper.make_node("Equal", [h.score_name, thr], [f"{p}_eq"], name=f"{p}_eq"),
                      helper.make_node("Or", [f"{p}_gt", f"{p}_eq"], [f"{p}_ge"], name=f"{p}_cmp")]
        nodes += [
            helper.make_node("Cast", [f"{p}_ge"], [f"{p}_gef"], to=TensorProto.FLOAT, name=f"{p}_gef"),
            helper.make_node("ReduceMin", [f"{p}_gef"], [f"{p}_all"], keepdims=0, name=f"{p}_all"),
            helper.make_node("Greater", [f"{p}_all", "exitc_cond_half"], [f"{p}_cond"], name=f"{p}_cond"),
            helper.make_node("Shape", [h.score_name], [f"{p}_bshape"], name=f"{p}_bshape"),
            helper.make_node("ConstantOfShape", [f"{p}_bshape"], [f"{p}_kidx"],
                             value=helper.make_tensor("v", TensorProto.INT64, [1], [h.index]), name=f"{p}_kidx"),
        ]
        # then: every row exits here
        then_nodes = [helper.make_node("Identity", [h.logits_name], [f"{p}_then_out"], name=f"{p}_then_out"),
                      helper.make_node("Identity", [f"{p}_kidx"], [f"{p}_then_idx"], name=f"{p}_then_idx")]
        then_graph = helper.make_graph(then_nodes, f"{p}_then", [], [
            helper.make_tensor_value_info(f"{p}_then_out", out_type, None),
            helper.make_tensor_value_info(f"{p}_then_idx", TensorProto.INT64, None)])
        # else: run deeper, then take this exit's result for the rows that pass it
        deeper = level(k + 1, defined | {f"{p}_ge", f"{p}_kidx"}, f"{p}_deep_out", f"{p}_deep_idx")
        deeper += [
            helper.make_node("Reshape", [f"{p}_ge", "exitc_cond_col"], [f"{p}_gecol"], name=f"{p}_gecol"),
            helper.make_node("Where", [f"{p}_gecol", h.logits_name, f"{p}_deep_out"], [f"{p}_else_out"], name=f"{p}_sel"),
            helper.make_node("Where", [f"{p}_ge", f"{p}_kidx", f"{p}_deep_idx"], [f"{p}_else_idx"], name=f"{p}_selidx"),
        ]
        else_graph = helper.make_graph(deeper, f"{p}_else", [], [
            helper.make_tensor_value_info(f"{p}_else_out", out_type, None),
            helper.make_tensor_value_info(f"{p}_else_idx", TensorProto.INT64, None)])
        nodes.append(helper.make_node("If", [f"{p}_cond"], [out_name, idx_name], then_branch=then_graph,
                                      else_branch=else_graph, name=f"{p}_if"))
        return nodes

    inits["exitc_cond_half"] = const_tensor("exitc_cond_half", np.array(0.5, np.float32))
    inits["exitc_cond_zero"] = const_tensor("exitc_cond_zero", np.array([0], np.int64))
    # The per-row choice as [batch, 1, ...] in the prediction output's rank ([batch, classes, 1, 1]
    # outputs too), so Where broadcasts it along the batch axis.
    rank = max(2, len(out_vi.type.tensor_type.shape.dim))
    inits["exitc_cond_col"] = const_tensor("exitc_cond_col", np.array([-1] + [1] * (rank - 1), np.int64))
    graph_inputs = {i.name for i in source.graph.input}
    nodes = level(0, set(graph_inputs) | set(inits), output, EXIT_INDEX)
    inputs = [i for i in source.graph.input if i.name not in {t.name for t in source.graph.initializer}]
    graph = helper.make_graph(nodes, "exitc_conditional", inputs,
                              [out_vi, helper.make_tensor_value_info(EXIT_INDEX, TensorProto.INT64, ["batch"])],
                              initializer=list(inits.values()))
    return helper.make_model(graph, opset_imports=list(source.opset_import), ir_version=source.ir_version)
