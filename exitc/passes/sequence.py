"""Open a token model's sequence axis, so that a batch runs at the length of its longest row.

Exporters bake the tokenizer's padded length L (128, 256, 512) into a text classifier: the inputs
are ``[batch, L]`` and constants derived from L (position ids, key-position ranges, Reshape
targets such as ``[-1, L, heads, head_dim]``) sit in the graph. Every row then pays for L tokens,
although a typical row is much shorter and the model masks the padding out: on the nlp_austen
sample the median row has 73 of 128 tokens. :func:`open_sequence_axis` rewrites such a graph so
that its sequence axis is open and every constant that carried L is computed from the inputs'
runtime length; a runtime then drops the padding columns that every row of a batch has
(:func:`trimmed_length`), which is exact where the model masks padding out.

Whether it is exact is not assumed: :func:`check_open_sequence` runs the original at length L and
the opened graph on the same rows cut to their batch's longest row, and the compiler keeps the
opened graph only if the outputs agree (and says why not otherwise). Where L is also another size
of the model (a hidden size), a constant holding it is ambiguous: :func:`open_sequence` gives each
use of a small integer constant its own copy and repairs the constants behind the node a failed
check names (MAX_REPAIRS). Models whose padding is on
the left, or that do not mask it (mean over all positions), fail that check or gain nothing, and
stay as they are.

Which inputs: the integer inputs ``[batch, L]`` with the same static L, one of which is the
attention mask (0/1, every calibration row a run of ones followed by padding zeros, and at least
one row padded). The manifest records them (``sequence``, docs/artifact-format.md).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEQ_SYMBOL = "exitc_seq"
SEQ_LEN_1D = "exitc_seq_len"           # int64 [1]: the runtime length
SEQ_LEN_SCALAR = "exitc_seq_len_scalar"  # int64 []: the same, as a scalar

# Inputs where a small integer constant is an axis number or a step, never a length.
_AXES_INPUTS = {("Unsqueeze", 1), ("Squeeze", 1), ("ReduceSum", 1), ("ReduceMean", 1), ("ReduceMax", 1),
                ("ReduceMin", 1), ("ReduceProd", 1), ("ReduceL2", 1), ("Slice", 3), ("Slice", 4), ("Split", 1),
                ("TopK", 1), ("CumSum", 1), ("OneHot", 1)}
SHAPE_LIKE_SIZE = 8  # integer constants of at most this many values are shape arithmetic, not data
# Inputs that are weights: a dim equal to L there is a coincidence (hidden size == L), never a length.
_WEIGHT_INPUTS = {("MatMul", 1), ("Gemm", 1), ("Gemm", 2), ("Conv", 1), ("LayerNormalization", 1),
                  ("LayerNormalization", 2), ("BatchNormalization", 1), ("BatchNormalization", 2),
                  ("Gather", 0),
                  # ONNX Runtime's fused transformer ops (onnxruntime.transformers' optimizer, and
                  # optimum's ORT optimisation, write them): embedding tables and LayerNorm
                  # parameters of EmbedLayerNormalization, which takes positions 0..L-1 itself
                  # and needs its tables' sizes known; the projections of Attention; the
                  # parameters of SkipLayerNormalization and the biases of fused GELUs.
                  *(("EmbedLayerNormalization", k) for k in range(2, 7)), ("Attention", 1), ("Attention", 2),
                  ("SkipLayerNormalization", 2), ("SkipLayerNormalization", 3), ("SkipLayerNormalization", 4),
                  ("SkipSimplifiedLayerNormalization", 2), ("SimplifiedLayerNormalization", 1),
                  ("BiasGelu", 1), ("FastGelu", 1)}


@dataclass(frozen=True)
class SequenceAxis:
    """The token inputs of a model and the axis along which they are padded."""

    inputs: tuple[str, ...]            # integer inputs [batch, length], in graph order
    mask: str                          # among them: the attention mask (1 = token, 0 = padding)
    length: int                        # L: the padded length of the interface
    axis: int = 1

    def to_manifest(self) -> dict:
        return {"axis": self.axis, "inputs": list(self.inputs), "mask": self.mask, "length": self.length}

    @classmethod
    def from_manifest(cls, section: dict) -> "SequenceAxis":
        """The inverse of :meth:`to_manifest` (extra keys such as ``call_rows`` ignored)."""
        return cls(tuple(section["inputs"]), section["mask"], int(section["length"]), int(section.get("axis", 1)))


def row_lengths(mask: np.ndarray) -> np.ndarray:
    """Per row: one past the last non-zero mask entry (0 for an all-zero row)."""
    nz = np.asarray(mask) != 0
    last = nz.shape[1] - np.argmax(nz[:, ::-1], axis=1)
    return np.where(nz.any(axis=1), last, 0)


def longest(lengths: np.ndarray) -> int:
    """The length rows of these `lengths` run at together: the longest, at least 1. The rule
    every runtime implements (the reference runtime, runtime/src/sequence.cpp)."""
    return max(1, int(np.max(lengths)))


def trimmed_length(mask: np.ndarray) -> int:
    """The length a batch with this mask runs at (:func:`longest` of its rows)."""
    if mask.shape[0] == 0:
        return int(mask.shape[1])
    return longest(row_lengths(mask))


def cut_feeds(feeds: dict, axis: SequenceAxis, n: int) -> dict:
    """`feeds` with the sequence inputs cut to length `n` (the others as they are); unchanged
    where they are no longer than that."""
    if n >= feeds[axis.mask].shape[axis.axis]:
        return feeds
    out = dict(feeds)
    for name in axis.inputs:
        out[name] = np.ascontiguousarray(feeds[name][:, :n])
    return out


def trim_feeds(feeds: dict, axis: SequenceAxis) -> dict:
    """`feeds` cut to :func:`trimmed_length` of their mask (:func:`cut_feeds`)."""
    return cut_feeds(feeds, axis, trimmed_length(feeds[axis.mask]))


def length_chunks(lengths: np.ndarray, call_rows: float, full_length: int) -> list[np.ndarray]:
    """Split a batch by length: rows in order of length (stable), cut into consecutive chunks that
    minimise the modelled cost, sum over chunks of ``call_rows + rows * longest / full_length``
    (a call's fixed cost plus each row at its chunk's length, both in full-length rows). Exact
    dynamic programme over the cut points, O(batch^2). Returns the row indices of each chunk,
    shortest rows first. runtime/src/sequence.cpp implements the same rule; ties go to the
    fewest chunks in both."""
    return _cheapest_split(lengths, call_rows, full_length)[0]


def _cheapest_split(lengths: np.ndarray, call_rows: float, full_length: int) -> tuple[list[np.ndarray], float]:
    """:func:`length_chunks` and what that split costs (in full-length rows)."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    n = len(order)
    sorted_len = lengths[order].astype(np.float64) / float(full_length)
    if n <= 1:
        return [order], float(call_rows + sorted_len.sum())
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    cut = np.zeros(n + 1, np.int64)
    for j in range(1, n + 1):
        i = np.arange(j)
        cost = best[:j] + call_rows + (j - i) * sorted_len[j - 1]
        k = int(np.argmin(cost))  # first minimum: the longest chunk ending at j among equals
        best[j], cut[j] = cost[k], k
    bounds = []
    j = n
    while j > 0:
        bounds.append((int(cut[j]), j))
        j = int(cut[j])
    return [order[a:b] for a, b in reversed(bounds)], float(best[n])


