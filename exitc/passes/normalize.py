"""Load and normalise a classifier so the later passes can rely on its shape.

`load_model` turns any unreadable/invalid file into a one-line error. `prepare` returns a new
model whose every input has a symbolic batch dimension named ``batch`` (fixed batch 1 becomes
symbolic, and Reshape targets that hard-code that 1 are rewritten to copy the dimension instead),
whose other unknown dims each have a symbol of their own (see `name_dims`), whose only output is
the prediction output, and whose value_info is freshly shape-inferred. `observe_shapes` then
records every intermediate tensor's shape as seen when running real rows. `normalize` is both.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ..errors import ExitcError, first_line
from ..predictions import is_classification_shape

from .graph import BATCH, GraphIndex, TensorInfo, node_inputs

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class Signature:
    """The model's interface as exitc sees it."""

    inputs: list[TensorInfo]
    output: TensorInfo  # the prediction output: [batch, num_classes], or with axes of size 1 (class_dims)
    # Set by observe_shapes where an input leaves non-batch axes open: the other sizes the model
    # was seen to run at (input -> axis -> size), to check derived graphs at a second size; or
    # fixed_axes, if it runs at no other size and the open axes were fixed to the data's sizes.
    resized: dict[str, dict[int, int]] = field(default_factory=dict)
    fixed_axes: bool = False
    # The original's other outputs: the compiled model produces only the prediction output (an
    # early exit has no value for, say, a separate label output).
    dropped_outputs: list[str] = field(default_factory=list)
    # The batch size the file was exported at where its batch axis was fixed (fixed_batch), else 0:
    # exitc opens that axis, and says so where the model then does not run at other sizes.
    exported_batch: int = 0
    # Inputs the file takes with their rows on another axis than 0 (input -> that axis: 1 for
    # [time, batch, ...]). `inputs` and every graph exitc derives take them rows first
    # (rows_first_inputs); the artifact's graphs and manifest have the file's layout again.
    batch_axes: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Classes of the prediction output (1 for a binary classifier's single score)."""
        return int(np.prod([int(d) for d in self.output.shape[1:]]))

    @property
    def class_dims(self) -> tuple[int, ...] | None:
        """None for a [batch, classes] output; else its shape without the batch axis, the classes
        with axes of size 1 around them (SqueezeNet's and Caffe2 DenseNet's [batch, classes, 1, 1],
        [batch, 1, classes]). Exit heads answer in that shape (ExitHead.class_dims), so every row
        has the original's."""
        return None if self.output.rank == 2 else tuple(int(d) for d in self.output.shape[1:])

    @property
    def binary(self) -> bool:
        """One score per row ([batch, 1]: a sigmoid probability or a single logit): the class is
        score > 0.5 or score > 0 (see exitc.predictions); heads learn it as two classes."""
        return self.num_classes == 1


# Largest model exitc takes with its weights in memory: protobuf's limit on one serialized message
# (ONNX Runtime sessions and every derived graph are built from serialized models).
MAX_MODEL_BYTES = 2**31 - 1


def _load_weights_file(model: onnx.ModelProto, path: str) -> None:
    """Weights stored beside the model (ONNX external data, e.g. torch.onnx's `model.onnx.data`)
    loaded into `model`; a missing or short file named in one line."""
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

    base = os.path.dirname(os.path.abspath(path))
    tensors = [t for t in _all_initializers(model.graph) if uses_external_data(t)]
    if not tensors:
        return
    for t in tensors:
        where = os.path.join(base, ExternalDataInfo(t).location)
        if not os.path.isfile(where):
            raise ExitcError(f"{path}: weights file {ExternalDataInfo(t).location!r} (external data of tensor "
                             f"{t.name!r}) not found next to the model")
    try:
        load_external_data_for_model(model, base)
    except Exception as exc:
        first = first_line(exc)
        raise ExitcError(f"{path}: its external weights could not be read: {first}") from None
    size = model.ByteSize()
    if size > MAX_MODEL_BYTES:
        raise ExitcError(f"{path}: the model with its weights is {size / 2**30:.1f} GiB; exitc takes models up to "
                         f"2 GiB (one protobuf message)")


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_nodes(graph: onnx.GraphProto):
    """Nodes of `graph` and of every subgraph (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for g in _subgraphs(node):
            yield from _all_nodes(g)


def _all_initializers(graph: onnx.GraphProto):
    """Initializers of `graph` and of every subgraph (If/Loop/Scan bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for g in _subgraphs(node):
            yield from _all_initializers(g)


def load_model(path: str) -> onnx.ModelProto:
    """Read and check an ONNX file; raise ExitcError naming the file on any problem."""
    if not os.path.isfile(path):
        raise ExitcError(f"{path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:
        raise ExitcError(f"{path}: not an ONNX model (could not parse it as an ONNX protobuf)") from None
    _load_weights_file(model, path)
    if len(model.graph.node) == 0:
        raise ExitcError(f"{path}: not an ONNX model (the graph has no nodes)")
    try:
        check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        # onnxruntime.transformers' float16 converter (keep_io_types) appends the input casts at
        # the end of the node list; ONNX Runtime sorts graphs itself and runs such files.
        if "topologically sorted" not in first or not topological_sort(model.graph):
            raise ExitcError(f"{path}: the ONNX checker rejects this model: {first}") from None
        try:
            check_model(model)
        except Exception as again:
            first = str(again).strip().splitlines()[0] if str(again).strip() else "invalid model"
            raise ExitcError(f"{path}: the ONNX checker rejects this model: {first}") from None
    return inline_functions(model, path)


def inline_functions(model: onnx.ModelProto, label: str = "model") -> onnx.ModelProto:
    """`model` with its local functions inlined (the model itself where it has none).

    Why: exporters write repeated blocks as functions (torch.onnx's export_modules_as_functions,
    older dynamo exports): a call is one opaque node to the passes, so no cut falls inside it,
    and ONNX Runtime does not resolve a call inside the batch-1 form's If bodies ("Block(-1) is
    not a registered function/op"). Inlined, the graph computes the same with plain ops."""
    if not model.functions:
        return model
    import onnx.inliner

    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception as exc:
        first = first_line(exc)
        raise ExitcError(f"{label}: its {len(model.functions)} local functions could not be inlined: {first}") from None


def _onnx_defines(op: str, domain: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op, opset, domain)
        return True
    except Exception:
        return False


def runtime_only_ops(model: onnx.ModelProto) -> set[str]:
    """Ops of the ONNX domain in `model` that ONNX does not define at the model's opset but ONNX
    Runtime does: its own LayerNormalization and SimplifiedLayerNormalization from opset 1 (ONNX
    has LayerNormalization from opset 17). onnxruntime.transformers' fusions, and so `optimum`'s
    ORT optimisation of a RoBERTa exported at opset 14, write them; ONNX Runtime runs such files,
    ONNX's checker rejects them ("No Op registered for LayerNormalization with domain_version of
    14")."""
    from .graph import default_opset

    opset = default_opset(model)
    used = {n.op_type for n in _all_nodes(model.graph) if n.domain in ("", "ai.onnx")}
    missing = {op for op in used if not _onnx_defines(op, "", opset)}
    if not missing:
        return set()
    try:  # ONNX Runtime's schema registry (no public name for it; without it, the checker decides)
        from onnxruntime.capi._pybind_state import get_all_operator_schema
    except ImportError:
        return set()
    return {s.name for s in get_all_operator_schema()
            if s.domain in ("", "ai.onnx") and s.name in missing and s.since_version <= opset}


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker.check_model, except that ONNX-domain ops only ONNX Runtime defines at the
    model's opset (runtime_only_ops) pass: they are checked as the custom ops they are (moved to
    ORT's own domain in a copy), every other node and the graph as the checker does."""
    extra = runtime_only_ops(model)
    if not extra:
        onnx.checker.check_model(model)
        return
    checked = copy.deepcopy(model)
    for node in _all_nodes(checked.graph):
        if node.domain in ("", "ai.onnx") and node.op_type in extra:
            node.domain = RUNTIME_DOMAIN
    if not any(o.domain == RUNTIME_DOMAIN for o in checked.opset_import):
        checked.opset_import.append(onnx.helper.make_opsetid(RUNTIME_DOMAIN, 1))
    onnx.checker.check_model(checked)


RUNTIME_DOMAIN = "com.microsoft"


def topological_sort(graph: onnx.GraphProto) -> bool:
    """Reorder `graph.node` (in place) so that every node follows the producers of its inputs,
    keeping the file's order where it already does; False (graph untouched) where a cycle or an
    input nothing produces makes that impossible."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    available |= {t.name for t in graph.sparse_initializer}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node_inputs(node)):
                ordered.append(node)
                available.update(o for o in node.output if o)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            return False
        pending = rest
    nodes = [copy.deepcopy(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def _infer(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
        raise ExitcError(f"{label}: ONNX shape inference failed: {first}") from None


# dim_param values exporters write for "unknown" (tf2onnx: unk__N; others: ?, -1, None, ...).
_PLACEHOLDER_DIM = re.compile(r"^(|\?|-?\d+|unk__\d+|none|null|unknown|dynamic|batch|[a-z])$", re.IGNORECASE)


def _dim_symbol(tensor: str, axis: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', tensor)}_dim{axis}"


def fixed_batch(model: onnx.ModelProto) -> int:
    """The batch size the model was exported at where its batch axis is fixed: the dim 0 every
    graph input has (a fixed 1, or one fixed N >= 2 shared by every input and by an output);
    0 where dim 0 is open or the inputs disagree. Why N: torch.onnx.export without dynamic axes
    fixes the batch to the example's rows (often 1, also 4, 8, 32), and the file then runs only
    at that batch size."""
    g = model.graph
    inits = {t.name for t in g.initializer}

    def dim0(v):
        if not (v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
                and len(v.type.tensor_type.shape.dim)):
            return None
        d = v.type.tensor_type.shape.dim[0]
        return d.dim_value if d.HasField("dim_value") and d.dim_value >= 1 else None

    sizes = {dim0(v) for v in g.input if v.name not in inits}
    if len(sizes) != 1 or None in sizes:
        return 0
    n = sizes.pop()
    return n if n == 1 or any(dim0(o) == n for o in g.output) else 0


_NO_NAME_DIM = re.compile(r"^(|\?|-?\d+)$")  # dim names that say nothing about which axis they are


def time_major_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs whose batch is declared on axis 1 ([time, batch, ...], as torch.onnx writes a
    module whose nn.LSTM / nn.GRU / nn.Transformer runs with batch_first=False): dim 1 is open and
    either it has the name an output's dim 0 has or a name with "batch" in it (dim 0 another), or
    dim 0 is a fixed size above 1 while an output's dim 0 is open. (A fixed dim 0 every input and
    an output share is a batch fixed at export, fixed_batch.) Whether the model really takes its
    rows along that axis is then checked by running it, as for batch-major inputs
    (check_rows_independent, observe_shapes)."""
    g = model.graph
    inits = {t.name for t in g.initializer}

    def dims(v):
        return list(v.type.tensor_type.shape.dim) if (v.type.HasField("tensor_type")
                                                      and v.type.tensor_type.HasField("shape")) else []

    outs = [dims(o)[0] for o in g.output if dims(o)]
    open_out = [d for d in outs if not d.HasField("dim_value") or d.dim_value <= 0]
    out_names = {d.dim_param for d in open_out if d.HasField("dim_param") and not _NO_NAME_DIM.match(d.dim_param)}
    shared = fixed_batch(model)
    found = set()
    for v in g.input:
        d = dims(v)
        if v.name in inits or len(d) < 2 or (d[1].HasField("dim_value") and d[1].dim_value > 0):
            continue
        d0, d1 = d[0], d[1]
        d0_name = d0.dim_param if d0.HasField("dim_param") else ""
        named = d1.HasField("dim_param") and d0_name != d1.dim_param and (
            d1.dim_param in out_names or ("batch" in d1.dim_param.lower() and "batch" not in d0_name.lower()))
        sized = d0.HasField("dim_value") and d0.dim_value > 1 and d0.dim_value != shared and bool(open_out)
        if named or sized:
            found.add(v.name)
    return found


def name_dims(model: onnx.ModelProto) -> int:
    """Give the graph inputs' and outputs' dims names ONNX Runtime can trust (in place).

    Dim 0 becomes ``batch`` where it is unknown, 1, or the batch size the model was exported at
    (fixed_batch). Every other unknown dim gets a symbol of its
    own unless its name is a real one: ORT takes two dims with the same name to be equal when it
    plans buffers, so exporters that write one placeholder (``?``, ``unk__3``, ``-1``, ``N``) for
    several axes make it reuse an H-sized buffer for W (seen: "Shape mismatch attempting to re-use
    buffer"). A name is kept only if it is not a placeholder and every use of it is at the same
    axis position and at most once per tensor (e.g. ``sequence`` in both input_ids and
    attention_mask). Negative dim values count as unknown. Returns the fixed batch size the
    model was exported at (fixed_batch; 1 also where an input or output alone has a dim 0 of 1),
    or 0.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    values = [v for v in list(g.input) + list(g.output)
              if v.name not in inits and v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")]
    uses: dict[str, set[int]] = {}
    repeated: set[str] = set()
    for v in values:
        seen: set[str] = set()
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if axis > 0 and d.HasField("dim_param"):
                uses.setdefault(d.dim_param, set()).add(axis)
                if d.dim_param in seen:
                    repeated.add(d.dim_param)
                seen.add(d.dim_param)
    trusted = {n for n, axes in uses.items() if len(axes) == 1 and n not in repeated and not _PLACEHOLDER_DIM.match(n)}
    # A named dim 0 is the batch if the inputs use that name at dim 0, or if it is a placeholder;
    # an output whose dim 0 has another real name (time-major [time, batch, classes]) keeps it.
    time_major = time_major_inputs(model)
    batch_dims = [v.type.tensor_type.shape.dim[int(v.name in time_major)] for v in values
                  if any(v is i for i in g.input) and len(v.type.tensor_type.shape.dim)]
    input_batch = {d.dim_param for d in batch_dims if d.HasField("dim_param")}
    exported_at = fixed_batch(model)
    fixed = exported_at
    for v in values:
        is_input = any(v is i for i in g.input)
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if v.name in time_major and axis < 2:  # [time, batch, ...]: the batch is axis 1
                if axis == 1 or not d.HasField("dim_value"):
                    d.Clear()
                    d.dim_param = BATCH if axis == 1 else _dim_symbol(v.name, axis)
                continue
            if axis == 0:
                if d.HasField("dim_value") and d.dim_value == 1:
                    fixed = fixed or 1
                named_other = (d.HasField("dim_param") and not is_input and bool(input_batch)
                               and d.dim_param not in input_batch and not _PLACEHOLDER_DIM.match(d.dim_param))
                batch_size = (not d.HasField("dim_value") or d.dim_value <= 1
                              or (exported_at > 1 and d.dim_value == exported_at))
                if batch_size and not named_other:
                    d.Clear()
                    d.dim_param = BATCH
            elif d.HasField("dim_value") and d.dim_value >= 0:
                continue
            elif not (d.HasField("dim_param") and d.dim_param in trusted):
                d.Clear()
                d.dim_param = _dim_symbol(v.name, axis)
    return fixed


def _move_input_axis(model: onnx.ModelProto, name: str, src: int, dst: int, inner: str) -> None:
    """In place: graph input `name` gets axis `src` moved to `dst` (its dims reordered), and a
    Transpose from the new layout back to the old one, writing `inner`, feeds what read it."""
    for node in _all_nodes(model.graph):
        node.input[:] = [inner if t == name else t for t in node.input]
    v = next(i for i in model.graph.input if i.name == name)
    dims = list(v.type.tensor_type.shape.dim)
    order = list(range(len(dims)))
    order.insert(dst, order.pop(src))  # new axis k holds old axis order[k]
    moved = [onnx.TensorShapeProto.Dimension() for _ in dims]
    for k, old in enumerate(order):
        moved[k].CopyFrom(dims[old])
    del v.type.tensor_type.shape.dim[:]
    v.type.tensor_type.shape.dim.extend(moved)
    back = [order.index(a) for a in range(len(dims))]  # old axis a sits at new axis back[a]
    model.graph.node.insert(0, onnx.helper.make_node("Transpose", [name], [inner], perm=back,
                                                     name=f"exitc_layout_{inner}"))


def rows_first_inputs(model: onnx.ModelProto, axes: dict[str, int]) -> onnx.ModelProto:
    """A copy of `model` whose inputs named in `axes` (input -> its batch axis) take their rows on
    axis 0: each such input's dims are reordered batch-first and a Transpose back to the file's
    layout feeds what read it, so every row's outputs are the original's. The rest of exitc (data,
    features, cuts, heads, profiling) then sees batch-major inputs only; original_input_layout
    gives the artifact's graphs the file's layout back."""
    out = copy.deepcopy(model)
    for name, axis in axes.items():
        _move_input_axis(out, name, axis, 0, f"{name}__exitc_file_layout")
    return out


def original_input_layout(model: onnx.ModelProto, axes: dict[str, int]) -> onnx.ModelProto:
    """The inverse of rows_first_inputs for a graph derived from its result (a segment, the
    conditional form): inputs named in `axes` that the graph has take the file's layout again (batch
    on their axis), through a Transpose to rows first in front of what read them. ONNX Runtime
    folds it with rows_first_inputs' Transpose behind it. Guarantees: same outputs row for row."""
    out = copy.deepcopy(model)
    names = {i.name for i in out.graph.input}
    for name, axis in axes.items():
        if name in names:
            _move_input_axis(out, name, 0, axis, f"{name}__exitc_rows_first")
    return out


def _fixed_batch_error(label: str, rows: int, why: str) -> ExitcError:
    """The one line for a model exported at a fixed batch of `rows` (fixed_batch) that opening
    the batch axis did not make run at other sizes, `why` saying what showed it."""
    return ExitcError(f"{label}: its batch axis is fixed to {rows} rows (exported without a dynamic batch axis), and "
                      f"{why}; export it with a dynamic batch axis")


def _make_batch_symbolic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """name_dims, and Reshape shapes that start with the literal batch size of a model exported at
    a fixed batch (1, or the N of fixed_batch) become 0 ("copy from input"). Whether the model
    then runs at other batch sizes, and computes each row on its own, is checked by running it
    (observe_shapes, check_rows_independent)."""
    g = model.graph
    fixed = name_dims(model)
    if fixed:
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
                if arr.ndim == 1 and arr.size >= 2 and arr[0] == fixed:
                    arr[0] = 0
                    target.CopyFrom(numpy_helper.from_array(arr, target.name))
            elif node.input[1] in consts:
                c = consts[node.input[1]]
                for a in c.attribute:
                    if a.name == "value":
                        arr = numpy_helper.to_array(a.t).copy()
                        if arr.ndim == 1 and arr.size >= 2 and arr[0] == fixed:
                            arr[0] = 0
                            a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))
    del g.value_info[:]
    return model, fixed


