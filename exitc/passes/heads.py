"""Exit heads: their one definition and their ONNX subgraphs.

:class:`ExitHead` holds a head's parameters; :func:`head_forward` (with :func:`layers_forward`,
:func:`softmax`, :func:`gate_features`, :func:`gate_scores`) is its numpy forward from pooled
features, the one distillation and the policy compute with. :func:`head_nodes` builds the same
function as ONNX nodes, ``passes.fx.ExitHeadModule.from_head`` as a torch module
(tests/test_heads.py holds the three together).

An exit head reads one activation (``Candidate.tensor``) and produces

* ``exitc_exit{k}_logits``: [batch, classes], the head's prediction in the same form as the
  model's prediction output (``ExitHead.prediction_kind``: logits, probabilities or
  log-probabilities, exitc.predictions);
* ``exitc_exit{k}_score``: [batch], the exit gate's estimate that the head agrees with the
  original model; a row exits iff score >= threshold.

Only ops whose semantics are identical from opset 11 to the newest opset are used (Flatten,
Reshape, MatMul, Gather, TopK, GlobalAverage/MaxPool, (Log)Softmax on 2-D input with explicit axis),
so heads can be attached to foreign/older graphs without converting them.

:func:`pooling_nodes` is shared by the feature probes (distillation) and the heads (runtime), so
the features the heads are trained on are computed by exactly the same graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper

from ..predictions import LOG_PROBABILITIES, LOGITS, PROBABILITIES, answer
from .graph import const_tensor

EPS = 1e-9

Layers = list[tuple[np.ndarray, np.ndarray]]  # [(W [d_in, d_out], b [d_out]), ...]; ReLU between


@dataclass
class ExitHead:
    """Parameters of one exit head (weights already include feature standardisation)."""

    index: int                    # exit number in the compiled model
    tensor: str                   # activation read
    layout: str                   # "nchw" | "ncl" | "btc" | "bf"
    elem_type: int                # ONNX dtype of the activation
    mask_input: str | None        # for "btc": graph input holding the attention mask
    layers: Layers                # [(W, b), ...]; ReLU between layers (layers_forward)
    gate_w: np.ndarray            # [3] or [6] (chained gate): weights on gate_features
    gate_b: float
    prediction_kind: str = LOGITS  # the form it answers in: the original's (exitc.predictions.KINDS)
    kind: str = "linear"
    pooling: NchwPooling | None = None  # nchw: what is pooled besides global avg/max (see nchw_pooling)
    prev_probs: str | None = None  # chained gate: the previous exit's probabilities (a carried tensor)
    export_probs: bool = False     # output this head's probabilities for the next exit's chained gate
    # The original answers one score per row ([batch, 1]): the head learns two classes and
    # answers in the original's form (binary_answer).
    binary: bool = False
    # The original's prediction output without its batch axis where it is not [classes] (e.g.
    # (classes, 1, 1)): the answer is reshaped to it (answer_shape).
    class_dims: tuple[int, ...] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def logits_name(self) -> str:
        return f"exitc_exit{self.index}_logits"

    @property
    def score_name(self) -> str:
        return f"exitc_exit{self.index}_score"

    @property
    def probs_name(self) -> str:
        return f"exitc_exit{self.index}_probs"


GRID_MAX_FEATURES = 1536  # cells * channels of the grid part of a head's features
IMAGE_CHANNELS = 4        # maps with at most this many channels are image-like (see nchw_pooling)


@dataclass(frozen=True)
class RandomFilters:
    """Fixed random-filter features of an image-like map: AveragePool (kernel `pre`) down to
    about IMAGE_SIDE px, `count` zero-mean random `size`x`size` filters (valid Conv, no bias),
    ReLU, then the responses averaged over cells (AveragePool kernel `cell`, about IMAGE_CELLS
    cells a side). The filters are a pure function of (seed, count, channels, size), so probes,
    heads and the torch mirror rebuild the same ones; only the head's layers are fitted.

    Why: an input exit reads a few-channel image, where pooled pixel averages are weak features
    (a head of one hidden layer on them took 0.33 of the CV sample's held-out rows at 99%
    precision). Random local filters give it edges and strokes for almost no compute (32 5x5
    filters on 32x32 px: 0.6 MMAC a row against Lite0's ~130), and the same head took 0.53."""

    channels: int
    pre: tuple[int, int]
    cell: tuple[int, int]
    count: int = 32
    size: int = 5
    seed: int = 0

    def weights(self) -> np.ndarray:
        """[count, channels, size, size] float32, each filter with zero mean (flat regions give 0)."""
        w = np.random.default_rng(self.seed).standard_normal((self.count, self.channels, self.size, self.size))
        w -= w.mean(axis=(1, 2, 3), keepdims=True)
        return (w / np.sqrt(self.channels * self.size * self.size)).astype(np.float32)

    def response_side(self, spatial: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the pooled responses."""
        return tuple((s // p - self.size + 1) // c for s, p, c in zip(spatial, self.pre, self.cell))


@dataclass(frozen=True)
class NchwPooling:
    """What an nchw head pools besides the global average and max: a grid of averages
    (AveragePool kernel `grid`) or, for image-like maps, random-filter features."""

    grid: tuple[int, int] | None = None
    filters: RandomFilters | None = None


IMAGE_SIDE = 32   # image-like maps are average-pooled to about this many px before the filters
IMAGE_CELLS = 7   # cells a side over which filter responses are averaged


def grid_kernel(spatial: tuple[int, int] | None, channels: int) -> tuple[int, int] | None:
    """AveragePool kernel (= stride) for grid pooling of a (H, W) map with `channels` channels:
    a 4x4 grid where the map and the feature budget allow it, else 2x2, else None; image-like
    maps (at most IMAGE_CHANNELS channels) get up to 16x16 cells, since a few channels carry all
    their information in where things are. (nchw_pooling asks for a grid on image-like maps only
    under 16 px, where at most 8x8 cells fit; larger ones get random filters instead.)

    Measured on the CV sample (held-out agreement of exit heads; share of rows a head can take at
    99.5% precision): 4x4 beats 2x2 clearly at early exits (0.19 -> 0.32, 0.37 -> 0.50), 8x8 adds
    nothing but features. On the 3-channel input image: 4x4 0.09, 8x8 0.19, 16x16 0.24.
    """
    if spatial is None or not all(isinstance(d, int) for d in spatial):
        return None
    if spatial[1] == 1 and spatial[0] > 1:  # a 1-D map (ncl, viewed as L x 1): cells along L only
        for cells in ((16, 8, 4, 2) if channels <= IMAGE_CHANNELS else (8, 4, 2)):
            if spatial[0] >= cells and cells * channels <= GRID_MAX_FEATURES:
                return spatial[0] // cells, 1
        return None
    for cells in ((16, 8, 4, 2) if channels <= IMAGE_CHANNELS else (4, 2)):
        if min(spatial) >= cells and cells * cells * channels <= GRID_MAX_FEATURES:
            return spatial[0] // cells, spatial[1] // cells
    if min(spatial) >= 2:
        return spatial[0] // 2, spatial[1] // 2
    return None


def nchw_pooling(spatial: tuple[int, int] | None, channels: int) -> NchwPooling:
    """The pooling of an nchw head: random filters for image-like maps of at least 16 px a side
    (see RandomFilters), else the grid of grid_kernel."""
    if spatial is not None and all(isinstance(d, int) for d in spatial) and channels <= IMAGE_CHANNELS \
            and min(spatial) >= 16:
        pre = tuple(max(1, d // IMAGE_SIDE) for d in spatial)
        size = RandomFilters.size
        cell = tuple(max(1, -(-(d // p - size + 1) // IMAGE_CELLS)) for d, p in zip(spatial, pre))  # ceil
        return NchwPooling(filters=RandomFilters(channels, pre, cell))
    return NchwPooling(grid=grid_kernel(spatial, channels))


def pooling_nodes(tensor: str, layout: str, elem_type: int, mask_input: str | None, prefix: str,
                  mask_elem_type: int | None = None, pooling: NchwPooling | None = None):
    """Nodes turning an activation into pooled features [batch, D].

    nchw: concat(global average, global max, and per `pooling` (see nchw_pooling) a grid of
    averages -> 2C + cells*C, or random-filter features -> 2C + count*cells); the grid keeps
    coarse layout (sleeve vs no sleeve), which global pooling of early feature maps throws away.
    ncl (1-D maps of Conv1d models): the nchw pooling on [B, C, L, 1], so cells lie along L.
    btc: concat(masked mean over tokens, first token) -> 2C. tbc ([time, batch, C] between
    recurrent layers): concat(mean, max, last step) -> 3C (a recurrent state's summary is its
    last step, not its first). bf: the features themselves.
    Returns (nodes, initializers, output_name).
    """
    nodes, inits = [], []
    x = tensor
    if elem_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], [f"{prefix}_xf"], to=TensorProto.FLOAT, name=f"{prefix}_cast"))
        x = f"{prefix}_xf"
    out = f"{prefix}_pooled"
    if layout == "ncl":  # [B, C, L] viewed as [B, C, L, 1]: the nchw pooling with cells along L
        inits.append(const_tensor(f"{prefix}_as2d", np.array([0, 0, -1, 1], np.int64)))
        nodes.append(helper.make_node("Reshape", [x, f"{prefix}_as2d"], [f"{prefix}_x2d"], name=f"{prefix}_as2d"))
        x, layout = f"{prefix}_x2d", "nchw"
    if layout == "nchw":
        nodes += [
            helper.make_node("GlobalAveragePool", [x], [f"{prefix}_gap"], name=f"{prefix}_gap"),
            helper.make_node("Flatten", [f"{prefix}_gap"], [f"{prefix}_avg"], axis=1, name=f"{prefix}_flat_avg"),
            helper.make_node("GlobalMaxPool", [x], [f"{prefix}_gmp"], name=f"{prefix}_gmp"),
            helper.make_node("Flatten", [f"{prefix}_gmp"], [f"{prefix}_max"], axis=1, name=f"{prefix}_flat_max"),
        ]
        parts = [f"{prefix}_avg", f"{prefix}_max"]
        k = pooling.grid if pooling is not None else None
        if k is not None:
            nodes += [helper.make_node("AveragePool", [x], [f"{prefix}_grid4"], kernel_shape=list(k), strides=list(k),
                                       name=f"{prefix}_grid"),
                      helper.make_node("Flatten", [f"{prefix}_grid4"], [f"{prefix}_gridf"], axis=1, name=f"{prefix}_flat_grid")]
            parts.append(f"{prefix}_gridf")
        rf = pooling.filters if pooling is not None else None
        if rf is not None:
            src = x
            if rf.pre != (1, 1):
                nodes.append(helper.make_node("AveragePool", [x], [f"{prefix}_small"], kernel_shape=list(rf.pre),
                                              strides=list(rf.pre), name=f"{prefix}_small"))
                src = f"{prefix}_small"
            inits.append(const_tensor(f"{prefix}_filters", rf.weights()))
            nodes += [helper.make_node("Conv", [src, f"{prefix}_filters"], [f"{prefix}_resp"], name=f"{prefix}_filters"),
                      helper.make_node("Relu", [f"{prefix}_resp"], [f"{prefix}_respr"], name=f"{prefix}_resp_relu"),
                      helper.make_node("AveragePool", [f"{prefix}_respr"], [f"{prefix}_cells"], kernel_shape=list(rf.cell),
                                       strides=list(rf.cell), name=f"{prefix}_cells"),
                      helper.make_node("Flatten", [f"{prefix}_cells"], [f"{prefix}_cellf"], axis=1, name=f"{prefix}_flat_cells")]
            parts.append(f"{prefix}_cellf")
        nodes.append(helper.make_node("Concat", parts, [out], axis=1, name=f"{prefix}_cat"))
    elif layout == "btc":
        inits += [const_tensor(f"{prefix}_row_t", np.array([0, 1, -1], np.int64)),
                  const_tensor(f"{prefix}_col_t", np.array([0, -1, 1], np.int64)),
                  const_tensor(f"{prefix}_eps", np.array(EPS, np.float32)),
                  const_tensor(f"{prefix}_zero", np.array(0, np.int64))]
        if mask_input is not None:
            m = mask_input
            if mask_elem_type != TensorProto.FLOAT:
                nodes.append(helper.make_node("Cast", [m], [f"{prefix}_mf"], to=TensorProto.FLOAT, name=f"{prefix}_mcast"))
                m = f"{prefix}_mf"
            nodes += [
                helper.make_node("Reshape", [m, f"{prefix}_row_t"], [f"{prefix}_mrow"], name=f"{prefix}_mrow"),
                helper.make_node("Reshape", [m, f"{prefix}_col_t"], [f"{prefix}_mcol"], name=f"{prefix}_mcol"),
                helper.make_node("MatMul", [f"{prefix}_mrow", x], [f"{prefix}_msum"], name=f"{prefix}_msum"),
                helper.make_node("MatMul", [f"{prefix}_mrow", f"{prefix}_mcol"], [f"{prefix}_mcnt"], name=f"{prefix}_mcnt"),
                helper.make_node("Max", [f"{prefix}_mcnt", f"{prefix}_eps"], [f"{prefix}_mden"], name=f"{prefix}_mden"),
                helper.make_node("Div", [f"{prefix}_msum", f"{prefix}_mden"], [f"{prefix}_mmean3"], name=f"{prefix}_mdiv"),
                helper.make_node("Flatten", [f"{prefix}_mmean3"], [f"{prefix}_mean"], axis=1, name=f"{prefix}_mflat"),
            ]
        else:
            # GlobalAveragePool pools the trailing axes; for (B,T,C) transpose to (B,C,T) first.
            nodes += [
                helper.make_node("Transpose", [x], [f"{prefix}_xt"], perm=[0, 2, 1], name=f"{prefix}_xt"),
                helper.make_node("GlobalAveragePool", [f"{prefix}_xt"], [f"{prefix}_tmean"], name=f"{prefix}_tmean"),
                helper.make_node("Flatten", [f"{prefix}_tmean"], [f"{prefix}_mean"], axis=1, name=f"{prefix}_mflat"),
            ]
        nodes += [
            helper.make_node("Gather", [x, f"{prefix}_zero"], [f"{prefix}_first"], axis=1, name=f"{prefix}_first"),
            helper.make_node("Concat", [f"{prefix}_mean", f"{prefix}_first"], [out], axis=1, name=f"{prefix}_cat"),
        ]
    elif layout == "tbc":
        inits.append(const_tensor(f"{prefix}_last_t", np.array(-1, np.int64)))
        nodes += [
            helper.make_node("Transpose", [x], [f"{prefix}_bct"], perm=[1, 2, 0], name=f"{prefix}_bct"),
            helper.make_node("GlobalAveragePool", [f"{prefix}_bct"], [f"{prefix}_tmean"], name=f"{prefix}_tmean"),
            helper.make_node("Flatten", [f"{prefix}_tmean"], [f"{prefix}_mean"], axis=1, name=f"{prefix}_mflat"),
            helper.make_node("GlobalMaxPool", [f"{prefix}_bct"], [f"{prefix}_tmax"], name=f"{prefix}_tmax"),
            helper.make_node("Flatten", [f"{prefix}_tmax"], [f"{prefix}_max"], axis=1, name=f"{prefix}_xflat"),
            helper.make_node("Gather", [x, f"{prefix}_last_t"], [f"{prefix}_last"], axis=0, name=f"{prefix}_last"),
            helper.make_node("Concat", [f"{prefix}_mean", f"{prefix}_max", f"{prefix}_last"], [out], axis=1,
                             name=f"{prefix}_cat"),
        ]
    elif layout == "bf":
        nodes.append(helper.make_node("Identity", [x], [out], name=f"{prefix}_id"))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return nodes, inits, out


def head_nodes(head: ExitHead, mask_elem_type: int | None = None, logits_type: int = TensorProto.FLOAT):
    """Nodes for pooling + MLP/linear + gate. Returns (nodes, initializers, output value infos).
    The head computes in float32; its logits output is cast to `logits_type`, the dtype of the
    model's prediction output (a float16 model's exit rows answer in float16, as its last segment
    does)."""
    p = f"exitc_h{head.index}"
    nodes, inits, h = pooling_nodes(head.tensor, head.layout, head.elem_type, head.mask_input, p, mask_elem_type,
                                    head.pooling)
    for li, (w, b) in enumerate(head.layers):
        inits += [const_tensor(f"{p}_w{li}", w.astype(np.float32)), const_tensor(f"{p}_b{li}", b.astype(np.float32))]
        nodes += [helper.make_node("MatMul", [h, f"{p}_w{li}"], [f"{p}_mm{li}"], name=f"{p}_mm{li}"),
                  helper.make_node("Add", [f"{p}_mm{li}", f"{p}_b{li}"], [f"{p}_z{li}"], name=f"{p}_add{li}")]
        h = f"{p}_z{li}"
        if li < len(head.layers) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"{p}_r{li}"], name=f"{p}_relu{li}"))
            h = f"{p}_r{li}"
    logits = h
    num_classes = head.layers[-1][0].shape[1]
    inits += [const_tensor(f"{p}_k2", np.array([2], np.int64)),
              const_tensor(f"{p}_i0", np.array(0, np.int64)),
              const_tensor(f"{p}_i1", np.array(1, np.int64)),
              const_tensor(f"{p}_col", np.array([-1, 1], np.int64)),
              const_tensor(f"{p}_flat", np.array([-1], np.int64)),
              const_tensor(f"{p}_gate_eps", np.array(EPS, np.float32)),
              const_tensor(f"{p}_ones", np.ones((num_classes, 1), np.float32)),
              const_tensor(f"{p}_gw", head.gate_w.reshape(-1, 1).astype(np.float32)),
              const_tensor(f"{p}_gb", np.array([head.gate_b], np.float32))]
    chain: list[str] = []
    chain_nodes: list = []
    if head.prev_probs is not None:
        # Chained gate: how the previous exit saw this row (agreement mass, its confidence, its
        # probability for this head's class). Measured on the NLP sample, it lets an exit take
        # up to 2.7x more rows at 99.5% precision than the head's own confidence alone.
        q = head.prev_probs
        inits.append(const_tensor(f"{p}_k1", np.array([1], np.int64)))
        chain_nodes = [
            helper.make_node("Mul", [f"{p}_prob", q], [f"{p}_pq"], name=f"{p}_pq"),
            helper.make_node("MatMul", [f"{p}_pq", f"{p}_ones"], [f"{p}_f4"], name=f"{p}_f4"),
            helper.make_node("TopK", [q, f"{p}_k1"], [f"{p}_f5", f"{p}_qi"], axis=1, name=f"{p}_f5"),
            helper.make_node("Gather", [f"{p}_topi", f"{p}_i0"], [f"{p}_cls"], axis=1, name=f"{p}_cls"),
            helper.make_node("Reshape", [f"{p}_cls", f"{p}_col"], [f"{p}_clscol"], name=f"{p}_clscol"),
            helper.make_node("GatherElements", [q, f"{p}_clscol"], [f"{p}_f6"], axis=1, name=f"{p}_f6"),
        ]
        chain = [f"{p}_f4", f"{p}_f5", f"{p}_f6"]
    nodes += [
        helper.make_node("Softmax", [logits], [f"{p}_prob"], axis=1, name=f"{p}_softmax"),
        helper.make_node("TopK", [f"{p}_prob", f"{p}_k2"], [f"{p}_top", f"{p}_topi"], axis=1, name=f"{p}_topk"),
        helper.make_node("Gather", [f"{p}_top", f"{p}_i0"], [f"{p}_p1"], axis=1, name=f"{p}_p1"),
        helper.make_node("Gather", [f"{p}_top", f"{p}_i1"], [f"{p}_p2"], axis=1, name=f"{p}_p2"),
        helper.make_node("Sub", [f"{p}_p1", f"{p}_p2"], [f"{p}_margin"], name=f"{p}_margin"),
        helper.make_node("Add", [f"{p}_prob", f"{p}_gate_eps"], [f"{p}_probe"], name=f"{p}_probe"),
        helper.make_node("Log", [f"{p}_probe"], [f"{p}_logp"], name=f"{p}_logp"),
        helper.make_node("Mul", [f"{p}_prob", f"{p}_logp"], [f"{p}_plogp"], name=f"{p}_plogp"),
        helper.make_node("MatMul", [f"{p}_plogp", f"{p}_ones"], [f"{p}_negent"], name=f"{p}_negent"),
        helper.make_node("Neg", [f"{p}_negent"], [f"{p}_ent"], name=f"{p}_ent"),
        *chain_nodes,
        helper.make_node("Reshape", [f"{p}_p1", f"{p}_col"], [f"{p}_f1"], name=f"{p}_f1"),
        helper.make_node("Reshape", [f"{p}_margin", f"{p}_col"], [f"{p}_f2"], name=f"{p}_f2"),
        helper.make_node("Concat", [f"{p}_f1", f"{p}_f2", f"{p}_ent"] + chain, [f"{p}_gfeat"], axis=1, name=f"{p}_gfeat"),
        helper.make_node("MatMul", [f"{p}_gfeat", f"{p}_gw"], [f"{p}_gz"], name=f"{p}_gmm"),
        helper.make_node("Add", [f"{p}_gz", f"{p}_gb"], [f"{p}_gzb"], name=f"{p}_gadd"),
        helper.make_node("Sigmoid", [f"{p}_gzb"], [f"{p}_gs"], name=f"{p}_gsig"),
        helper.make_node("Reshape", [f"{p}_gs", f"{p}_flat"], [head.score_name], name=f"{p}_score"),
    ]
    probabilities = head.prediction_kind == PROBABILITIES
    answer = f"{p}_prob" if probabilities else logits
    if head.prediction_kind == LOG_PROBABILITIES:
        nodes.append(helper.make_node("LogSoftmax", [logits], [f"{p}_logsm"], axis=1, name=f"{p}_logsoftmax"))
        answer = f"{p}_logsm"
    if head.binary:  # [batch, 2] -> the original's one score (binary_answer)
        inits += [const_tensor(f"{p}_c0", np.array([0], np.int64)), const_tensor(f"{p}_k1b", np.array([1], np.int64)),
                  const_tensor(f"{p}_c2", np.array([2], np.int64))]
        nodes.append(helper.make_node("Slice", [answer, f"{p}_k1b", f"{p}_c2", f"{p}_k1b"], [f"{p}_s1"],
                                      name=f"{p}_s1"))
        if probabilities:
            answer = f"{p}_s1"
        else:
            nodes += [helper.make_node("Slice", [answer, f"{p}_c0", f"{p}_k1b", f"{p}_k1b"], [f"{p}_s0"], name=f"{p}_s0"),
                      helper.make_node("Sub", [f"{p}_s1", f"{p}_s0"], [f"{p}_bin"], name=f"{p}_bin")]
            answer = f"{p}_bin"
    answer_dims = [1 if head.binary else num_classes] if head.class_dims is None else list(head.class_dims)
    if head.class_dims is not None:
        inits.append(const_tensor(f"{p}_ashape", np.array([-1] + answer_dims, np.int64)))
        nodes.append(helper.make_node("Reshape", [answer, f"{p}_ashape"], [f"{p}_shaped"], name=f"{p}_shaped"))
        answer = f"{p}_shaped"
    if logits_type == TensorProto.FLOAT:
        nodes.append(helper.make_node("Identity", [answer], [head.logits_name], name=f"{p}_out"))
    else:
        nodes.append(helper.make_node("Cast", [answer], [head.logits_name], to=logits_type, name=f"{p}_out"))
    outputs = [helper.make_tensor_value_info(head.logits_name, logits_type, ["batch"] + answer_dims),
               helper.make_tensor_value_info(head.score_name, TensorProto.FLOAT, ["batch"])]
    if head.export_probs:
        nodes.append(helper.make_node("Identity", [f"{p}_prob"], [head.probs_name], name=f"{p}_probs_out"))
        outputs.append(helper.make_tensor_value_info(head.probs_name, TensorProto.FLOAT, ["batch", num_classes]))
    return nodes, inits, outputs


# --------------------------------------------------------------------------------------------
# The numpy definition of a head. head_nodes (ONNX) and passes.fx.ExitHeadModule (torch) compute
# the same function; tests/test_heads.py checks all three against each other. Distillation, the
# policy and the tests call these functions and nothing else.

def layers_forward(layers: Layers, x: np.ndarray) -> np.ndarray:
    """Logits of a head's layers on pooled features `x` [rows, D]: affine layers with ReLU
    between them (none after the last). Computes in the dtype of `x` and the weights."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def gate_features(prob: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
    """Gate features per row, as the ONNX gate computes them: (max prob, top1-top2 margin,
    entropy) and, with the previous exit's probabilities `prev`, (sum prob*prev, max prev,
    prev at this head's class)."""
    top2 = -np.partition(-prob, 1, axis=1)[:, :2]
    ent = -(prob * np.log(prob + EPS)).sum(axis=1)
    cols = [top2[:, 0], top2[:, 0] - top2[:, 1], ent]
    if prev is not None:
        cls = prob.argmax(axis=1)
        cols += [(prob * prev).sum(axis=1), prev.max(axis=1), prev[np.arange(len(prev)), cls]]
    return np.stack(cols, axis=1).astype(np.float32)


def gate_scores(prob: np.ndarray, w: np.ndarray, b: float, prev: np.ndarray | None = None) -> np.ndarray:
    """The exit gate's score per row: sigmoid(gate_features(prob, prev) . w + b), float32. `w` has
    3 weights (plain gate) or 6 (chained gate, which needs `prev`)."""
    z = gate_features(prob, prev) @ w.reshape(-1).astype(np.float32) + np.float32(b)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def head_forward(head: ExitHead, pooled: np.ndarray, prev: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What `head_nodes` computes, from pooled features (and, for a chained gate, the previous
    exit's probabilities): (its answer in head.prediction_kind (predictions.answer); score), float32."""
    h = layers_forward(head.layers, pooled.astype(np.float32))
    prob = softmax(h)
    score = gate_scores(prob, head.gate_w, head.gate_b, prev)
    out = answer(h, prob, head.prediction_kind)
    out = binary_answer(out, head.prediction_kind == PROBABILITIES) if head.binary else out
    return answer_shape(out, head.class_dims), score


def answer_shape(out, class_dims: tuple[int, ...] | None):
    """A head's answer [rows, classes] in the original's prediction shape [rows, *class_dims]
    (numpy arrays and torch tensors alike); unchanged where class_dims is None."""
    return out if class_dims is None else out.reshape((-1,) + tuple(class_dims))


def binary_answer(two: np.ndarray, probabilities: bool) -> np.ndarray:
    """A two-class head's answer in a binary original's form [rows, 1]: the probability of class
    1, or the logit difference (whose sigmoid is that probability). Its threshold (0.5, 0) gives
    the head's argmax."""
    return two[:, 1:2] if probabilities else two[:, 1:2] - two[:, 0:1]
