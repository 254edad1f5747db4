"""Read shapes from the graph inputs: `Shape` nodes of activations rewritten to read the inputs.

Exporters often take a size from an activation rather than from an input: the TorchScript exporter
with transformers >= 4.4x builds its 4-D attention mask [batch, 1, seq, seq] from
``Shape(embeddings)`` (the sequence length), and so does much hand-written code (``x.size(1)``).
Such a mask depends on the embeddings, so no later segment can recompute it from the (compacted)
graph inputs; every cut after it must carry it, and carried it is too large to pass as a side
tensor (16384 elements a row at 128 tokens, against 49152 of the hidden state). The MiniLM model
of the NLP sample exported that way got 2 candidate exits instead of one per layer.

:func:`resolve_shape_reads` replaces each such ``Shape`` node by the same vector assembled from the
graph inputs' shapes (``Shape(input)`` and ``Gather``) and constants, where running the model
shows every element to be one of those: equal to one input axis's size (or a constant) at batch 2,
at batch 3 and, where the model leaves non-batch input axes open, at another size of them. The
rewritten model must give outputs identical to the original's on those runs, or it is not used.

Guarantees: returns a new model and the number of ``Shape`` nodes rewritten (0: the model is
returned unchanged); a rewritten node's output has its old name and, on every observed run, its
old value; new nodes read only graph inputs and initializers; the argument is not mutated.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import GraphIndex
from .normalize import _rows, resize_feeds, unoptimised_session

PREFIX = "exitc_shape"


def _observed_runs(feeds: dict[str, np.ndarray], resized: dict[str, dict[int, int]]) -> list[dict[str, np.ndarray]]:
    """Feeds at batch 2 and 3 and, where `resized` names open axes, batch 3 at those sizes."""
    runs = [_rows(feeds, 2), _rows(feeds, 3)]
    if resized:
        runs.append(resize_feeds(_rows(feeds, 3), resized))
    return runs


def _explain(values: list[int], runs: list[dict[str, np.ndarray]], inputs: list[str]) -> tuple | None:
    """('const', v) if the element is the same on every run, ('axis', input, j) if it equals an
    input axis's size on every run, else None. An axis explanation is preferred: it stays right at
    sizes the runs did not try."""
    for name in inputs:
        for j in range(runs[0][name].ndim):
            if all(r[name].shape[j] == v for r, v in zip(runs, values)):
                return ("axis", name, j)
    if len(set(values)) == 1:
        return ("const", values[0])
    return None


def resolve_shape_reads(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
                        resized: dict[str, dict[int, int]] | None = None) -> tuple[onnx.ModelProto, int]:
    """See the module docstring. `feeds`: a few real rows of every graph input; `resized`: sizes
    of the open non-batch input axes to try (normalize.Signature.resized), if any."""
    idx = GraphIndex.build(model)
    inputs = list(idx.graph_inputs)
    shape_nodes = [i for i, n in enumerate(idx.nodes)
                   if n.op_type == "Shape" and n.input and n.input[0] in idx.producer]
    if not shape_nodes:
        return model, 0
    runs = _observed_runs(feeds, resized or {})
    wanted = [idx.nodes[i].output[0] for i in shape_nodes]
    try:
        sess = unoptimised_session(model, wanted)
        names = [o.name for o in sess.get_outputs()]
        seen = [dict(zip(names, sess.run(None, r))) for r in runs]
    except Exception:  # the model does not run like this; keep it as it is
        return model, 0

    rewrites: dict[int, list[tuple]] = {}
    for i, name in zip(shape_nodes, wanted):
        vecs = [np.asarray(s[name]).reshape(-1) for s in seen]
        if any(len(v) != len(vecs[0]) for v in vecs):
            continue
        parts = [_explain([int(v[e]) for v in vecs], runs, inputs) for e in range(len(vecs[0]))]
        if parts and all(p is not None for p in parts) and any(p[0] == "axis" for p in parts):
            rewrites[i] = parts
    if not rewrites:
        return model, 0

    out = copy.deepcopy(model)
    g = out.graph
    new_nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(g.node):
        if i not in rewrites:
            new_nodes.append(node)
            continue
        p = f"{PREFIX}{i}"
        pieces = []
        for e, part in enumerate(rewrites[i]):
            if part[0] == "const":
                g.initializer.append(numpy_helper.from_array(np.array([part[1]], np.int64), f"{p}_c{e}"))
                pieces.append(f"{p}_c{e}")
            else:
                _, src, axis = part
                g.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), f"{p}_i{e}"))
                new_nodes += [helper.make_node("Shape", [src], [f"{p}_s{e}"], name=f"{p}_s{e}"),
                              helper.make_node("Gather", [f"{p}_s{e}", f"{p}_i{e}"], [f"{p}_g{e}"], axis=0,
                                               name=f"{p}_g{e}")]
                g.value_info.extend([
                    helper.make_tensor_value_info(f"{p}_s{e}", onnx.TensorProto.INT64, [runs[0][src].ndim]),
                    helper.make_tensor_value_info(f"{p}_g{e}", onnx.TensorProto.INT64, [1])])
                pieces.append(f"{p}_g{e}")
        new_nodes.append(helper.make_node("Concat", pieces, [node.output[0]], axis=0, name=f"{p}_cat"))
    del g.node[:]
    g.node.extend(new_nodes)
    # The rewritten model must compute what the original does on every observed run.
    try:
        sess = unoptimised_session(out)
        for r, s in zip(runs, seen):
            for o, got in zip([x.name for x in sess.get_outputs()], sess.run(None, r)):
                if not np.array_equal(np.asarray(got), np.asarray(s[o]), equal_nan=True):
                    return model, 0
    except Exception:
        return model, 0
    return out, len(rewrites)