def length_factors(lengths: np.ndarray, call_rows: float, full_length: int, batch_size: int,
                   samples: int = 200, seed: int = 0) -> tuple[float, float]:
    """What cutting rows to their length does to the cost of a call, as factors on its
    full-length cost, priced as :func:`length_chunks` prices its split (a call's fixed cost plus
    each row at its part's length, in full-length rows): at batch 1 the mean over `lengths`, at
    `batch_size` the mean over `samples` random batches of the rows split by that rule.
    Linear in length: attention's quadratic term makes real savings somewhat larger."""
    lengths = np.maximum(np.asarray(lengths), 1)
    rel = lengths / float(full_length)
    factor_b1 = (call_rows + float(rel.mean())) / (call_rows + 1.0)
    n = min(batch_size, len(lengths))
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(samples):
        batch = lengths[rng.choice(len(lengths), size=n, replace=False)]
        total += _cheapest_split(batch, call_rows, full_length)[1] / (call_rows + n)
    return factor_b1, total / samples


def find_sequence_axis(inputs, feeds: dict[str, np.ndarray]) -> SequenceAxis | None:
    """The token inputs of a model with signature inputs `inputs` (TensorInfo list), from what
    the calibration `feeds` show; None where there is none or no calibration row is padded. An
    input whose length the graph already leaves open counts at the length of the calibration rows."""
    ints = [i for i in inputs if i.rank == 2 and np.issubdtype(i.dtype, np.integer) and i.name in feeds
            and feeds[i.name].ndim == 2 and feeds[i.name].shape[1] > 1
            and (not isinstance(i.shape[1], int) or i.shape[1] == feeds[i.name].shape[1])]
    best = None
    for length in sorted({feeds[i.name].shape[1] for i in ints}):
        group = [i.name for i in ints if feeds[i.name].shape[1] == length]
        masks = [n for n in group if _is_padding_mask(feeds[n])]
        if not masks:
            continue
        masks.sort(key=lambda n: "mask" not in n.lower())
        cand = SequenceAxis(tuple(group), masks[0], int(length))
        if best is None or len(cand.inputs) > len(best.inputs):
            best = cand
    return best