MIN_OPSET = 11  # exit heads use ops in their opset-11 form (TopK with K as an input; see passes.heads)


def _upgrade_opset(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Models below MIN_OPSET (tf2onnx wrote opset 9 for years) converted up with
    onnx.version_converter, so heads can be spliced in; a one-line error if that fails."""
    from onnx import version_converter

    from .graph import default_opset

    opset = default_opset(model)
    if opset == 0 or opset >= MIN_OPSET:
        return model
    try:
        up = _weights_not_inputs(version_converter.convert_version(model, MIN_OPSET))
        onnx.checker.check_model(up)
    except Exception as exc:
        first = first_line(exc)
        raise ExitcError(f"{label}: opset {opset}; exitc needs opset {MIN_OPSET} or newer and "
                         f"onnx.version_converter could not convert it: {first}") from None
    return up


def _weights_not_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (in place) with no graph input that an initializer backs, at IR version 4 or later.

    Why: before IR version 4 every initializer had to be a graph input too, and old exporters
    (PyTorch 0.x/1.0, MXNet, Caffe2; ONNX's model zoo has many such files) list all weights as
    inputs. The graphs exitc derives keep the model's IR version but not those inputs, and
    ONNX's checker rejected them ("stem_w in initializer but not in graph input"); at IR 4 and
    later such inputs are overridable, which keeps ONNX Runtime from folding them as constants."""
    inits = {t.name for t in model.graph.initializer}
    weights = [v for v in model.graph.input if v.name in inits]
    for v in weights:
        model.graph.input.remove(v)
    if model.ir_version < 4:
        model.ir_version = 4
    return model


def prepare(model: onnx.ModelProto, output: str | None = None, label: str = "model") -> tuple[onnx.ModelProto, Signature]:
    """Return (normalised copy, signature) before any run of the model: dims named (name_dims),
    prediction output chosen, shapes inferred. Raises ExitcError if no batch-major classification
    output can be identified."""
    model = _weights_not_inputs(_upgrade_opset(copy.deepcopy(model), label))
    g = model.graph
    names = [o.name for o in g.output]
    if output is not None and output not in names:
        raise ExitcError(f"{label}: --output {output!r} is not an output of the model (outputs: {', '.join(names)})")
    model, exported = _make_batch_symbolic(model)
    model = _infer(model, label)
    idx = GraphIndex.build(model)

    def is_classification(name: str, min_classes: int = 2) -> bool:
        # [batch, classes]; or [batch, ...] with one axis of classes and the rest of size 1
        # (a classifier ending in a 1x1 conv); one score per row only as [batch, 1].
        info = idx.infos.get(name)
        if info is None or info.rank < 2 or not info.batch_major or info.elem_type not in FLOAT_TYPES:
            return False
        return is_classification_shape(info.shape[1:]) and int(np.prod(info.shape[1:])) >= min_classes

    if output is None:
        # [batch, classes] outputs first; else one [batch, 1] score (a binary classifier)
        cands = [n for n in names if is_classification(n)] or [n for n in names if is_classification(n, 1)]
        if not cands:
            shapes = ", ".join(f"{n} {idx.infos[n].shape if n in idx.infos else '?'}" for n in names)
            if exported > 1:
                raise _fixed_batch_error(label, exported, f"the graph computes that size itself (outputs: {shapes})")
            raise ExitcError(f"{label}: no batch-major classification output [batch, classes] found (outputs: {shapes})")
        if len(cands) > 1:
            raise ExitcError(f"{label}: several classification outputs ({', '.join(cands)}); choose one with --output NAME")
        output = cands[0]
    elif not is_classification(output, 1):
        info = idx.infos.get(output)
        raise ExitcError(f"{label}: output {output!r} has shape {info.shape if info else 'unknown'}; "
                         "exitc needs a batch-major classification output [batch, classes] (or [batch, 1] scores)")
    g = model.graph  # _infer returned a new model
    keep = [o for o in g.output if o.name == output]
    dropped = [o.name for o in g.output if o.name != output]
    del g.output[:]
    g.output.extend(keep)
    axes = {gi: 1 for gi in idx.graph_inputs if gi in idx.infos and idx.infos[gi].batch_axis == 1}
    for gi in idx.graph_inputs:
        info = idx.infos.get(gi)
        if info is None or info.batch_axis is None:
            raise ExitcError(f"{label}: input {gi!r} has shape {info.shape if info else 'unknown'}; "
                             "exitc needs every input to hold its rows on axis 0 (or on axis 1: [time, batch, ...])")
    model = _infer(rows_first_inputs(model, axes) if axes else model, label)
    idx = GraphIndex.build(model)
    return model, Signature(inputs=[idx.infos[n] for n in idx.graph_inputs], output=idx.infos[output],
                            dropped_outputs=dropped, exported_batch=exported if exported > 1 else 0,
                            batch_axes=axes)


def normalize(model: onnx.ModelProto, output: str | None = None, label: str = "model",
              feeds: dict[str, np.ndarray] | None = None) -> tuple[onnx.ModelProto, Signature]:
    """prepare, then observe_shapes and shape_reads.resolve_shape_reads on `feeds` (real rows;
    random ones of the declared shapes if None, which needs every non-batch input dim to be known)."""
    from .shape_reads import resolve_shape_reads  # it builds on this module

    model, sig = prepare(model, output, label)
    if feeds is None:
        feeds = example_feeds(sig, 3)
    model = observe_shapes(model, sig, feeds, label)
    model, _ = resolve_shape_reads(model, feeds, sig.resized)
    return model, sig


def dynamic_axes(sig: Signature) -> dict[str, list[int]]:
    """Non-batch input axes whose size the model leaves open, per input."""
    out = {}
    for info in sig.inputs:
        axes = [a for a, d in enumerate(info.shape) if a > 0 and not isinstance(d, int)]
        if axes:
            out[info.name] = axes
    return out


def resize_feeds(feeds: dict[str, np.ndarray], sizes: dict[str, dict[int, int]]) -> dict[str, np.ndarray]:
    """Copies of `feeds` with the given axes cut or edge-padded to new sizes (to run a model whose
    input size is open at a second size)."""
    out = dict(feeds)
    for name, axes in sizes.items():
        a = feeds[name]
        for axis, size in axes.items():
            if size <= a.shape[axis]:
                a = np.take(a, np.arange(size), axis=axis)
            else:
                pad = [(0, 0)] * a.ndim
                pad[axis] = (0, size - a.shape[axis])
                a = np.pad(a, pad, mode="edge")
        out[name] = np.ascontiguousarray(a)
    return out


def _rows(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first n rows of every feed (rows repeated if there are fewer)."""
    have = len(next(iter(feeds.values())))
    idx = np.arange(n) % have
    return {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}


def _output_shapes(sess, feeds) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def unoptimised_session(model: onnx.ModelProto, extra_outputs: list[str] | tuple[str, ...] = ()):
    """An ORT CPU session of `model` with graph optimisations off, so that every tensor is computed
    as the graph writes it; `extra_outputs` (intermediate tensors) become outputs too, on a copy.
    FATAL-only logging (see exitc.backends.ort.session_options). Raises what ORT raises."""
    import onnxruntime as ort

    if extra_outputs:
        model = copy.deepcopy(model)
        known = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra_outputs if n not in known)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# Ops whose result for one row depends on the other rows of the batch: dynamic quantization
# computes one scale and zero point over the whole tensor (ONNX Runtime's quantize_dynamic writes
# it before every MatMulInteger; transformers.js' model_quantized.onnx files are made so).
BATCH_COUPLED_OPS = ("DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM")
# A row's output may move this much between batches of different sizes (ONNX Runtime's kernels
# block the work differently); exitc.verify holds full-depth rows to the same tolerance.
ROW_ATOL, ROW_RTOL = 1e-4, 1e-5


def check_rows_independent(model: onnx.ModelProto, sig: Signature, feeds: dict[str, np.ndarray],
                           label: str = "model") -> None:
    """Raise ExitcError where a row's prediction depends on the other rows run with it.

    An early-exit model runs each segment on the rows still in flight, so a row meets different
    companions than in the original's batch; only a model that computes each row on its own can
    be reproduced exactly at full depth, and only then does certifying agreement on calibration
    rows say anything about traffic. Runs the first rows of `feeds` as one batch and each of the
    first 3 alone, and compares the prediction output."""
    have = len(next(iter(feeds.values())))
    if have < 2:
        return
    n = min(have, 8)
    try:
        sess = unoptimised_session(model)
        out = sig.output.name
        together = sess.run([out], _rows(feeds, n))[0]
        alone = np.concatenate([sess.run([out], {k: v[i:i + 1] for k, v in feeds.items()})[0] for i in range(3)])
    except Exception:  # observe_shapes runs the model next and names what ONNX Runtime says
        return
    if together.shape[:1] != (n,) or alone.shape[:1] != (3,):
        raise ExitcError(f"{label}: output {out!r} has {together.shape[0] if together.ndim else 0} rows where the "
                         f"inputs have {n} on axis 0: the inputs do not hold their rows on axis 0 (a time-major "
                         "input [time, batch, ...] is recognised where its dim 1 has the outputs' dim 0 name or "
                         "'batch' in its name)")
    ref = together[:len(alone)].astype(np.float64)
    diff = np.abs(alone.astype(np.float64) - ref)
    if np.all(diff <= ROW_ATOL + ROW_RTOL * np.abs(ref)):
        return
    coupled = [node for node in model.graph.node if node.op_type in BATCH_COUPLED_OPS]
    why = (f"{coupled[0].op_type} {coupled[0].name or coupled[0].output[0]!r} computes one scale for the whole batch; "
           "quantize statically (QDQ) or compile the float model" if coupled
           else "an op mixes rows (a batch statistic, a reduction over the batch axis)")
    raise ExitcError(f"{label}: output {out!r} of a row depends on the other rows in its batch (max abs diff "
                     f"{float(diff.max()):.3g} between a row run alone and in a batch of {n}): {why}; an early-exit "
                     "model cannot reproduce it")


def observe_shapes(model: onnx.ModelProto, sig: Signature, feeds: dict[str, np.ndarray] | None = None,
                   label: str = "model") -> onnx.ModelProto:
    """Record every intermediate tensor's shape as observed by running the model on real rows.

    Static shape inference loses the batch symbol through ops such as Resize or Reshape with
    computed shapes (exporters then write ``unk__0``); observation does not. The model runs at
    batch 2 and 3: a dimension 0 equal to the batch size in both runs becomes ``batch``. Where an
    input leaves a non-batch axis open (an image of any size), it also runs once with those axes
    resized (see resize_feeds): dims that change become unknown, so every derived graph keeps
    working at other sizes; if the model runs at no other size, the open axes are fixed to the
    sizes of `feeds` (recorded in `sig.inputs`). Other dims are the observed values. Tensors the
    runs did not produce keep their inferred info. `feeds` defaults to random rows of the declared
    shapes. Returns a new model.
    """
    model = copy.deepcopy(model)
    if feeds is None:
        feeds = example_feeds(sig, 3)
    g = model.graph
    known = {o.name for o in g.output} | {i.name for i in g.input}
    names = [o for n in g.node for o in n.output if o and o not in known]
    try:
        sess = unoptimised_session(model, names)
        runs = [_output_shapes(sess, _rows(feeds, b)) for b in (2, 3)]
    except Exception as exc:
        first = first_line(exc)
        if sig.exported_batch:
            raise _fixed_batch_error(label, sig.exported_batch, f"it does not run at other batch sizes: {first}") from None
        raise ExitcError(f"{label}: ONNX Runtime cannot run the model: {first}") from None
    varied = None
    open_axes = dynamic_axes(sig)
    if open_axes:
        base = _rows(feeds, 3)
        for grow in (True, False):
            sizes = {n: {a: (base[n].shape[a] + max(1, base[n].shape[a] // 4) if grow
                             else max(1, base[n].shape[a] - max(1, base[n].shape[a] // 4))) for a in axes}
                     for n, axes in open_axes.items()}
            try:
                varied = _output_shapes(sess, resize_feeds(base, sizes))
                sig.resized = sizes
                break
            except Exception:  # this model does not run at that size; try the other, then fix the axes
                continue
        if varied is None:
            _fix_open_axes(model, sig, base)
    by_name = {v.name: v for v in model.graph.value_info}
    for name in names:
        a, b = runs[0].get(name), runs[1].get(name)
        if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray) or a.ndim != b.ndim:
            continue
        c = varied.get(name) if varied is not None else b
        same_rank = isinstance(c, np.ndarray) and c.ndim == b.ndim
        batch_major = a.ndim >= 1 and a.shape[0] == 2 and b.shape[0] == 3
        # time-major [time, batch, ...] (ONNX's RNN/GRU/LSTM layout, seq-first transformers):
        # axis 1 follows the batch size while axis 0 does not
        axis = 0 if batch_major else 1 if (a.ndim >= 2 and a.shape[1] == 2 and b.shape[1] == 3
                                           and a.shape[0] == b.shape[0]) else None
        dims = [BATCH if i == axis else (int(x) if x == y and (not same_rank or c.shape[i] == y) else None)
                for i, (x, y) in enumerate(zip(a.shape, b.shape))]
        if not same_rank:
            dims = [BATCH if i == axis else None for i in range(a.ndim)]
        elem = onnx.helper.np_dtype_to_tensor_dtype(a.dtype)
        vi = onnx.helper.make_tensor_value_info(name, elem, dims)
        if name in by_name:
            by_name[name].CopyFrom(vi)
        else:
            model.graph.value_info.append(vi)
    return model


def _fix_open_axes(model: onnx.ModelProto, sig: Signature, feeds: dict[str, np.ndarray]) -> None:
    """Fix the open input axes to the sizes of `feeds`, in the model's inputs and in `sig`."""
    for v in model.graph.input:
        info = next((i for i in sig.inputs if i.name == v.name), None)
        if info is None:
            continue
        for axis, d in enumerate(v.type.tensor_type.shape.dim):
            if axis > 0 and not isinstance(info.shape[axis], int):
                size = int(feeds[v.name].shape[axis])
                d.Clear()
                d.dim_value = size
                info.shape[axis] = size
    sig.fixed_axes = True


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
