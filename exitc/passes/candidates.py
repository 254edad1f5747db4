"""Find candidate exit points: cuts where one activation carries the whole state.

A cut at position ``i`` splits the (topologically ordered) node list into ``nodes[:i]`` and
``nodes[i:]``. The tensors crossing it are classified as

* **recomputed**: produced by a small cone of cheap ops (shape arithmetic, casts, mask
  construction) from graph inputs and initializers only; the next segment recomputes them from
  the (compacted) graph inputs, so they need not be carried;
* **carried**: everything else. The cut is a candidate if the carried set is one batch-major float
  activation (the *main* tensor, rank 2/3/4; in a quantized model its 8-bit activation, never a
  DequantizeLinear's float copy) plus at most ``max_side`` batch-major side tensors that are much
  smaller than it (e.g. a transformer's extended attention mask).

Guarantee of :func:`find_candidates`: every returned candidate's carried set, together with the
graph inputs and initializers, suffices to compute the rest of the model; candidates are returned
in graph order with distinct main tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from .graph import GraphIndex, TensorInfo
from .normalize import FLOAT_TYPES

if TYPE_CHECKING:
    from .heads import NchwPooling

# Ops cheap enough to recompute in a later segment instead of carrying their result.
LIGHT_OPS = {
    "Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "CastLike", "Constant",
    "ConstantOfShape", "Reshape", "Slice", "Expand", "Range", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Not", "And", "Or", "Where", "Add", "Sub", "Mul", "Div", "Neg", "Identity",
    "Transpose", "Tile", "Min", "Max", "Abs", "Floor", "Ceil", "Sqrt", "Trilu", "Flatten", "ReduceProd",
    "Mod", "IsNaN", "IsInf", "Sign", "GatherND", "GatherElements", "OneHot", "Xor", "BitwiseAnd", "BitwiseOr",
    "BitwiseNot", "Clip", "Reciprocal", "Pow", "Exp", "Log",
    # Quantized models (QDQ format) dequantize every weight in a node of its own, often all at the
    # start of the graph: those nodes read only initializers and are recomputed where used.
    "QuantizeLinear", "DequantizeLinear",
}
# Ops that do the model's real work; cuts separated only by other ops are equivalent.
HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "Attention", "MultiHeadAttention", "LSTM", "GRU",
             "RNN", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "FusedMatMul", "QGemm",
             "QAttention", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
# Where each heavy op reads its weight (Conv-like: [M, C/group, k...]) or its left operand
# (MatMul-like: [..., K]) for the arithmetic estimate; the QLinear forms interleave scales and
# zero points with their operands.
CONV_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3}
MATMUL_LEFT_INPUT = {"MatMul": 0, "Gemm": 0, "MatMulInteger": 0, "QLinearMatMul": 0, "FusedMatMul": 0, "QGemm": 0,
                     "MatMulIntegerToFloat": 0, "DynamicQuantizeMatMul": 0}
# 8-bit activations of a quantized model (a QuantizeLinear's output in QDQ models, a QLinearConv's
# in operator-form ones) are what its segments pass along: a cut there keeps every quantized op's
# input and output as in the original, so ONNX Runtime runs the same integer kernels in each
# segment. Their heads read them cast to float (the features are standardised per feature, so
# the quantization's scale and zero point make no difference to a head).
QUANTIZED_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8}
QUANTIZING_OPS = {"QuantizeLinear", "QLinearConv", "QLinearAdd", "QLinearMul", "QLinearMatMul", "QGemm",
                  "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid",
                  "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean"}
# Ops that pass an 8-bit activation on as it is (ONNX Runtime runs them on the integers).
QUANTIZED_PASS_OPS = {"MaxPool", "Relu", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                      "Resize", "Concat", "Slice", "Gather", "DepthToSpace", "SpaceToDepth", "Pad"}
# A recomputed cone is copied into every later segment. 64 nodes was too few for the 4-D attention
# mask transformers >= 4.4x build when exported with the TorchScript exporter (100 nodes of
# Range/Unsqueeze/Compare/Where on [batch, 1, seq, seq]); cones of light ops stay cheap next to
# the heavy op a segment runs.
MAX_RECOMPUTE_NODES = 256
SIDE_FRACTION = 1 / 16  # a side tensor holds at most this many elements per row relative to the main one
# The input exit's tensor carries at least 1/this of the elements per row that the first heavy op
# reads (a one-channel image before its three-channel normalised copy: 1/3).
INPUT_EXIT_MAX_SHRINK = 8
# An input exit that carries a tensor prepared inside the graph (_preprocessed_input_exit) carries
# at most this many elements per row relative to the graph inputs it is made from: a cast, a
# transpose or a normalisation keeps their number; a one-hot expansion (Magika's [2048] bytes to
# [2048, 257] floats) would make every later segment's rows copy 257x more at compaction.
INPUT_EXIT_MAX_GROWTH = 4


@dataclass(frozen=True)
class Candidate:
    """A possible exit point."""

    cut: int                 # nodes[:cut] run before the exit
    tensor: str              # the main activation the exit head reads
    side: tuple[str, ...]    # batch-major side tensors carried along
    layout: str              # "nchw" (B,C,H,W), "ncl" (B,C,L: 1-D conv maps), "btc" (B,T,C), "tbc" (T,B,C:
    #                          time-major, between recurrent layers; carried with batch axis 1) or "bf" (B,F)
    features: int            # channel/feature size of the main tensor (C, C or F)
    row_elements: int        # elements per row carried across the cut
    flops_fraction: float    # estimated share of the model's arithmetic before the cut
    spatial: tuple[int, int] | None = None  # (H, W) for nchw, (L, 1) for ncl activations with static size
    # The head's tensor is recomputed from the graph inputs by a light cone wherever it is needed
    # (the exit's segment computes it for the head; later segments as the original does), never
    # carried: an input exit on an input prepared inside the graph (_preprocessed_input_exit).
    recomputed: bool = False

    @property
    def carried(self) -> tuple[str, ...]:
        return self.side if self.recomputed else (self.tensor,) + self.side

    @property
    def pooling(self) -> NchwPooling | None:
        """What the head pools besides global avg/max (nchw only; see heads.nchw_pooling)."""
        from .heads import nchw_pooling

        return nchw_pooling(self.spatial, self.features) if self.layout in ("nchw", "ncl") else None


# Ops whose rank-3 data input and output are channels-first [batch, channels, length] (ONNX's 1-D
# convolution and pooling), and elementwise ops that keep that layout from an input to the output.
CHANNELS_FIRST_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
                      "InstanceNormalization", "QLinearConv", "ConvInteger"}
ELEMENTWISE_OPS = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                   "Clip", "Add", "Sub", "Mul", "Div", "Erf", "Gelu", "Softplus", "Mish", "Identity", "Dropout"}


def channels_first_1d(idx: GraphIndex) -> set[str]:
    """Rank-3 tensors laid out [batch, channels, length]: read or written by a 1-D Conv, pooling
    or normalisation, or computed elementwise from such a tensor at the same rank (a ReLU or a
    residual Add between two convolutions). Every other rank-3 activation is [batch, tokens,
    channels], as transformers keep it."""
    def rank3(name: str) -> bool:
        info = idx.infos.get(name)
        return info is not None and info.rank == 3

    found: set[str] = set()
    for node in idx.nodes:
        if node.op_type in CHANNELS_FIRST_OPS:
            found |= {t for t in (node.input[:1] if node.input else []) if rank3(t)}
            found |= {t for t in node.output[:1] if rank3(t)}
    for node in idx.nodes:  # graph order: chains of elementwise ops after a convolution
        if node.op_type in ELEMENTWISE_OPS and node.output and rank3(node.output[0]) \
                and any(t in found for t in node.input):
            found.add(node.output[0])
    return found


def quantized_activations(idx: GraphIndex) -> set[str]:
    """8-bit tensors that hold a quantized model's activations: written by a quantizing op
    (QuantizeLinear, QLinearConv, ...) or passed on from one by MaxPool, Reshape and the like.
    Other 8-bit tensors (a uint8 image input, a bool-like mask) are not activations."""
    found: set[str] = set()
    for node in idx.nodes:  # graph order
        if node.op_type in QUANTIZING_OPS or (node.op_type in QUANTIZED_PASS_OPS and node.input
                                              and node.input[0] in found):
            found |= {t for t in node.output[:1] if t in idx.infos and idx.infos[t].elem_type in QUANTIZED_TYPES}
    return found


def _layout(info: TensorInfo, channels_first: set[str] = frozenset(), quantized: set[str] = frozenset()) -> str | None:
    if not (info.elem_type in FLOAT_TYPES or info.name in quantized):
        return None
    if info.batch_axis == 1:  # [time, batch, C] between recurrent layers
        return "tbc" if info.rank == 3 and isinstance(info.shape[2], int) else None
    if not info.batch_major:
        return None
    if info.rank == 4 and isinstance(info.shape[1], int):
        return "nchw"
    if info.rank == 3 and info.name in channels_first:
        return "ncl" if isinstance(info.shape[1], int) else None
    if info.rank == 3 and isinstance(info.shape[2], int):
        return "btc"
    if info.rank == 2 and isinstance(info.shape[1], int):
        return "bf"
    return None


def _features(info: TensorInfo, layout: str) -> int:
    return int(info.shape[1] if layout in ("nchw", "ncl", "bf") else info.shape[2])  # btc, tbc: the last axis


def _spatial(info: TensorInfo, layout: str) -> tuple[int, int] | None:
    """(H, W) of an nchw map, (L, 1) of an ncl one, where static; else None."""
    dims = info.shape[2:4] if layout == "nchw" else info.shape[2:3] + [1] if layout == "ncl" else None
    return tuple(dims) if dims is not None and all(isinstance(d, int) for d in dims) else None


def _final_state(idx: GraphIndex, tensor: str) -> bool:
    """Is `tensor` a recurrent op's final state (Y_h or Y_c of RNN/GRU/LSTM: [directions, batch,
    hidden])? Such a state is 1/time of the layer's sequence output, so SIDE_FRACTION would rule
    out every cut of a classifier reading h_n over sequences shorter than 16 steps."""
    i = idx.producer.get(tensor)
    node = idx.nodes[i] if i is not None else None
    return node is not None and node.op_type in ("RNN", "GRU", "LSTM") and tensor in node.output[1:]


def _row_elems(info: TensorInfo | None) -> int:
    if info is None:
        return 1 << 40
    n = info.row_elements()
    if n is None:  # unknown dims (e.g. dynamic sequence length): count them as 128
        n = 1
        for d in info.shape[1:]:
            n *= d if isinstance(d, int) else 128
    return n


def estimate_flops(idx: GraphIndex) -> list[float]:
    """Rough per-row arithmetic of each node (multiply-adds for Conv/MatMul/Gemm and the recurrent
    ops, elements otherwise)."""
    flops = []
    for node in idx.nodes:
        out = idx.infos.get(node.output[0]) if node.output else None
        n_out = _row_elems(out) if out is not None and out.batch_axis is not None else 1
        f = float(n_out if n_out < (1 << 40) else 1)
        if node.op_type in ("RNN", "GRU", "LSTM") and len(node.input) >= 3:
            # every step multiplies the input by W and the state by R: W [dirs, gates*H, I] and
            # R [dirs, gates*H, H], times the steps of X [T, batch, I]
            x, w, r = (idx.infos.get(node.input[i]) for i in range(3))
            if all(t is not None and t.shape and all(isinstance(d, int) for d in t.shape) for t in (w, r)) \
                    and x is not None and x.shape and isinstance(x.shape[0], int):
                f = float(x.shape[0] * (math.prod(w.shape) + math.prod(r.shape)))
            flops.append(f)
            continue
        wi = CONV_WEIGHT_INPUT.get(node.op_type)
        ai = MATMUL_LEFT_INPUT.get(node.op_type)
        if wi is not None and len(node.input) > wi:
            w = idx.infos.get(node.input[wi])
            if w is not None and all(isinstance(d, int) for d in w.shape):
                k = 1
                for d in w.shape[1:]:
                    k *= d
                f *= k
        elif ai is not None and len(node.input) >= 2:
            a = idx.infos.get(node.input[ai])
            if a is not None and a.shape and isinstance(a.shape[-1], int):
                trans_a = any(at.name == "transA" and at.i == 1 for at in node.attribute)
                k = a.shape[0] if trans_a and isinstance(a.shape[0], int) else a.shape[-1]
                f *= k
        flops.append(f)
    return flops


class _Recompute:
    """Memoised: can tensor t be recomputed from graph inputs/initializers by a small light cone?"""

    def __init__(self, idx: GraphIndex):
        self.idx = idx
        self.memo: dict[str, frozenset[int] | None] = {}

    def cone(self, name: str, depth: int = 0) -> frozenset[int] | None:
        if name in self.memo:
            return self.memo[name]
        idx = self.idx
        if name in idx.initializers or name not in idx.producer:
            result: frozenset[int] | None = frozenset()
        elif depth > MAX_RECOMPUTE_NODES:
            result = None
        else:
            i = idx.producer[name]
            node = idx.nodes[i]
            if node.op_type not in LIGHT_OPS:
                result = None
            else:
                acc = {i}
                result = None
                for inp in idx.inputs_of[i]:
                    sub = self.cone(inp, depth + 1)
                    if sub is None:
                        break
                    acc |= sub
                    if len(acc) > MAX_RECOMPUTE_NODES:
                        break
                else:
                    result = frozenset(acc)
        self.memo[name] = result
        return result

    def ok(self, name: str) -> bool:
        return self.cone(name) is not None


def crossing_tensors(idx: GraphIndex) -> list[list[str]]:
    """For each cut position i in 0..N, the non-constant tensors produced before i and used at/after i."""
    n = len(idx.nodes)
    last_use: dict[str, int] = {}
    for name, users in idx.consumers.items():
        last_use[name] = max(users)
    for o in idx.graph_outputs:
        last_use[o] = n
    result: list[list[str]] = [[] for _ in range(n + 1)]
    live: dict[str, int] = {gi: last_use.get(gi, -1) for gi in idx.graph_inputs}
    for i in range(n + 1):
        result[i] = [t for t, lu in live.items() if lu >= i and t not in idx.graph_inputs]
        if i < n:
            for o in idx.nodes[i].output:
                if o and o in last_use:
                    live[o] = last_use[o]
            live = {t: lu for t, lu in live.items() if lu > i}
    return result


def find_candidates(model: onnx.ModelProto, max_side: int = 3, max_candidates: int = 24,
                    min_fraction: float = 0.02, max_fraction: float = 0.97, input_exit: bool = True) -> list[Candidate]:
    """Candidate exits of a normalised, shape-inferred model, in graph order (see module doc).

    Cuts before `min_fraction` of the estimated arithmetic are skipped, except, with `input_exit`,
    one cut before the first heavy op (Conv, MatMul, ...): an exit there reads the model's
    own preprocessed input (a resized, normalised image; a transformer's embeddings) and costs
    almost nothing, so it pays even if it can take only the most obvious rows. Where the first
    heavy op reads a graph input directly (preprocessing outside the graph), that input is the
    input exit's tensor (cut 0, nothing carried). At most
    `max_candidates` are returned (spread over the arithmetic; the input exit always stays)."""
    idx = GraphIndex.build(model)
    first_heavy = next((i for i, n in enumerate(idx.nodes) if n.op_type in HEAVY_OPS), len(idx.nodes))
    flops = estimate_flops(idx)
    total = sum(flops) or 1.0
    prefix = [0.0]
    for f in flops:
        prefix.append(prefix[-1] + f)
    recompute = _Recompute(idx)
    channels_first = channels_first_1d(idx)
    quantized = quantized_activations(idx)
    found: dict[tuple[str, ...], Candidate] = {}
    crossings = crossing_tensors(idx)
    for cut, crossing in enumerate(crossings):
        if cut == 0 or not crossing:
            continue
        frac = prefix[cut] / total
        if (frac < min_fraction and not (input_exit and cut <= first_heavy)) or frac > max_fraction:
            continue
        carried = [t for t in crossing if not recompute.ok(t)]
        if not carried or len(carried) > 1 + max_side:
            continue
        # Never between a DequantizeLinear and its reader: ONNX Runtime fuses DQ -> MatMul/Conv into
        # an integer kernel, which a segment that starts at the float copy would run in float.
        if any(t in idx.producer and idx.nodes[idx.producer[t]].op_type == "DequantizeLinear" for t in carried):
            continue
        infos = [idx.infos.get(t) for t in carried]
        if any(info is None or info.batch_axis is None for info in infos):
            continue
        sizes = [_row_elems(info) for info in infos]
        main_i = max(range(len(carried)), key=lambda k: sizes[k])
        main_info = infos[main_i]
        layout = _layout(main_info, channels_first, quantized)
        if layout is None:
            continue
        if any(sizes[k] > sizes[main_i] * SIDE_FRACTION and not _final_state(idx, carried[k])
               for k in range(len(carried)) if k != main_i):
            continue
        key = tuple(sorted(carried))
        if key in found:
            continue
        found[key] = Candidate(cut=cut, tensor=carried[main_i], side=tuple(t for k, t in enumerate(carried) if k != main_i),
                               layout=layout, features=_features(main_info, layout), row_elements=sum(sizes),
                               flops_fraction=frac, spatial=_spatial(main_info, layout))
    cands = sorted(found.values(), key=lambda c: c.cut)
    # Of the cuts before the first heavy op only one is kept (the input exit): among those whose
    # main tensor the heavy op's input is computed from (a cut carrying just a mask is no exit),
    # the one carrying the fewest elements per row, e.g. the resized one-channel image rather
    # than its three-channel normalised copy: its head pools less and compaction copies less.
    early = [c for c in cands if c.cut <= first_heavy and c.flops_fraction < min_fraction]
    feeds_heavy: set[str] = set()
    heavy_rows = 0  # elements per row the first heavy op reads (its batch-major inputs)
    if first_heavy < len(idx.nodes):
        heavy_inputs = idx.inputs_of[first_heavy]
        feeds_heavy = set(heavy_inputs) | {t for i in idx.cone(heavy_inputs, ()) for t in idx.inputs_of[i]}
        heavy_rows = max((_row_elems(idx.infos[t]) for t in heavy_inputs
                          if t in idx.infos and idx.infos[t].batch_major), default=0)
    # It must still carry the input, not a statistic of it: where a LayerNorm is exported as
    # ReduceMean/Sub/Div (TorchScript exporter) and the embeddings are recomputable, the cut that
    # carries least holds the per-token mean [batch, seq, 1], a head on which sees nothing.
    # In a quantized model the 8-bit copy comes first (LayerNorm -> QuantizeLinear ->
    # DequantizeLinear -> MatMul: cut at the float DQ output, the next segment's MatMul would run
    # in float instead of ONNX Runtime's integer kernel, 0.45 off on the NLP sample in QDQ).
    # (Not kept: where the graph only upsamples its input before the stem, the input exit reading
    # the graph input itself, cut 0. On the CV sample (28 px resized to 128 px in the graph) its
    # segment went from 56 to 14 us a row at batch 32, but the resize, 51 us, then runs for every
    # row that goes on, and the 28 px head took fewer rows on 2 of 4 seeds: certified predicted
    # speedup at batch 32 from 3000 rows, seeds 0-3 on one profile, mean 2.03x -> 1.99x.)
    chosen = min((c for c in early if c.tensor in feeds_heavy and c.row_elements * INPUT_EXIT_MAX_SHRINK >= heavy_rows),
                 key=lambda c: (c.tensor not in quantized, c.row_elements, -c.cut), default=None)
    if input_exit and chosen is None and first_heavy < len(idx.nodes):
        chosen = (_graph_input_exit(idx, idx.inputs_of[first_heavy], channels_first)
                  or _preprocessed_input_exit(idx, first_heavy, crossings[first_heavy], recompute, channels_first))
    # It takes no part in the neighbour rules below (its neighbours are of another kind).
    cands = [c for c in cands if c not in early]
    cands = _quantized_cuts_only(cands, quantized, idx)
    # Keep the cheapest cut among neighbours (block outputs rather than expanded inner tensors),
    # judged by the main tensor: side tensors that pile up along the model do not make a later
    # block output an inner tensor. (A multi-layer nn.GRU/nn.LSTM read through h_n carries every
    # layer's final state [1, batch, H] to the end; counted in, each cut between layers carried
    # more than the one before, and only the first stayed a candidate.)
    def main_elems(c: Candidate) -> int:
        return _row_elems(idx.infos.get(c.tensor))

    keep = [c for k, c in enumerate(cands)
            if (k == 0 or main_elems(c) <= main_elems(cands[k - 1]))
            and (k == len(cands) - 1 or main_elems(c) <= main_elems(cands[k + 1]))]
    # Successive cuts with no heavy op between them (e.g. before and after a ReLU) are the same
    # exit point for cost purposes; keep the later one, whose head sees the finished activation.
    collapsed: list[Candidate] = []
    for c in keep:
        if collapsed and _same_point(idx, collapsed[-1], c):
            collapsed[-1] = c
        else:
            collapsed.append(c)
    keep = collapsed
    # Distinct main tensors only (several side sets may share one).
    by_tensor: dict[str, Candidate] = {}
    for c in keep:
        if c.tensor not in by_tensor or c.row_elements < by_tensor[c.tensor].row_elements:
            by_tensor[c.tensor] = c
    keep = sorted(by_tensor.values(), key=lambda c: c.cut)
    fixed = [chosen] if chosen else []
    budget = max(max_candidates - len(fixed), 0)
    if len(keep) > budget:
        spread = []
        for j in range(budget):
            target = min_fraction + (max_fraction - min_fraction) * (j + 0.5) / budget
            best = min(keep, key=lambda c: abs(c.flops_fraction - target))
            if best not in spread:
                spread.append(best)
        keep = spread
    return sorted(fixed + keep, key=lambda c: c.cut)[:max_candidates]


def _same_point(idx: GraphIndex, a: Candidate, b: Candidate) -> bool:
    """No heavy op runs between the two cuts."""
    return not any(idx.nodes[i].op_type in HEAVY_OPS for i in range(a.cut, b.cut))


def _quantized_cuts_only(cands: list[Candidate], quantized: set[str], idx: GraphIndex) -> list[Candidate]:
    """Where a run of cuts with no heavy op between them (Conv -> QuantizeLinear ->
    DequantizeLinear) carries a quantized model's 8-bit activation at one cut, its float copies
    on either side go: cut at the 8-bit tensor, every segment keeps each quantized op's inputs
    and outputs as in the original (ONNX Runtime runs the same integer kernels, the rows come
    out bit-identical) and carries a quarter of the bytes. Float models: unchanged."""
    if not quantized:
        return cands
    runs: list[list[Candidate]] = []
    for c in cands:
        if runs and _same_point(idx, runs[-1][-1], c):
            runs[-1].append(c)
        else:
            runs.append([c])
    out = []
    for run in runs:
        q = [c for c in run if c.tensor in quantized]
        out += q or run
    return out


def _unquantized(idx: GraphIndex, name: str) -> str:
    """The tensor `name` is a quantized copy of: back through DequantizeLinear/QuantizeLinear
    (a QDQ model's first Conv reads DQ(Q(image))), else `name`."""
    while name in idx.producer and idx.nodes[idx.producer[name]].op_type in ("QuantizeLinear", "DequantizeLinear"):
        name = idx.nodes[idx.producer[name]].input[0]
    return name


def _graph_input_exit(idx: GraphIndex, heavy_inputs: list[str], channels_first: set[str] = frozenset()) -> Candidate | None:
    """The input exit of a model whose first heavy op reads a graph input directly (an image
    preprocessed outside the graph), or a quantized copy of one: a cut before any node (cut 0),
    its head reading the graph input itself. Nothing is carried: every segment reads the graph inputs anyway."""
    best = None
    for name in heavy_inputs:
        name = _unquantized(idx, name)
        info = idx.infos.get(name)
        if name not in idx.graph_inputs or info is None:
            continue
        layout = _layout(info, channels_first)
        if layout is None:
            continue
        c = Candidate(cut=0, tensor=name, side=(), layout=layout, features=_features(info, layout),
                      row_elements=_row_elems(info), flops_fraction=0.0, spatial=_spatial(info, layout))
        if best is None or c.row_elements < best.row_elements:
            best = c
    return best


def _preprocessed_input_exit(idx: GraphIndex, first_heavy: int, crossing: list[str], recompute: _Recompute,
                             channels_first: set[str] = frozenset()) -> Candidate | None:
    """The input exit of a model that prepares its input inside the graph with light ops only
    (a Cast from uint8 or to float16, a Transpose from NHWC, a normalisation; tf2onnx and float16
    converters write these): every tensor crossing the cut before the first heavy op is
    recomputable from the graph inputs, so no cut there carries anything and the loop above finds
    no input exit. This one reads what the first heavy op reads (the prepared image) at cut 0,
    recomputed, not carried: later segments then start from the graph inputs exactly as the
    original does. (Carried, a float16 model's input Cast ended a segment: ONNX Runtime no longer
    folded it into the next op, which cost 2.4% of the model at batch 32 and changed the plan of
    ppocr_textline_cls_fp16 from 1.31-1.40x to 1.17x.)"""
    if not crossing or not all(recompute.ok(t) for t in crossing):
        return None
    input_rows = max((_row_elems(idx.infos.get(t)) for t in idx.graph_inputs), default=0)
    best = None
    for name in idx.inputs_of[first_heavy]:
        info = idx.infos.get(name)
        if name not in crossing or info is None or not info.batch_major:
            continue
        if _row_elems(info) > INPUT_EXIT_MAX_GROWTH * input_rows:
            continue
        layout = _layout(info, channels_first)
        if layout is None:
            continue
        if best is not None and _row_elems(info) <= _row_elems(idx.infos[best.tensor]):
            continue  # the data, not a weight's shape
        best = Candidate(cut=0, tensor=name, side=(), layout=layout, features=_features(info, layout),
                         row_elements=0, flops_fraction=0.0, spatial=_spatial(info, layout), recomputed=True)
    return best


def recompute_ok(model: onnx.ModelProto, tensor: str) -> bool:
    """Exposed for tests: is `tensor` recomputable in a later segment?"""
    return _Recompute(GraphIndex.build(model)).ok(tensor)