def _is_padding_mask(a: np.ndarray) -> bool:
    """0/1 values, every row ones then zeros with at least one one, some row padded."""
    if a.ndim != 2 or a.shape[0] == 0 or not np.isin(a, (0, 1)).all():
        return False
    lengths = a.sum(axis=1)
    if (lengths < 1).any():
        return False
    prefix = np.arange(a.shape[1])[None, :] < lengths[:, None]
    return bool((a.astype(bool) == prefix).all() and (lengths < a.shape[1]).any())


def open_sequence_axis(model: onnx.ModelProto, axis: SequenceAxis, first_only: bool = False,
                       modes: dict[str, str] | None = None) -> onnx.ModelProto:
    """A copy of `model` whose sequence inputs have a symbolic length (``exitc_seq``) and whose
    constants that carried L are computed from the runtime length instead:

    - a small integer constant holding L (a Reshape/Expand target, Slice ends, a Range limit, a
      piece of a shape the graph computes; not an axis number): those entries become the runtime
      length (a Concat for vectors);
    - any other constant with an axis of size L (position ids, key-position ranges, masks),
      except weights (MatMul/Gemm/Conv/normalisation parameters, embedding tables) and 1-D float
      vectors (per-feature scales and biases): sliced to the runtime length along that axis.

    `first_only`: where L appears more than once in a constant, only the first one is the length
    (a hidden size equal to L: a position table [1, L, hidden] with hidden == L); by default every
    one is (a key-by-query mask [1, 1, L, L]). value_info is dropped (shapes are observed again
    later). `modes`: per constant, "first" (as `first_only`, for that constant) or "keep" (left as
    it is): open_sequence's repairs. What it does not guarantee: that the result computes the
    same thing; :func:`check_open_sequence` checks that."""
    modes = modes or {}
    model = copy.deepcopy(model)
    g = model.graph
    L = axis.length
    dims = [v.type.tensor_type.shape.dim[axis.axis] for v in g.input if v.name in axis.inputs]
    if all(d.HasField("dim_param") for d in dims):
        return model  # the exporter left the length open: the graph runs at any length already
    for d in dims:
        d.Clear()
        d.dim_param = SEQ_SYMBOL
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and len(n.output) == 1 and n.attribute:
            a = n.attribute[0]
            if a.name == "value":
                consts[n.output[0]] = numpy_helper.to_array(a.t)
            elif a.name in ("value_int", "value_ints"):
                consts[n.output[0]] = np.asarray(helper.get_attribute_value(a), np.int64)
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in g.node:
        for k, name in enumerate(n.input):
            if name in consts:
                uses.setdefault(name, []).append((n, k))

    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    new_inits.append(numpy_helper.from_array(np.array([axis.axis], np.int64), "exitc_seq_axis_1d"))
    new_inits.append(numpy_helper.from_array(np.array(axis.axis, np.int64), "exitc_seq_axis"))
    new_inits.append(numpy_helper.from_array(np.array([0], np.int64), "exitc_seq_zero_1d"))
    new_nodes.append(helper.make_node("Shape", [axis.inputs[0]], ["exitc_seq_shape"], name="exitc_seq_shape"))
    new_nodes.append(helper.make_node("Gather", ["exitc_seq_shape", "exitc_seq_axis_1d"], [SEQ_LEN_1D],
                                      name=SEQ_LEN_1D, axis=0))
    new_nodes.append(helper.make_node("Gather", ["exitc_seq_shape", "exitc_seq_axis"], [SEQ_LEN_SCALAR],
                                      name=SEQ_LEN_SCALAR, axis=0))
    for name, arr in consts.items():
        users = uses.get(name, [])
        mode = modes.get(name)
        if not users or mode == "keep":
            continue
        first = first_only or mode == "first"
        kinds = {(n.op_type, k) for n, k in users}
        replacement = None
        shape_like = (np.issubdtype(arr.dtype, np.integer) and arr.ndim <= 1 and arr.size <= SHAPE_LIKE_SIZE
                      and (arr == L).any() and not (kinds & _AXES_INPUTS))
        if shape_like and arr.ndim == 1:
            parts = []
            at = int(np.argmax(arr == L))
            for j, value in enumerate(arr):
                if value == L and (j == at or not first):
                    parts.append(SEQ_LEN_1D)
                else:
                    piece = f"exitc_seq_{_safe(name)}_{j}"
                    new_inits.append(numpy_helper.from_array(np.array([value], np.int64), piece))
                    parts.append(piece)
            replacement = f"exitc_seq_{_safe(name)}"
            cat = replacement if arr.dtype == np.int64 else replacement + "_i64"
            new_nodes.append(helper.make_node("Concat", parts, [cat], name=cat, axis=0))
            if cat != replacement:
                new_nodes.append(helper.make_node("Cast", [cat], [replacement], name=replacement,
                                                  to=helper.np_dtype_to_tensor_dtype(arr.dtype)))
        elif shape_like:  # a scalar L: a Range limit, or a piece of a shape computed in the graph
            replacement = SEQ_LEN_SCALAR
            if arr.dtype != np.int64:
                replacement = f"exitc_seq_{_safe(name)}"
                new_nodes.append(helper.make_node("Cast", [SEQ_LEN_SCALAR], [replacement], name=replacement,
                                                  to=helper.np_dtype_to_tensor_dtype(arr.dtype)))
        elif (arr.ndim >= 1 and L in arr.shape and not (kinds & _WEIGHT_INPUTS)
              and not (arr.ndim == 1 and np.issubdtype(arr.dtype, np.floating))):
            # (a 1-D float constant broadcasts along the last axis: features, e.g. a decomposed
            # LayerNorm's scale, never the sequence of a [batch, seq, features] activation)
            current = name
            for a, size in enumerate(arr.shape):
                if size != L or (first and a != arr.shape.index(L)):
                    continue
                sliced = f"exitc_seq_{_safe(name)}_ax{a}"
                axes = f"{sliced}_axes"
                new_inits.append(numpy_helper.from_array(np.array([a], np.int64), axes))
                new_nodes.append(helper.make_node("Slice", [current, "exitc_seq_zero_1d", SEQ_LEN_1D, axes],
                                                  [sliced], name=sliced))
                current = sliced
            replacement = current
        if replacement is None:
            continue
        for n, k in users:
            n.input[k] = replacement
    # The new nodes read only graph inputs and constants: they go first, after Constant nodes
    # (a Slice of a Constant's output must follow it).
    const_nodes = [n for n in g.node if n.op_type == "Constant"]
    rest = [n for n in g.node if n.op_type != "Constant"]
    del g.node[:]
    g.node.extend(const_nodes + new_nodes + rest)
    g.initializer.extend(new_inits)
    _drop_unread_constants(model)  # the replaced ones
    del g.value_info[:]
    return model


