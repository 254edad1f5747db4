"""torch.fx passes: trace a PyTorch classifier, find exit points, slice it into segments.

This is the PyTorch twin of :mod:`.normalize` + :mod:`.candidates` + :mod:`.split`. It reuses the
ONNX passes instead of re-implementing them: the traced graph is mirrored as a *shadow* ONNX graph
(one node per fx node, op types mapped onto their ONNX names, observed shapes as value_info, no
weights) and :func:`exitc.passes.candidates.find_candidates` runs on that, so candidate selection
follows exactly the same cut rule (one batch-major activation plus at most a few much smaller
batch-major side tensors cross the cut; cheap computations from the graph inputs are recomputed).

* :func:`trace`: symbolic tracing; a failure names the submodule whose ``forward`` failed.
* :func:`observe`: shape propagation at batch 2 and 3 (like ``normalize.observe_shapes``).
* :func:`find_fx_candidates`: candidates (``Candidate.tensor`` is an fx node name).
* :func:`match_tensors`: which fx node holds the value of a tensor of the exported ONNX model, so
  that the ONNX passes' candidates can be placed in the fx graph (see :mod:`exitc.pytorch.frontend`).
* :func:`extract_segment` / :func:`build_fx_segments`: standalone GraphModules per segment.
* :func:`pool_features` / :class:`ExitHeadModule`: exit heads with the pooling of
  :mod:`.heads` (nchw: concat(global avg, global max, grid of averages or random-filter features); btc: concat(masked mean, first token);
  bf: identity), the fitted layers and the exit gate.

torch is imported here and only here (and in :mod:`exitc.pytorch`); the ONNX path never
imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import onnx
import torch
import torch.fx as fx
from onnx import TensorProto, helper

from ..errors import ExitcError

from .candidates import HEAVY_OPS, Candidate, find_candidates
from .graph import BATCH
from ..predictions import LOG_PROBABILITIES, LOGITS, PROBABILITIES
from .heads import EPS, ExitHead, NchwPooling, answer_shape, binary_answer


class TraceFailure(ExitcError):
    """Symbolic tracing failed; ``module_path`` names the submodule whose forward failed."""

    def __init__(self, message: str, module_path: str, module_type: str):
        super().__init__(message)
        self.module_path = module_path
        self.module_type = module_type


# --------------------------------------------------------------------------------------------
# tracing


class _PathTracer(fx.Tracer):
    """A Tracer that remembers which (sub)module's forward is being traced."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, str]] = []

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        self.stack.append((path, type(m).__name__))
        out = super().call_module(m, forward, args, kwargs)  # on failure the stack keeps the culprit
        self.stack.pop()
        return out

    def trace(self, root, concrete_args=None):
        self.stack = [("", type(root).__name__)]
        return super().trace(root, concrete_args)


def trace(module: torch.nn.Module, concrete_args: dict | None = None) -> fx.GraphModule:
    """Symbolically trace `module` (in eval mode).

    Guarantees: the returned GraphModule computes the same function with the same torch ops, and
    its placeholder nodes are named after the forward's arguments. On
    failure raises :class:`TraceFailure` whose message names the innermost submodule (qualified
    name and class) whose ``forward`` could not be traced, e.g. because of data-dependent control
    flow, and the original error's first line.
    """
    tracer = _PathTracer()
    try:
        graph = tracer.trace(module, concrete_args)
    except Exception as exc:
        path, kind = tracer.stack[-1] if tracer.stack else ("", type(module).__name__)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"submodule {path!r} ({kind})" if path else f"the top-level module ({kind})"
        raise TraceFailure(f"torch.fx cannot trace {where}: {first}", path, kind) from exc
    # torch.fx renames a placeholder whose argument shadows a builtin (nn.Sequential's `input`
    # becomes node `input_1`); every pass here keys graph inputs by node name and the feeds by
    # argument name, so the placeholder nodes take their arguments' names back.
    taken = {n.name for n in graph.nodes}
    for n in graph.nodes:
        if n.op == "placeholder" and n.name != n.target and n.target not in taken:
            taken.discard(n.name)
            n.name = n.target
            taken.add(n.name)
    name = type(module).__name__
    return fx.GraphModule(tracer.root, graph, name)


