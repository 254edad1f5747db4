"""Load and normalise a classifier so the later passes can rely on its shape.

`load_model` turns any unreadable/invalid file into a one-line error. `normalize` returns a new
model whose every input has a symbolic batch dimension named ``batch`` (fixed batch 1 becomes
symbolic, and Reshape targets that hard-code that 1 are rewritten to copy the dimension instead),
whose only output is the prediction output, and whose value_info is freshly shape-inferred.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from exitc.errors import ExitcError

from .graph import BATCH, GraphIndex, TensorInfo

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class Signature:
    """The model's interface as exitc sees it."""

    inputs: list[TensorInfo]
    output: TensorInfo  # the prediction output: [batch, num_classes]

    @property
    def num_classes(self) -> int:
        return int(self.output.shape[1])


def load_model(path: str) -> onnx.ModelProto:
    """Read and check an ONNX file; raise ExitcError naming the file on any problem."""
    if not os.path.isfile(path):
        raise ExitcError(f"{path}: no such file")
    try:
        model = onnx.load(path)
    except Exception:
        raise ExitcError(f"{path}: not an ONNX model (could not parse it as an ONNX protobuf)") from None
    if len(model.graph.node) == 0:
        raise ExitcError(f"{path}: not an ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise ExitcError(f"{path}: the ONNX checker rejects this model: {first}") from None
    return model


def _infer(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
        raise ExitcError(f"{label}: ONNX shape inference failed: {first}") from None


def _make_batch_symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inputs/outputs with leading dim 1 or unnamed get the symbol ``batch``; Reshape shapes that
    start with a literal 1 computed for that batch become 0 ("copy from input")."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    fixed_one = False
    for v in list(g.input) + list(g.output):
        if v.name in inits or not v.type.HasField("tensor_type"):
            continue
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 0:
            continue
        d0 = dims[0]
        if d0.HasField("dim_value") and d0.dim_value == 1:
            fixed_one = True
        if not d0.HasField("dim_value") or d0.dim_value == 1:
            d0.Clear()
            d0.dim_param = BATCH
        elif d0.HasField("dim_param") and d0.dim_param != BATCH:
            d0.dim_param = BATCH
    if fixed_one:
        by_name = {t.name: t for t in g.initializer}
        consts = {n.output[0]: n for n in g.node if n.op_type == "Constant" and len(n.output) == 1}
        for node in g.node:
            if node.op_type != "Reshape" or len(node.input) < 2:
                continue
            allowzero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
            if allowzero:
                continue
            target = by_name.get(node.input[1])
            if target is not None:
                arr = numpy_helper.to_array(target).copy()
                if arr.ndim == 1 and arr.size >= 2 and arr[0] == 1:
                    arr[0] = 0
                    target.CopyFrom(numpy_helper.from_array(arr, target.name))
            elif node.input[1] in consts:
                c = consts[node.input[1]]
                for a in c.attribute:
                    if a.name == "value":
                        arr = numpy_helper.to_array(a.t).copy()
                        if arr.ndim == 1 and arr.size >= 2 and arr[0] == 1:
                            arr[0] = 0
                            a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))
    del g.value_info[:]
    return model


def normalize(model: onnx.ModelProto, output: str | None = None, label: str = "model") -> tuple[onnx.ModelProto, Signature]:
    """Return (normalised copy, signature). Raises ExitcError if no batch-major classification
    output can be identified."""
    model = copy.deepcopy(model)
    g = model.graph
    names = [o.name for o in g.output]
    if output is not None and output not in names:
        raise ExitcError(f"{label}: --output {output!r} is not an output of the model (outputs: {', '.join(names)})")
    model = _make_batch_symbolic(model)
    model = _infer(model, label)
    idx = GraphIndex.build(model)

    def is_classification(name: str) -> bool:
        info = idx.infos.get(name)
        return (info is not None and info.rank == 2 and info.batch_major and isinstance(info.shape[1], int)
                and info.shape[1] >= 2 and info.elem_type in FLOAT_TYPES)

    if output is None:
        cands = [n for n in names if is_classification(n)]
        if not cands:
            shapes = ", ".join(f"{n} {idx.infos[n].shape if n in idx.infos else '?'}" for n in names)
            raise ExitcError(f"{label}: no batch-major classification output [batch, classes] found (outputs: {shapes})")
        if len(cands) > 1:
            raise ExitcError(f"{label}: several classification outputs ({', '.join(cands)}); choose one with --output NAME")
        output = cands[0]
    elif not is_classification(output):
        info = idx.infos.get(output)
        raise ExitcError(f"{label}: output {output!r} has shape {info.shape if info else 'unknown'}; "
                         "exitc needs a batch-major classification output [batch, classes]")
    g = model.graph  # _infer returned a new model
    keep = [o for o in g.output if o.name == output]
    del g.output[:]
    g.output.extend(keep)
    for gi in idx.graph_inputs:
        info = idx.infos.get(gi)
        if info is None or not info.batch_major:
            raise ExitcError(f"{label}: input {gi!r} has shape {info.shape if info else 'unknown'}; "
                             "exitc needs every input to be batch-major")
    model = _infer(model, label)
    idx = GraphIndex.build(model)
    sig = Signature(inputs=[idx.infos[n] for n in idx.graph_inputs], output=idx.infos[output])
    model = observe_shapes(model, sig, label)
    return model, sig


def observe_shapes(model: onnx.ModelProto, sig: Signature, label: str = "model") -> onnx.ModelProto:
    """Record every intermediate tensor's shape as observed by running the model at batch 2 and 3.

    Static shape inference loses the batch symbol through ops such as Resize or Reshape with
    computed shapes (exporters then write ``unk__0``); observation does not. A dimension 0 equal to
    the batch size in both runs becomes ``batch``; other dims are the observed values. Tensors the
    runs did not produce keep their inferred info.
    """
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    g = probe.graph
    known = {o.name for o in g.output} | {i.name for i in g.input}
    names = [o for n in g.node for o in n.output if o and o not in known]
    for name in names:
        g.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        runs = [dict(zip([o.name for o in sess.get_outputs()], sess.run(None, example_feeds(sig, b, seed=b))))
                for b in (2, 3)]
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExitcError(f"{label}: ONNX Runtime cannot run the model: {first}") from None
    by_name = {v.name: v for v in model.graph.value_info}
    for name in names:
        a, b = runs[0].get(name), runs[1].get(name)
        if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray) or a.ndim != b.ndim:
            continue
        batch_major = a.ndim >= 1 and a.shape[0] == 2 and b.shape[0] == 3
        dims = [BATCH if (i == 0 and batch_major) else (int(x) if x == y else None)
                for i, (x, y) in enumerate(zip(a.shape, b.shape))]
        elem = onnx.helper.np_dtype_to_tensor_dtype(a.dtype)
        vi = onnx.helper.make_tensor_value_info(name, elem, dims)
        if name in by_name:
            by_name[name].CopyFrom(vi)
        else:
            model.graph.value_info.append(vi)
    return model


def example_feeds(sig: Signature, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds of the right dtypes/shapes (used by tests and profiling when no data exists)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in sig.inputs:
        shape = [batch] + [d if isinstance(d, int) else 1 for d in info.shape[1:]]
        if np.issubdtype(info.dtype, np.integer):
            feeds[info.name] = rng.integers(0, 2, size=shape).astype(info.dtype)
        else:
            feeds[info.name] = rng.standard_normal(shape).astype(info.dtype)
    return feeds