def open_sequence(model: onnx.ModelProto, inputs, output: str,
                  feeds: dict[str, np.ndarray]) -> tuple[onnx.ModelProto, SequenceAxis | None, str | None]:
    """The pass as the compiler runs it: (opened model, axis, None) where the model has padded
    token inputs (:func:`find_sequence_axis`) and the opened graph computes what the model does
    (:func:`check_open_sequence`); otherwise (`model`, None, why not: None where there are no
    padded token inputs at all)."""
    axis = find_sequence_axis(inputs, feeds)
    if axis is None:
        return model, None, None
    why = None
    given, model = model, unshare_small_constants(model)
    for first_only in (False, True):
        modes: dict[str, str] = {}
        for repair in range(MAX_REPAIRS + 1):
            opened = open_sequence_axis(model, axis, first_only, modes)
            failed = check_open_sequence(model, opened, axis, feeds, output)
            if failed is None:
                return opened, axis, None
            why = failed if repair == 0 else why  # the unrepaired graph's failure is the one to report
            changed = False
            for name in sorted(_alike(model, _constants_behind(model, _failed_node(failed), axis.length))):
                step = REPAIR_STEPS.get((modes.get(name), first_only))
                if step is not None:
                    modes[name], changed = step, True
            if not changed:
                break
    return given, None, why