# --------------------------------------------------------------------------------------------
# shape observation


@dataclass
class Observed:
    """A value observed at two batch sizes."""

    is_tensor: bool
    dtype: torch.dtype | None = None
    shape: list = field(default_factory=list)   # "batch" | int | None per dim

    @property
    def batch_major(self) -> bool:
        return self.is_tensor and len(self.shape) >= 1 and self.shape[0] == BATCH


class _Recorder(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n):
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def observe(gm: fx.GraphModule, feeds2: dict[str, torch.Tensor], feeds3: dict[str, torch.Tensor]) -> dict[str, Observed]:
    """Run `gm` on the same inputs at batch 2 and batch 3 and record every node's value.

    Guarantees: every tensor-valued node gets an :class:`Observed` whose dim 0 is ``"batch"`` iff
    it equalled the batch size in both runs; other dims are the observed size if equal in both runs,
    else None. Non-tensor nodes are recorded with ``is_tensor=False``.
    """
    runs = []
    for feeds in (feeds2, feeds3):
        rec = _Recorder(gm)
        with torch.no_grad():
            rec.run(*[feeds[p.target] for p in gm.graph.nodes if p.op == "placeholder"])
        runs.append(rec.values)
    out = {}
    for n in gm.graph.nodes:
        a, b = runs[0].get(n.name), runs[1].get(n.name)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == b.dim():
            bm = a.dim() >= 1 and a.shape[0] == 2 and b.shape[0] == 3
            dims = [BATCH if (i == 0 and bm) else (int(x) if x == y else None)
                    for i, (x, y) in enumerate(zip(a.shape, b.shape))]
            out[n.name] = Observed(True, a.dtype, dims)
        else:
            out[n.name] = Observed(False)
    return out


# --------------------------------------------------------------------------------------------
# the shadow ONNX graph and candidates

_FUNC_OPS = {
    "add": "Add", "iadd": "Add", "sub": "Sub", "isub": "Sub", "mul": "Mul", "imul": "Mul", "truediv": "Div",
    "div": "Div", "floordiv": "Div", "neg": "Neg", "getitem": "Gather", "getattr": "Shape", "size": "Shape",
    "dim": "Shape", "view": "Reshape", "reshape": "Reshape", "flatten": "Flatten", "unsqueeze": "Unsqueeze",
    "squeeze": "Squeeze", "to": "Cast", "float": "Cast", "long": "Cast", "int": "Cast", "bool": "Cast",
    "type_as": "Cast", "type": "Cast", "eq": "Equal", "ne": "Equal", "lt": "Less", "le": "LessOrEqual",
    "gt": "Greater", "ge": "GreaterOrEqual", "logical_not": "Not", "invert": "Not", "and_": "And", "or_": "Or",
    "masked_fill": "Where", "where": "Where", "transpose": "Transpose", "permute": "Transpose",
    "contiguous": "Identity", "expand": "Expand", "expand_as": "Expand", "repeat": "Tile", "arange": "Range",
    "cat": "Concat", "concat": "Concat", "ones_like": "ConstantOfShape", "zeros_like": "ConstantOfShape",
    "pow": "Pow", "sqrt": "Sqrt", "exp": "Exp", "log": "Log", "clamp": "Clip", "abs": "Abs",
    "matmul": "MatMul", "bmm": "MatMul", "mm": "MatMul", "einsum": "Einsum", "linear": "Gemm",
    "conv1d": "Conv", "conv2d": "Conv", "conv3d": "Conv", "scaled_dot_product_attention": "Attention",
    "relu": "Relu", "softmax": "Softmax", "gelu": "Gelu", "sigmoid": "Sigmoid", "tanh": "Tanh",
    "layer_norm": "LayerNormalization", "batch_norm": "BatchNormalization", "adaptive_avg_pool2d": "GlobalAveragePool",
    "mean": "ReduceMean", "sum": "ReduceSum", "max_pool2d": "MaxPool", "avg_pool2d": "AveragePool",
}
_MODULE_OPS = {
    "Conv1d": "Conv", "Conv2d": "Conv", "Conv3d": "Conv", "ConvTranspose2d": "ConvTranspose", "Linear": "Gemm",
    "Embedding": "Gather", "MultiheadAttention": "Attention", "LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN",
    "BatchNorm1d": "BatchNormalization", "BatchNorm2d": "BatchNormalization", "LayerNorm": "LayerNormalization",
    "ReLU": "Relu", "GELU": "Gelu", "Identity": "Identity", "Flatten": "Flatten", "Dropout": "Identity",
}
# Modules/functions whose weights decide the heavy-op cost estimate (weight read as input 1).
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "Gather"}


