"""Read-only views over an ONNX graph shared by the passes.

`GraphIndex` answers the questions every pass asks (who produces a tensor, who consumes it, what
shape and dtype it has, which tensors a node reads including through `If`/`Loop` subgraphs), and
`extract` cuts a self-contained sub-model out of a graph. Nothing here mutates its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

BATCH = "batch"


def subgraph_outer_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (an If/Loop body) reads from its enclosing scopes."""
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    local |= {i.name for i in graph.sparse_initializer}
    needed: set[str] = set()
    for node in graph.node:
        for name in node_inputs(node):
            if name and name not in local:
                needed.add(name)
        local.update(o for o in node.output if o)
    return needed


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus implicit (outer-scope) inputs of the node's subgraphs."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            names.extend(sorted(subgraph_outer_inputs(attr.g)))
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                names.extend(sorted(subgraph_outer_inputs(g)))
    return names


@dataclass
class TensorInfo:
    name: str
    elem_type: int
    shape: list  # ints, strings (symbolic) or None (unknown)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batch_major(self) -> bool:
        return self.rank >= 1 and self.shape[0] == BATCH

    @property
    def batch_axis(self) -> int | None:
        """The axis holding the batch: 0 (batch-major), or 1 for a time-major sequence
        [time, batch, ...] (the layout of ONNX's RNN, GRU and LSTM ops); None otherwise."""
        if self.batch_major:
            return 0
        if self.rank >= 2 and self.shape[1] == BATCH and BATCH not in self.shape[2:]:
            return 1
        return None

    def row_elements(self) -> int | None:
        """Elements per batch row, or None if a non-batch dim is unknown."""
        n = 1
        skip = self.batch_axis or 0
        for a, d in enumerate(self.shape):
            if a == skip:
                continue
            if not isinstance(d, int):
                return None
            n *= d
        return n


def _info_from_value(v: onnx.ValueInfoProto) -> TensorInfo | None:
    if not v.type.HasField("tensor_type"):
        return None
    tt = v.type.tensor_type
    if not tt.HasField("shape"):
        return TensorInfo(v.name, tt.elem_type, [])
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(v.name, tt.elem_type, dims)


@dataclass
class GraphIndex:
    """Producer/consumer maps and tensor infos for a (shape-inferred) model's main graph."""

    model: onnx.ModelProto
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=dict)
    infos: dict[str, TensorInfo] = field(default_factory=dict)
    initializers: set[str] = field(default_factory=set)
    graph_inputs: list[str] = field(default_factory=list)
    graph_outputs: list[str] = field(default_factory=list)
    inputs_of: list[list[str]] = field(default_factory=list)

    @classmethod
    def build(cls, model: onnx.ModelProto) -> "GraphIndex":
        g = model.graph
        idx = cls(model)
        idx.initializers = {t.name for t in g.initializer} | {t.name for t in g.sparse_initializer}
        idx.graph_inputs = [i.name for i in g.input if i.name not in idx.initializers]
        idx.graph_outputs = [o.name for o in g.output]
        for v in list(g.input) + list(g.value_info) + list(g.output):
            info = _info_from_value(v)
            if info is not None:
                idx.infos[v.name] = info
        for t in g.initializer:
            idx.infos[t.name] = TensorInfo(t.name, t.data_type, list(t.dims))
        for i, node in enumerate(g.node):
            ins = node_inputs(node)
            idx.inputs_of.append(ins)
            for name in ins:
                idx.consumers.setdefault(name, []).append(i)
            for o in node.output:
                if o:
                    idx.producer[o] = i
        return idx

    @property
    def nodes(self) -> Sequence[onnx.NodeProto]:
        return self.model.graph.node

    def is_constant_source(self, name: str) -> bool:
        return name in self.initializers or name == ""

    def cone(self, outputs: Iterable[str], stop: Iterable[str]) -> list[int]:
        """Indices (sorted, topological) of the nodes needed to compute `outputs` from `stop`
        tensors, graph inputs and initializers."""
        stop = set(stop)
        seen: set[int] = set()
        todo = [o for o in outputs]
        done: set[str] = set()
        while todo:
            name = todo.pop()
            if name in done or name in stop or name in self.initializers or name not in self.producer:
                done.add(name)
                continue
            done.add(name)
            i = self.producer[name]
            if i in seen:
                continue
            seen.add(i)
            todo.extend(self.inputs_of[i])
        return sorted(seen)


def extract(model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str], name: str,
            index: GraphIndex | None = None, extra_nodes: Sequence[onnx.NodeProto] = (),
            extra_initializers: Sequence[onnx.TensorProto] = (),
            extra_outputs: Sequence[onnx.ValueInfoProto] = (),
            known_infos: dict[str, onnx.ValueInfoProto] | None = None) -> onnx.ModelProto:
    """Cut the sub-model computing `outputs` from `inputs` (plus whatever graph inputs and
    initializers the cone needs). `extra_nodes` are appended after the cone (e.g. an exit head
    reading one of the cone's tensors); their outputs are declared by `extra_outputs`.

    Guarantees: the result is a valid standalone model whose nodes are a topologically ordered
    subset of the source graph's nodes (plus `extra_nodes`), with the same opset imports.
    """
    idx = index or GraphIndex.build(model)
    g = model.graph
    extra_inputs_needed: list[str] = []
    for n in extra_nodes:
        extra_inputs_needed.extend(node_inputs(n))
    extra_produced = {o for n in extra_nodes for o in n.output}
    cone_targets = [o for o in list(outputs) + extra_inputs_needed if o not in extra_produced]
    node_ids = idx.cone(cone_targets, stop=inputs)
    nodes = [g.node[i] for i in node_ids] + list(extra_nodes)
    used: set[str] = set()
    for n in nodes:
        used.update(node_inputs(n))
    used.update(outputs)
    produced = {o for n in nodes for o in n.output}
    declared_inputs = list(inputs)
    for gi in idx.graph_inputs:
        if gi in used and gi not in produced and gi not in declared_inputs:
            declared_inputs.append(gi)
    extra_init_names = {t.name for t in extra_initializers}
    missing = [u for u in used if u and u not in produced and u not in declared_inputs and u not in idx.initializers
               and u not in extra_init_names]
    if missing:
        raise ValueError(f"extract({name}): tensors {sorted(missing)[:3]} are neither produced nor provided")

    def vinfo(tname: str) -> onnx.ValueInfoProto:
        if known_infos and tname in known_infos:  # tensors made by earlier segments' heads
            return known_infos[tname]
        info = idx.infos.get(tname)
        if info is None:
            return helper.make_empty_tensor_value_info(tname)
        return helper.make_tensor_value_info(tname, info.elem_type, info.shape if info.shape else None)

    extra_out_names = {v.name for v in extra_outputs}
    out_vis = [vinfo(o) for o in outputs if o not in extra_out_names] + list(extra_outputs)
    inits = [t for t in g.initializer if t.name in used] + list(extra_initializers)
    value_info = [v for v in g.value_info if v.name in produced]
    graph = helper.make_graph(nodes, name, [vinfo(i) for i in declared_inputs], out_vis,
                              initializer=inits, value_info=value_info)
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="exitc",
                            ir_version=model.ir_version)
    for f in model.functions:
        sub.functions.append(f)
    return sub


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default (ai.onnx) operator set the model imports, 0 if none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def const_tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    # np.ascontiguousarray would turn a 0-d scalar into shape [1]; keep the rank as given.
    return numpy_helper.from_array(np.array(array, copy=True, order="C"), name)