# Repairs open_sequence tries. Where the padded length L also is another size of the model (32
# hidden units at 32 tokens; ALBERT's 128-wide embeddings at 128 tokens), a constant holding L may
# mean that size: GPT-2 reshapes its state to [-1, hidden] before each Gemm, and a position table
# [1, L, hidden] has two axes of L of which one is the length. The opened graph then fails at a
# shorter length, and ONNX Runtime names the node: each constant holding L within REPAIR_DEPTH
# nodes upstream of it is opened on its first L only, then left as it is (REPAIR_STEPS), and the
# check runs again. A repaired graph is checked like any other, so a wrong repair only costs time.
MAX_REPAIRS = 16  # GPT-2 at 32 tokens and 32 hidden units: 2 repairs (TorchScript), 5 (dynamo)
REPAIR_DEPTH = 2  # inputs followed upstream of the failing node (a Gemm fed by a Reshape: 1)
# (mode so far, first_only of the round) -> the next mode; absent: nothing left to try
REPAIR_STEPS = {(None, False): "first", ("first", False): "keep", (None, True): "keep"}


def _small_ints(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The small integer constants (SHAPE_LIKE_SIZE values at most: shape arithmetic), by name."""
    small = {}
    for t in model.graph.initializer:
        if t.data_type in (TensorProto.INT64, TensorProto.INT32) and np.prod(t.dims, dtype=np.int64) <= SHAPE_LIKE_SIZE:
            small[t.name] = numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].name == "value":
            arr = numpy_helper.to_array(n.attribute[0].t)
            if np.issubdtype(arr.dtype, np.integer) and arr.size <= SHAPE_LIKE_SIZE:
                small[n.output[0]] = arr
    return small


def unshare_small_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` in which every small integer constant that several nodes read is one
    initializer per reading node (``<name>__exitc_use<k>``), so that each use can be opened or
    left on its own: the dynamo exporter writes one `[-1, 32]` for the token ids' Reshape (32 the
    length) and for the state's Reshape before a Gemm (32 the hidden size). The graph computes the
    same; `model` itself is unchanged."""
    small = _small_ints(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            if name in small:
                readers.setdefault(name, []).append(n)
    shared = {name for name, ns in readers.items() if len(ns) > 1}
    if not shared:
        return model
    model = copy.deepcopy(model)
    copies = []
    k = 0
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name in shared:
                k += 1
                n.input[i] = f"{name}__exitc_use{k}"
                copies.append(numpy_helper.from_array(small[name], n.input[i]))
    model.graph.initializer.extend(copies)
    _drop_unread_constants(model)  # the shared originals
    return model


def _drop_unread_constants(model: onnx.ModelProto) -> None:
    """Remove, in place, the initializers and Constant nodes that no node and no graph output reads."""
    g = model.graph
    read = {name for n in g.node for name in n.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = [n for n in g.node if n.op_type != "Constant" or n.output[0] in read]
    del g.node[:]
    g.node.extend(nodes)


def _alike(model: onnx.ModelProto, names: frozenset[str]) -> frozenset[str]:
    """`names` and every small integer constant with the same values as one of them, read by the
    same kind of node at the same input whose output the same kinds of node read: the same
    construct in another layer (an exporter writes each layer's Reshape targets anew), which needs
    the same repair. A constant of the same values elsewhere ([-1, L] reshaping the token ids
    before the embedding lookup) is not alike."""
    if not names:
        return names
    small = _small_ints(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)

    def construct(name: str):
        a = small[name]
        uses = tuple(sorted((n.op_type, list(n.input).index(name),
                             tuple(sorted({r.op_type for o in n.output for r in readers.get(o, [])})))
                            for n in readers.get(name, [])))
        return a.dtype.str, a.shape, a.tobytes(), uses

    wanted = {construct(name) for name in names if name in small}
    return frozenset(names) | {name for name in small if construct(name) in wanted}


def _failed_node(why: str) -> str | None:
    """The node name ONNX Runtime's failure message names ("... Name:'node_addmm' ..."), if any."""
    found = re.search(r"Name:'([^']*)'", why)
    return found.group(1) if found else None


def _constants_behind(model: onnx.ModelProto, node_name: str | None, length: int) -> frozenset[str]:
    """Names of the constants holding `length` (among their values, small integer ones; or as an
    axis) that node `node_name` reads, directly or through up to REPAIR_DEPTH nodes upstream; a
    node open_sequence_axis added (``exitc_seq_<constant>...``) stands for its constant. Empty
    where no such node exists."""
    if not node_name:
        return frozenset()
    g = model.graph
    consts = {t.name: t for t in g.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in g.node
                   if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].name == "value"})

    def holds(name: str) -> bool:
        t = consts[name]
        if length in t.dims:
            return True
        return (t.data_type in (TensorProto.INT64, TensorProto.INT32)
                and np.prod(t.dims, dtype=np.int64) <= SHAPE_LIKE_SIZE
                and bool((numpy_helper.to_array(t) == length).any()))

    if node_name.startswith("exitc_seq_"):
        return frozenset(c for c in consts if node_name.startswith(f"exitc_seq_{_safe(c)}") and holds(c))
    producer = {o: n for n in g.node for o in n.output}
    found, frontier = set(), [n for n in g.node if n.name == node_name]
    for _ in range(REPAIR_DEPTH + 1):
        upstream = []
        for n in frontier:
            for name in n.input:
                if name in consts:
                    found.add(name)
                elif name in producer:
                    upstream.append(producer[name])
        frontier = upstream
    return frozenset(c for c in found if holds(c))


def sequence_open_view(sig, axis: SequenceAxis | None):
    """`sig` as the opened graph sees it (the sequence axis open), to observe its shapes with;
    `sig` itself keeps the padded length: it is the compiled model's interface."""
    if axis is None:
        return sig
    from .graph import TensorInfo

    inputs = [TensorInfo(i.name, i.elem_type, [SEQ_SYMBOL if (i.name in axis.inputs and a == axis.axis) else d
                                               for a, d in enumerate(i.shape)]) for i in sig.inputs]
    return dataclasses.replace(sig, inputs=inputs, resized={})


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)