def _onnx_dtype(dtype: torch.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(torch.empty((), dtype=dtype).numpy().dtype)


def _op_type(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "get_attr":
        return "Constant"
    if n.op == "call_module":
        return _MODULE_OPS.get(type(gm.get_submodule(n.target)).__name__, "FxModule")
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    return _FUNC_OPS.get(name, "FxOp")


def node_args(n: fx.Node) -> list[fx.Node]:
    """The fx nodes `n` reads (positional and keyword arguments, nested in containers)."""
    found: list[fx.Node] = []
    fx.node.map_arg((n.args, n.kwargs), lambda a: found.append(a) or a)
    return found


def shadow_onnx(gm: fx.GraphModule, obs: dict[str, Observed]) -> onnx.ModelProto:
    """The traced graph as an ONNX graph good enough for :class:`GraphIndex`-based passes.

    Guarantees: one ONNX node per fx node that is neither a placeholder nor the output, in the same
    (topological) order, with output name = fx node name and inputs = the fx nodes it reads
    (weights of Conv/Linear/Embedding modules appear as data-less initializers so that the FLOPs
    estimate sees their shapes); placeholders are graph inputs; observed tensor shapes are value_info.
    The model is not runnable.
    """
    nodes, inits, value_info, inputs, outputs = [], [], [], [], []

    def vi(name):
        o = obs.get(name)
        if o is None or not o.is_tensor:
            return None
        return helper.make_tensor_value_info(name, _onnx_dtype(o.dtype), o.shape)

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            v = vi(n.name)
            inputs.append(v if v is not None else helper.make_empty_tensor_value_info(n.name))
            continue
        if n.op == "output":
            outs = node_args(n)
            outputs = [vi(o.name) or helper.make_empty_tensor_value_info(o.name) for o in outs]
            continue
        op = _op_type(gm, n)
        ins = [a.name for a in node_args(n)]
        if n.op == "call_module" and op in _WEIGHTED:
            w = getattr(gm.get_submodule(n.target), "weight", None)
            if isinstance(w, torch.Tensor):
                wname = f"{n.target}.weight"
                t = TensorProto(name=wname, data_type=_onnx_dtype(w.dtype), dims=list(w.shape))
                inits.append(t)
                ins = ([wname] + ins) if op == "Gather" else (ins[:1] + [wname] + ins[1:])
        nodes.append(helper.make_node(op, ins, [n.name], name=n.name))
        v = vi(n.name)
        if v is not None:
            value_info.append(v)
    graph = helper.make_graph(nodes, "fx_shadow", inputs, outputs, initializer=inits, value_info=value_info)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def find_fx_candidates(gm: fx.GraphModule, obs: dict[str, Observed], max_candidates: int = 24) -> list[Candidate]:
    """Candidate exits of a traced classifier, by the ONNX cut rule (:func:`find_candidates`).

    Guarantees those of :func:`find_candidates`: for every candidate the carried tensors (fx node
    names), the graph inputs and the module's parameters suffice to compute the rest of the model;
    candidates are in graph order with distinct main tensors.
    """
    return find_candidates(shadow_onnx(gm, obs), max_candidates=max_candidates)


def record_values(gm: fx.GraphModule, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor-valued node's value when `gm` runs on `feeds` (keyed by fx node name)."""
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(*[feeds[p.target] for p in gm.graph.nodes if p.op == "placeholder"])
    return {k: v for k, v in rec.values.items() if isinstance(v, torch.Tensor)}


def match_tensors(fx_values: dict[str, torch.Tensor], targets: dict[str, np.ndarray],
                  rtol: float = 1e-3) -> dict[str, str]:
    """For each target (e.g. an ONNX tensor of the exported module, computed on the same rows), the
    fx node holding the same value: same shape, max |difference| <= rtol * (1 + max |target|).

    Guarantees: a target is mapped only if some node matches; among several matches (values passed
    through unchanged, e.g. an eval-mode Dropout) the one with the smallest difference, then the
    latest in graph order, is taken. Matching by value rather than by name is what makes it work
    across exporters, which rename and fuse (BatchNorm folded into Conv differs by ~1e-6).
    """
    order = list(fx_values)
    by_shape: dict[tuple, list[str]] = {}
    for name in order:
        v = fx_values[name]
        if v.is_floating_point():
            by_shape.setdefault(tuple(v.shape), []).append(name)
    found: dict[str, str] = {}
    for target, value in targets.items():
        ref = torch.from_numpy(np.asarray(value, np.float32))
        tol = rtol * (1.0 + float(ref.abs().max())) if ref.numel() else 0.0
        best: tuple[float, int, str] | None = None
        for name in by_shape.get(tuple(ref.shape), []):
            diff = float((fx_values[name].float() - ref).abs().max())
            if diff <= tol:
                key = (diff, -order.index(name), name)
                if best is None or key < best:
                    best = key
        if best is not None:
            found[target] = best[2]
    return found


def heavy_op_count(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op in ("call_module", "call_function", "call_method")
               and _op_type(gm, n) in HEAVY_OPS)


def cut_recomputes_nothing(gm: fx.GraphModule, cut: Candidate) -> bool:
    """True if segments split at `cut` (carrying only its tensors) run each heavy op (Conv,
    MatMul, ...) of `gm` exactly once; false if the later segment would have to recompute part of
    the model before the cut (some other activation crosses it)."""
    return sum(heavy_op_count(s.module) for s in build_fx_segments(gm, [cut])) == heavy_op_count(gm)


# --------------------------------------------------------------------------------------------
# segments


def input_names(gm: fx.GraphModule) -> list[str]:
    return [n.target for n in gm.graph.nodes if n.op == "placeholder"]


def output_node(gm: fx.GraphModule) -> fx.Node:
    """The single tensor the traced module returns (the prediction output)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    val = out.args[0]
    if isinstance(val, (tuple, list)) and len(val) == 1:
        val = val[0]
    if not isinstance(val, fx.Node):
        raise ExitcError(f"{type(gm).__name__}: forward must return one tensor [batch, classes] "
                         f"(it returns {type(val).__name__})")
    return val


def extract_segment(gm: fx.GraphModule, available: Sequence[str], outputs: Sequence[str], name: str) -> fx.GraphModule:
    """The GraphModule computing `outputs` (fx node names) from `available` tensors and the graph inputs.

    Guarantees: nodes are copied unchanged (same ops, same parameters, shared with `gm`) in the
    original order; placeholders are the graph inputs and available tensors actually read, in that
    order (graph inputs first); it returns a tuple of `outputs`. Raises ValueError if some tensor
    is neither computable from those nor available.
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    stop = set(available)
    graph_inputs = input_names(gm)
    needed: set[str] = set()
    todo = list(outputs)
    while todo:
        nm = todo.pop()
        if nm in needed:
            continue
        needed.add(nm)
        node = by_name[nm]
        if nm in stop or node.op == "placeholder":
            continue
        todo.extend(a.name for a in node_args(node))
    g = fx.Graph()
    env: dict[str, fx.Node] = {}
    for nm in graph_inputs + [a for a in available if a not in graph_inputs]:
        if nm in needed:
            env[nm] = g.placeholder(nm)
    for node in gm.graph.nodes:
        if node.name in needed and node.name not in env:
            if node.op == "placeholder":
                raise ValueError(f"extract_segment({name}): input {node.name} missing")
            env[node.name] = g.node_copy(node, lambda a: env[a.name])
    g.output(tuple(env[o] for o in outputs))
    seg = fx.GraphModule(gm, g, name)
    seg.input_names = [p.target for p in g.nodes if p.op == "placeholder"]
    return seg


@dataclass
class FxSegment:
    index: int
    module: fx.GraphModule
    inputs: list[str]        # feed names (graph inputs and carried tensors) in call order
    carry_out: list[str]     # carried tensors first produced here
    outputs: list[str]       # what module returns: carry_out (+ the model output if last)


def build_fx_segments(gm: fx.GraphModule, cuts: Sequence[Candidate]) -> list[FxSegment]:
    """Segments for exits at `cuts` (graph order), like :func:`.split.build_segments`.

    Guarantees: len(cuts)+1 segments; segment k returns the carried tensors of cut k neither
    produced earlier nor graph inputs (possibly none); the last returns the model output. Running them in order, feeding each the graph
    inputs and earlier carried tensors, computes exactly the ops of `gm`.
    """
    final = output_node(gm).name
    graph_inputs = set(input_names(gm))
    segments, available = [], []
    for k in range(len(cuts) + 1):
        last = k == len(cuts)
        # Graph inputs are never carried (as in .split.build_segments): every segment may read
        # them, and an input exit (cut 0) has an empty segment whose head reads the graph input.
        targets = [final] if last else [t for t in cuts[k].carried if t not in available and t not in graph_inputs]
        mod = extract_segment(gm, available, targets, f"segment_{k}")
        segments.append(FxSegment(k, mod, list(mod.input_names), [] if last else targets, targets))
        if not last:
            available.extend(targets)
    return segments


# --------------------------------------------------------------------------------------------
# heads


def pool_features(x: torch.Tensor, layout: str, mask: torch.Tensor | None = None,
                  pooling: NchwPooling | None = None, filters: torch.Tensor | None = None) -> torch.Tensor:
    """Pooled features [batch, D], the definition of :func:`.heads.pooling_nodes` in torch
    (nchw: global average, global max and, per `pooling` (:func:`.heads.nchw_pooling`), the grid
    of averages or the random-filter features exactly as the ONNX nodes compute them).
    `filters`: the random filters as a tensor, if the caller holds them (ExitHeadModule keeps
    them as a buffer); otherwise they are rebuilt from `pooling`."""
    x = x.float()
    if layout == "ncl":  # [B, C, L] as [B, C, L, 1], as the ONNX nodes view it
        x, layout = x.unsqueeze(-1), "nchw"
    if layout == "nchw":
        F = torch.nn.functional
        parts = [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        if pooling is not None and pooling.grid is not None:
            parts.append(F.avg_pool2d(x, kernel_size=pooling.grid, stride=pooling.grid).flatten(1))
        if pooling is not None and pooling.filters is not None:
            rf = pooling.filters
            small = F.avg_pool2d(x, kernel_size=rf.pre, stride=rf.pre) if rf.pre != (1, 1) else x
            w = filters if filters is not None else torch.from_numpy(rf.weights()).to(x.device)
            resp = torch.relu(F.conv2d(small, w))
            parts.append(F.avg_pool2d(resp, kernel_size=rf.cell, stride=rf.cell).flatten(1))
        return torch.cat(parts, dim=1)
    if layout == "btc":
        if mask is not None:
            m = mask.float().reshape(mask.shape[0], 1, -1)
            msum = torch.matmul(m, x)
            cnt = torch.matmul(m, m.transpose(1, 2)).clamp_min(EPS)
            mean = (msum / cnt).flatten(1)
        else:
            mean = x.mean(dim=1)
        return torch.cat([mean, x[:, 0]], dim=1)
    if layout == "tbc":  # [time, batch, C]: mean, max and last step over time
        return torch.cat([x.mean(dim=0), x.amax(dim=0), x[-1]], dim=1)
    if layout == "bf":
        return x
    raise ValueError(f"unknown layout {layout!r}")


class ExitHeadModule(torch.nn.Module):
    """Pooling + fitted layers (ReLU between) + exit gate: the function of
    :func:`.heads.head_forward` (numpy) and :func:`.heads.head_nodes` (ONNX) in torch.
    forward(x, mask=None, prev=None) returns (its answer in `prediction_kind`, score [batch]); `prev`, the previous
    exit's probabilities, is needed by a chained gate (6 gate weights) and ignored otherwise."""

    def __init__(self, layout: str, layers, gate_w, gate_b: float, threshold: float = 2.0,
                 prediction_kind: str = LOGITS, pooling: NchwPooling | None = None, binary: bool = False,
                 class_dims: tuple[int, ...] | None = None):
        super().__init__()
        self.layout = layout
        self.pooling = pooling
        self.n_layers = len(layers)
        for i, (w, b) in enumerate(layers):
            self.register_buffer(f"w{i}", torch.from_numpy(np.ascontiguousarray(w, np.float32)))
            self.register_buffer(f"b{i}", torch.from_numpy(np.ascontiguousarray(b, np.float32)))
        gw = np.asarray(gate_w, np.float32).reshape(-1, 1).copy()
        if len(gw) not in (3, 6):
            raise ValueError(f"gate of {len(gw)} weights: 3 (plain) or 6 (chained) expected")
        self.register_buffer("gate_w", torch.from_numpy(gw))
        self.register_buffer("gate_b", torch.tensor([float(gate_b)], dtype=torch.float32))
        # Built once here, not on every forward call (and moved with the module like the layers).
        rf = pooling.filters if pooling is not None else None
        self.register_buffer("filters", torch.from_numpy(rf.weights()) if rf is not None else None)
        self.threshold = float(threshold)
        self.prediction_kind = prediction_kind
        self.binary = binary
        self.class_dims = class_dims

    @classmethod
    def from_head(cls, head: ExitHead) -> "ExitHeadModule":
        """The torch module of an ExitHead: same layout, pooling, layers, gate and output form;
        the threshold is head.meta["threshold"] where set (else 2.0: never exits)."""
        return cls(head.layout, head.layers, head.gate_w, head.gate_b, threshold=head.meta.get("threshold", 2.0),
                   prediction_kind=head.prediction_kind, pooling=head.pooling, binary=head.binary,
                   class_dims=head.class_dims)

    @property
    def chained(self) -> bool:
        return self.gate_w.shape[0] == 6

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, prev: torch.Tensor | None = None):
        answer, score, _ = self.answer_score_probs(x, mask, prev)
        return answer, score

    def answer_score_probs(self, x: torch.Tensor, mask: torch.Tensor | None = None, prev: torch.Tensor | None = None):
        """(answer, score, probabilities [batch, classes]): the forward's two outputs and the
        head's class probabilities (what a chained gate after it reads; a binary head's two
        classes, not its one-score answer)."""
        h = pool_features(x, self.layout, mask, self.pooling, self.filters)
        for i in range(self.n_layers):
            h = torch.matmul(h, getattr(self, f"w{i}")) + getattr(self, f"b{i}")
            if i < self.n_layers - 1:
                h = torch.relu(h)
        prob = torch.softmax(h, dim=1)
        top = torch.topk(prob, 2, dim=1).values
        ent = -torch.matmul(prob * torch.log(prob + EPS), torch.ones(prob.shape[1], 1))
        cols = [top[:, :1], top[:, :1] - top[:, 1:2], ent]
        if self.chained:
            # (agreement mass with the previous exit, its confidence, its probability for this
            # head's class), as heads.gate_features
            if prev is None:
                raise ValueError("a chained gate needs the previous exit's probabilities (prev)")
            prev = prev.float()
            cls = prob.argmax(dim=1, keepdim=True)
            cols += [(prob * prev).sum(dim=1, keepdim=True), prev.amax(dim=1, keepdim=True), prev.gather(1, cls)]
        feats = torch.cat(cols, dim=1)
        score = torch.sigmoid(torch.matmul(feats, self.gate_w) + self.gate_b).reshape(-1)
        if self.prediction_kind == PROBABILITIES:
            answer = prob
        elif self.prediction_kind == LOG_PROBABILITIES:
            answer = torch.log_softmax(h, dim=1)
        else:
            answer = h
        answer = binary_answer(answer, self.prediction_kind == PROBABILITIES) if self.binary else answer
        return answer_shape(answer, self.class_dims), score, prob