# A call's fixed cost in full-length rows where the artifact does not say (emit.call_rows measures it).
DEFAULT_CALL_ROWS = 2.0

CHECK_ROWS = 16
RTOL, ATOL = 1e-3, 1e-4


def check_open_sequence(original: onnx.ModelProto, opened: onnx.ModelProto, axis: SequenceAxis,
                        feeds: dict[str, np.ndarray], output: str) -> str | None:
    """None if `opened` computes what `original` computes on calibration rows cut to their batch's
    longest row (two batches: the shortest rows, and rows of every length); else why not, in a few
    words. Outputs agree when every value is within ATOL + RTOL * |value| and every row's argmax is
    the same."""
    import onnxruntime as ort

    lengths = row_lengths(feeds[axis.mask])
    order = np.argsort(lengths, kind="stable")
    n = min(CHECK_ROWS, len(order))
    batches = [order[:n], order[np.linspace(0, len(order) - 1, n).round().astype(int)]]
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        full = ort.InferenceSession(original.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        short = ort.InferenceSession(opened.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"ONNX Runtime cannot load the opened graph ({_first_line(exc)})"
    names = [i.name for i in full.get_inputs()]
    for rows in batches:
        batch = {k: np.ascontiguousarray(feeds[k][rows]) for k in names}
        want = full.run([output], batch)[0]
        trimmed = trim_feeds(batch, axis)
        try:
            got = short.run([output], trimmed)[0]
        except Exception as exc:
            return f"the opened graph does not run at length {trimmed[axis.mask].shape[1]} ({_first_line(exc)})"
        if got.shape != want.shape:
            return f"output shape {list(got.shape)} at length {trimmed[axis.mask].shape[1]}, not {list(want.shape)}"
        err = np.abs(got.astype(np.float64) - want)
        if not (err <= ATOL + RTOL * np.abs(want)).all() or (got.argmax(1) != want.argmax(1)).any():
            return (f"outputs differ at length {trimmed[axis.mask].shape[1]} (max abs diff {err.max():.2g}): "
                    "the model does not mask its padding out")
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
