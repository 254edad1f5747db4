"""PyTorch front end: ``exitc.compile(module, example_inputs, calib=...)``.

Pipeline (the ONNX driver's stages, sharing its code wherever the stage is not torch-specific):

    trace (torch.fx) -> observe shapes -> ONNX mirror -> candidates -> features -> distill
      -> profile -> policy (exitc.policy.choose_plan) -> TorchCompiled (runs in torch; .save()
      writes the artifact, whose segments run on ONNX Runtime)

The *ONNX mirror* is the traced module exported once to ONNX (dynamo exporter). Candidates, the
feature cache and the cost profile come from the ONNX passes and stages run on it, exactly as
``exitc compile model.onnx`` would do, and each candidate tensor is placed in the fx graph by
value (:func:`exitc.passes.fx.match_tensors`). So a module and its ONNX export get the same
candidates, the same heads and the same exit choices, and costs are measured on the backend the
artifact runs on. Where the export or the matching fails, candidates come from the ONNX cut rule on
a shadow graph of the fx graph (:func:`exitc.passes.fx.find_fx_candidates`) and features and
costs are measured in torch.

If symbolic tracing fails (e.g. Python control flow on tensor values or shapes), the failure names
the submodule, the whole module is exported to ONNX (torch.onnx.export, dynamo exporter at opset
18, legacy exporter if that fails) and compiled by :func:`exitc.driver.compile_model`; the result
(:class:`OnnxCompiled`) has the same interface, backed by :func:`exitc.runtime.load`.

torch is an optional dependency: only this module and ``exitc.passes.fx`` import it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
import time
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import onnx
import torch

from . import __version__
from .backends import make_session
from .data import Dataset, batches
from .distill import FittedHead, distill_heads
from .driver import CompileOptions, augment_stage, certify_stage, check_rows, split_rows
from .emit import plan_sections
from .errors import ExitcError
from .features import FeatureProbe, looks_like_probabilities
from .manifest import FORMAT, MANIFEST, SCHEMA_VERSION
from .passes import find_candidates, load_model, normalize
from .passes.candidates import Candidate
from .passes.fx import (ExitHeadModule, FxSegment, Observed, TraceFailure, build_fx_segments, cut_recomputes_nothing,
                        extract_segment, find_fx_candidates, input_names, match_tensors, observe, output_node,
                        pool_features, record_values, trace)
from .passes.graph import GraphIndex
from .passes.heads import ExitHead, head_nodes, softmax
from .passes.split import find_mask_input as onnx_mask_input
from .policy import Plan, choose_plan
from .profile import Cost, Profile, given_profile, profile_costs

OPSET = 18
LABEL_KEYS = ("labels", "label", "targets", "target", "y")


# --------------------------------------------------------------------------------------------
# inputs and calibration data


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def forward_params(module: torch.nn.Module) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def bind_inputs(module: torch.nn.Module, example_inputs) -> dict[str, np.ndarray]:
    """Example inputs (a tensor, a tuple of positional tensors or a dict by argument name) as
    numpy arrays keyed by the forward's argument names. Raises ExitcError on a mismatch."""
    params = [p.name for p in forward_params(module)]
    if isinstance(example_inputs, dict):
        unknown = [k for k in example_inputs if k not in params]
        if unknown:
            raise ExitcError(f"{type(module).__name__}.forward has no argument {unknown[0]!r} (arguments: {params})")
        return {k: _to_numpy(example_inputs[k]) for k in params if k in example_inputs}
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if len(example_inputs) > len(params):
        raise ExitcError(f"{type(module).__name__}.forward takes {len(params)} inputs, got {len(example_inputs)}")
    return {name: _to_numpy(v) for name, v in zip(params, example_inputs)}


def _item_to_feeds(item, names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if isinstance(item, dict):
        missing = [n for n in names if n not in item]
        if missing:
            raise ExitcError(f"calibration batch lacks input {missing[0]!r} (keys: {sorted(item)})")
        labels = next((item[k] for k in LABEL_KEYS if k in item and k not in names), None)
        return {n: _to_numpy(item[n]) for n in names}, None if labels is None else _to_numpy(labels)
    if isinstance(item, (torch.Tensor, np.ndarray)):
        item = (item,)
    item = tuple(item)
    if len(item) < len(names):
        raise ExitcError(f"calibration batch has {len(item)} tensors, the model takes {len(names)} ({names})")
    labels = _to_numpy(item[len(names)]) if len(item) > len(names) else None  # e.g. (x, y) from a DataLoader
    return {n: _to_numpy(v) for n, v in zip(names, item)}, labels


def to_dataset(calib, examples: dict[str, np.ndarray], label: str = "calibration data") -> Dataset:
    """Normalise calibration data to an :class:`exitc.data.Dataset` keyed by input name.

    Accepted: a path to an .npz (arrays named after the inputs); a numpy array (single input); a
    tuple of arrays (positional inputs, optional trailing labels) or a dict of arrays (whole data
    set); or any iterable (a DataLoader, a list) of batches or single rows, each a tensor/array, a
    tuple/list (positional; one extra element is taken as labels) or a dict (by input name).
    Arrays are checked against the example inputs (rank, non-batch dims, dtype kind) and cast to
    their dtype; a row without the batch dim is accepted.
    """
    names = list(examples)
    if isinstance(calib, (str, os.PathLike)):
        with np.load(calib, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        labels = arrays.pop("labels", None)
        if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
        parts = [(_item_to_feeds(arrays, names)[0], labels)]
        label = str(calib)
    elif isinstance(calib, np.ndarray) or (isinstance(calib, tuple) and all(isinstance(a, np.ndarray) for a in calib)):
        parts = [_item_to_feeds(calib, names)]
    elif isinstance(calib, dict):
        parts = [_item_to_feeds(calib, names)]
    else:
        try:
            parts = [_item_to_feeds(item, names) for item in calib]
        except TypeError:
            raise ExitcError(f"calibration data of type {type(calib).__name__} is not supported "
                             "(DataLoader, iterable of tensors/tuples/dicts, numpy arrays or an .npz path)") from None
    if not parts:
        raise ExitcError(f"{label}: no rows")
    feeds: dict[str, np.ndarray] = {}
    for n in names:
        ex = examples[n]
        chunks = []
        for f, _ in parts:
            a = f[n]
            if a.ndim == ex.ndim - 1:
                a = a[None]
            if a.ndim != ex.ndim or a.shape[1:] != ex.shape[1:]:
                raise ExitcError(f"{label}: input {n!r} has shape {list(a.shape)}, the example input has "
                                 f"{['rows'] + list(ex.shape[1:])}")
            if np.dtype(a.dtype).kind != np.dtype(ex.dtype).kind and not (a.dtype.kind in "iub" and ex.dtype.kind in "iub"):
                raise ExitcError(f"{label}: input {n!r} has dtype {a.dtype}, the example input has {ex.dtype}")
            chunks.append(a.astype(ex.dtype, copy=False))
        feeds[n] = np.ascontiguousarray(np.concatenate(chunks))
    labels = None
    if all(lab is not None for _, lab in parts):
        labels = np.concatenate([np.atleast_1d(lab) for _, lab in parts]).astype(np.int64)
        if len(labels) != len(feeds[names[0]]):
            labels = None
    rows = {len(a) for a in feeds.values()}
    if len(rows) != 1:
        raise ExitcError(f"{label}: inputs have different row counts {sorted(rows)}")
    return Dataset(feeds, labels, label)


def _torch_feeds(feeds: dict[str, np.ndarray], sl=slice(None)) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v[sl])) for k, v in feeds.items()}


# --------------------------------------------------------------------------------------------
# the compiled model (torch)


class TorchCompiled(torch.nn.Module):
    """An early-exit model running in torch with batch compaction.

    ``compiled(*inputs)`` takes the module's inputs and returns its prediction output; rows that
    ran to the end get exactly the original's ops (so the same values), exited rows the exit head's
    output. The exit taken by each row of the last call is ``last_exit_index`` (int64 [batch];
    ``num_exits`` means "ran the whole model"). :meth:`save` writes the artifact.
    """

    def __init__(self, module_name: str, gm, segments: list[FxSegment], heads: list[ExitHeadModule],
                 cut_tensors: list[str], mask_input: str | None, inputs: dict[str, Observed],
                 output: Observed, output_name: str, emit_probabilities: bool, plan: Plan, profile: Profile | None,
                 candidates, fitted: list[FittedHead], example_feeds: dict[str, np.ndarray],
                 measured_in: str = "torch", onnx_candidates: list[str] | None = None):
        super().__init__()
        self.measured_in = measured_in          # where the cost profile was measured
        self.onnx_candidates = onnx_candidates  # candidate tensors in the ONNX mirror, if one was used
        self.module_name = module_name
        self.graph_module = gm
        self.segments = segments
        self.segment_modules = torch.nn.ModuleList([s.module for s in segments])
        self.heads = torch.nn.ModuleList(heads)
        self.cut_tensors = cut_tensors
        self.mask_input = mask_input
        self.input_specs = inputs
        self.input_names = list(inputs)
        self.output_spec = output
        self.output_name = output_name
        self.emit_probabilities = emit_probabilities
        self.plan, self.profile, self.candidates, self.fitted = plan, profile, candidates, fitted
        self.example_feeds = example_feeds
        self.num_exits = len(heads)
        self.num_classes = int(output.shape[1])
        self.last_exit_index: torch.Tensor | None = None
        needed: set[str] = set()
        self._needed_after: list[set[str]] = []
        for s in reversed(segments):
            self._needed_after.insert(0, set(needed))
            needed |= set(s.inputs) | ({mask_input} if mask_input else set())

    def _bind(self, args, kwargs) -> dict[str, torch.Tensor]:
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            kwargs, args = args[0], ()
        feeds = dict(zip(self.input_names, args))
        feeds.update({k: v for k, v in kwargs.items() if k in self.input_specs})
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ExitcError(f"missing input {missing[0]!r} (inputs: {self.input_names})")
        return {k: torch.as_tensor(feeds[k]) for k in self.input_names}

    @torch.no_grad()
    def forward(self, *args, **kwargs) -> torch.Tensor:
        state = self._bind(args, kwargs)
        batch = state[self.input_names[0]].shape[0]
        result = torch.zeros(batch, self.num_classes, dtype=self.output_spec.dtype)
        exit_index = torch.full((batch,), self.num_exits, dtype=torch.int64)
        active = torch.arange(batch)
        for i, seg in enumerate(self.segments):
            outs = dict(zip(seg.outputs, seg.module(*[state[n] for n in seg.inputs])))
            if i == self.num_exits:
                result[active] = outs[seg.outputs[0]].to(result.dtype)
                break
            head = self.heads[i]
            main = outs[self.cut_tensors[i]] if self.cut_tensors[i] in outs else state[self.cut_tensors[i]]
            logits, score = head(main, state.get(self.mask_input) if head.layout == "btc" else None)
            leave = score >= torch.tensor(head.threshold, dtype=torch.float32)
            if bool(leave.any()):
                result[active[leave]] = logits[leave].to(result.dtype)
                exit_index[active[leave]] = i
            keep = ~leave
            if not bool(keep.any()):
                break
            state.update({k: outs[k] for k in seg.carry_out})
            state = {k: v for k, v in state.items() if k in self._needed_after[i]}
            if bool(leave.any()):
                idx = torch.nonzero(keep).reshape(-1)
                state = {k: v.index_select(0, idx) for k, v in state.items()}
                active = active[idx]
        self.last_exit_index = exit_index
        return result

    # -- artifact -------------------------------------------------------------------------
    def save(self, path: str, force: bool = False, exporter: str = "auto") -> str:
        """Write the artifact of docs/artifact-format.md (ONNX segments with fused ONNX exit heads
        from :func:`exitc.passes.heads.head_nodes`, manifest.json, report.json); atomic like the CLI."""
        if os.path.exists(path) and not force:
            raise ExitcError(f"{path}: output directory already exists (use force=True to replace it)")
        parent = os.path.dirname(os.path.abspath(path))
        staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            os.makedirs(os.path.join(staging, "segments"))
            seg_entries, carried = self._write_segments(staging, exporter)
            manifest = self._manifest(seg_entries, carried)
            with open(os.path.join(staging, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=2)
            with open(os.path.join(staging, "report.json"), "w") as f:
                json.dump(self.report(), f, indent=2)
            if os.path.exists(path):
                shutil.rmtree(path)
            os.replace(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path

    def _segment_examples(self) -> dict[str, torch.Tensor]:
        """Every segment input at the example batch (all rows, no exits)."""
        state = _torch_feeds(self.example_feeds)
        with torch.no_grad():
            for seg in self.segments[:-1]:
                state.update(zip(seg.outputs, seg.module(*[state[n] for n in seg.inputs])))
        return state

    def _write_segments(self, staging: str, exporter: str):
        state = self._segment_examples()
        entries, carried = [], []
        for seg in self.segments:
            last = seg.index == self.num_exits
            out_names = [self.output_name] if last else list(seg.outputs)
            file = os.path.join(staging, "segments", f"seg_{seg.index}.onnx")
            export_onnx(seg.module, [state[n] for n in seg.inputs], seg.inputs, out_names, file, exporter)
            model = onnx.load(file)
            entry = {"index": seg.index, "file": f"segments/seg_{seg.index}.onnx", "carry_out": list(seg.carry_out)}
            if last:
                entry.update(exit=None, outputs=[self.output_name])
            else:
                h = self.heads[seg.index]
                fitted = self._fitted_for(seg.index)
                eh = ExitHead(index=seg.index, tensor=self.cut_tensors[seg.index], layout=h.layout,
                              elem_type=onnx.helper.np_dtype_to_tensor_dtype(
                                  state[self.cut_tensors[seg.index]].numpy().dtype),
                              mask_input=self.mask_input if h.layout == "btc" else None,
                              layers=fitted.layers, gate_w=fitted.gate_w, gate_b=fitted.gate_b,
                              emit_probabilities=self.emit_probabilities, kind=fitted.kind,
                              pooling=fitted.candidate.pooling, meta={"threshold": h.threshold})
                model = _fuse_head(model, eh, self.input_specs, state)
                onnx.save(model, file)
                entry["exit"] = {"index": seg.index, "logits": eh.logits_name, "score": eh.score_name,
                                 "threshold": h.threshold, "candidate": eh.tensor, "head": eh.kind}
                for name in seg.carry_out:
                    t = state[name]
                    carried.append({"name": name, "dtype": str(t.numpy().dtype),
                                    "shape": ["batch"] + list(t.shape[1:]), "batch_axis": 0})
            graph_inputs = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
            entry["inputs"] = [n for n in seg.inputs if n in graph_inputs] + sorted(graph_inputs - set(seg.inputs))
            entries.append(entry)
        return entries, carried

    def _fitted_for(self, exit_index: int) -> FittedHead:
        return self.fitted[self.plan.exits[exit_index]]

    def _manifest(self, segments: list[dict], carried: list[dict]) -> dict:
        plan, profile = self.plan, self.profile

        def spec(name, o: Observed):
            return {"name": name, "dtype": str(torch.empty((), dtype=o.dtype).numpy().dtype),
                    "shape": list(o.shape), "batch_axis": 0}

        sections = plan_sections(plan, profile)
        sections["profile"]["measured_in"] = self.measured_in
        return {
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "exitc_version": __version__,
            "source": {"file": self.module_name, "framework": "pytorch", "path": None, "sha256": None,
                       "opset": OPSET, "torch": torch.__version__},
            "backend": "onnxruntime-cpu",
            "inputs": [spec(n, o) for n, o in self.input_specs.items()],
            "outputs": [spec(self.output_name, self.output_spec)],
            "prediction_output": self.output_name,
            "prediction_kind": "probabilities" if self.emit_probabilities else "logits",
            "num_classes": self.num_classes,
            "carried": carried,
            "segments": segments,
            "conditional": None,
            **sections,
        }

    def report(self) -> dict:
        plan = self.plan
        return {"frontend": "torch.fx",
                "candidates": [{"index": k, "tensor": c.tensor, "layout": c.layout, "side": list(c.side),
                                **({"onnx_tensor": self.onnx_candidates[k]} if self.onnx_candidates else {}),
                                "flops_fraction": round(c.flops_fraction, 4),
                                **({"head": self.fitted[k].kind, "head_agreement_oof": round(self.fitted[k].agreement, 4)}
                                   if self.fitted else {})} for k, c in enumerate(self.candidates)],
                "plan": {"exits": plan.exits, "thresholds": plan.thresholds, "mu": plan.mu,
                         "exit_fractions_certify": plan.exit_fractions, "agreement_certify": plan.agreement_certify,
                         "agreement_bound": plan.agreement_bound, "predicted_speedup_batch": plan.predicted_speedup,
                         "reason": plan.reason},
                "profile": self.profile.to_json() if self.profile else None, "curve": plan.curve}


def _fuse_head(model: onnx.ModelProto, head: ExitHead, input_specs: dict[str, Observed], state) -> onnx.ModelProto:
    """Append the ONNX exit head (passes.heads.head_nodes) to an exported segment."""
    g = model.graph
    mask_type = None
    if head.mask_input:
        m = state[head.mask_input].numpy()
        mask_type = onnx.helper.np_dtype_to_tensor_dtype(m.dtype)
        if head.mask_input not in {i.name for i in g.input}:
            g.input.append(onnx.helper.make_tensor_value_info(head.mask_input, mask_type, input_specs[head.mask_input].shape))
    nodes, inits, outs = head_nodes(head, mask_type)
    g.node.extend(nodes)
    g.initializer.extend(inits)
    g.output.extend(outs)
    return model


def export_onnx(module: torch.nn.Module, args: Sequence[torch.Tensor], in_names: Sequence[str],
                out_names: Sequence[str], file: str, exporter: str = "auto") -> str:
    """torch.onnx.export with a symbolic batch dim on every input, at opset 18.

    exporter: "dynamo" (torch.export based), "legacy" (TorchScript based) or "auto" (dynamo, then
    legacy if it fails). Returns the exporter that succeeded; raises ExitcError if none did.
    """
    import warnings

    order = {"auto": ["dynamo", "legacy"], "dynamo": ["dynamo"], "legacy": ["legacy"]}[exporter]
    errors = []
    for kind in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    batch = torch.export.Dim("batch")
                    params = list(inspect.signature(module.forward).parameters)
                    torch.onnx.export(module, tuple(args), file, input_names=list(in_names),
                                      output_names=list(out_names), opset_version=OPSET, dynamo=True,
                                      dynamic_shapes={p: {0: batch} for p in params[:len(args)]}, verbose=False)
                    # The dynamo exporter writes weights to FILE.data; keep one self-contained file.
                    model = onnx.load(file)
                    if os.path.exists(file + ".data"):
                        os.remove(file + ".data")
                    onnx.save(model, file)
                else:
                    torch.onnx.export(module, tuple(args), file, input_names=list(in_names),
                                      output_names=list(out_names), opset_version=OPSET, dynamo=False,
                                      dynamic_axes={n: {0: "batch"} for n in list(in_names) + list(out_names)})
            return kind
        except Exception as exc:  # noqa: BLE001 - report every exporter's failure
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(f"{kind}: {first}")
    raise ExitcError(f"torch.onnx.export failed for {type(module).__name__} ({'; '.join(errors)})")


# --------------------------------------------------------------------------------------------
# stages


def collect_features_torch(gm, candidates, mask_input: str | None, data: Dataset, batch_size: int = 64):
    """Original outputs and pooled features (passes.fx.pool_features) at every candidate."""
    final = output_node(gm).name
    probe = extract_segment(gm, [], [final] + [c.tensor for c in candidates], "probe")
    parts: list[list[np.ndarray]] = [[] for _ in range(len(candidates) + 1)]
    with torch.no_grad():
        for sl in batches(data.rows, batch_size):
            feeds = _torch_feeds(data.feeds, sl)
            outs = probe(*[feeds[n] for n in probe.input_names])
            parts[0].append(outs[0].float().numpy())
            for k, c in enumerate(candidates):
                mask = feeds.get(mask_input) if c.layout == "btc" and mask_input else None
                parts[k + 1].append(pool_features(outs[k + 1], c.layout, mask, c.pooling).numpy())
    out = np.concatenate(parts[0]).astype(np.float32)
    return out, [np.concatenate(p).astype(np.float32) for p in parts[1:]]


def _time(fn, reps: int, warmup: int = 2) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def profile_torch(gm, candidates, heads: list[ExitHeadModule], mask_input: str | None,
                  feeds: dict[str, torch.Tensor], reps_b1: int = 20, reps_bn: int = 5) -> Profile:
    """Measured torch costs, as :class:`exitc.profile.Profile`: call overhead (a trivial fx call),
    the original, every backbone slice between consecutive candidates and every head, each
    modelled as fixed + per_row from batch 1 and the profiling batch."""
    b = len(next(iter(feeds.values())))
    one = {k: v[:1] for k, v in feeds.items()}
    names = input_names(gm)
    timings: dict[str, dict] = {}

    def cost(label, fn_b1, fn_bn):
        t1, tb = _time(fn_b1, reps_b1), _time(fn_bn, reps_bn)
        timings[label] = {"batch1": t1, f"batch{b}": tb}
        return Cost.from_two(t1, tb, b)

    ident = torch.fx.symbolic_trace(torch.nn.Identity())
    z = torch.zeros(1)
    overhead = _time(lambda: ident(z), 200)
    original = cost("original", lambda: gm(*[one[n] for n in names]), lambda: gm(*[feeds[n] for n in names]))
    state_b, state_1 = dict(feeds), dict(one)
    slices = []
    for seg in build_fx_segments(gm, candidates):
        a1, ab = [state_1[n] for n in seg.inputs], [state_b[n] for n in seg.inputs]
        slices.append(cost(f"slice{seg.index}", lambda: seg.module(*a1), lambda: seg.module(*ab)))
        with torch.no_grad():
            state_1.update(zip(seg.outputs, seg.module(*a1)))
            state_b.update(zip(seg.outputs, seg.module(*ab)))
    head_costs = []
    for k, (c, h) in enumerate(zip(candidates, heads)):
        m1 = state_1.get(mask_input) if c.layout == "btc" and mask_input else None
        mb = state_b.get(mask_input) if c.layout == "btc" and mask_input else None
        head_costs.append(cost(f"head{k}", lambda: h(state_1[c.tensor], m1), lambda: h(state_b[c.tensor], mb)))
    return Profile(b, original, slices, head_costs, overhead, timings)


def find_mask_input(obs: dict[str, Observed], names: list[str]) -> str | None:
    """The attention-mask input of a token model (rank 2, batch-major, named *mask*), as in
    :func:`exitc.passes.split.find_mask_input`."""
    for n in names:
        o = obs.get(n)
        if o is not None and o.is_tensor and len(o.shape) == 2 and "mask" in n.lower():
            return n
    return None


def compile(module: torch.nn.Module, example_inputs=None, calib=None, target_acc: float = 0.99,
            confidence: float = 0.95, batch_size: int = 32, certify_fraction: float = CompileOptions.certify_fraction,
            max_fit_rows: int = CompileOptions.max_fit_rows,
            head_kinds: tuple[str, ...] = ("linear", "mlp"), max_candidates: int = CompileOptions.max_candidates, seed: int = 0,
            output_name: str = "logits", exporter: str = "auto", progress: bool = False, log=print,
            latency_weight: float = 0.25, cost_profile=None):
    """Compile a PyTorch classifier into an early-exit model.

    module: an ``nn.Module`` whose forward returns one tensor [batch, classes] (logits or
    probabilities). example_inputs: a tensor, a tuple of tensors or a dict by argument name (only
    names, dtypes and non-batch shapes are used; default: the first calibration rows). calib: see
    :func:`to_dataset`. cost_profile: optional ``f(candidates, batch_size) -> exitc.profile.Profile``
    giving the costs instead of timing them here (reproducible compiles, costs from the target
    machine); the ONNX fallback always measures. Other options as :class:`exitc.driver.CompileOptions`.

    Returns :class:`TorchCompiled`, or :class:`OnnxCompiled` when torch.fx cannot trace the module
    (the reason, naming the submodule, is logged and kept in ``compiled.fallback_reason``).
    """
    if calib is None:
        raise ExitcError("exitc.compile needs calibration data (calib=...)")
    module = module.eval()
    opts = CompileOptions(target_acc=target_acc, confidence=confidence, batch_size=batch_size,
                          certify_fraction=certify_fraction, max_fit_rows=max_fit_rows, max_candidates=max_candidates,
                          head_kinds=tuple(head_kinds), seed=seed, progress=progress,
                          latency_weight=latency_weight, cost_profile=cost_profile)
    opts.validate()
    if example_inputs is None and isinstance(calib, (str, os.PathLike)):
        examples = examples_from_npz(module, calib)
    elif example_inputs is None:
        params = [p.name for p in forward_params(module) if p.default is inspect.Parameter.empty]
        first = next(iter(calib)) if not isinstance(calib, (np.ndarray, dict, tuple)) else None
        if first is None:
            raise ExitcError("example_inputs is required with this kind of calibration data")
        examples, _ = _item_to_feeds(first, params)
    else:
        examples = bind_inputs(module, example_inputs)
    data = to_dataset(calib, examples)
    check_rows(data, opts)
    names = list(examples)
    params = forward_params(module)
    concrete = {p.name: p.default for p in params if p.name not in examples and p.default is not inspect.Parameter.empty}
    missing = [p.name for p in params if p.name not in examples and p.name not in concrete]
    if missing:
        raise ExitcError(f"{type(module).__name__}.forward argument {missing[0]!r} has no example input and no default")
    try:
        gm = trace(module, concrete or None)
    except TraceFailure as exc:
        log(f"exitc: {exc}; falling back to ONNX export + the ONNX pipeline")
        # The given costs price the fx candidates; the fallback's candidates are the export's, so it measures.
        return compile_via_onnx(module, names, data, dataclasses.replace(opts, cost_profile=None), exporter=exporter,
                                reason=str(exc), log=log)
    return compile_traced(gm, type(module).__name__, names, data, opts, output_name, log)


@dataclasses.dataclass
class OnnxMirror:
    """The traced module exported to ONNX, with the ONNX passes' candidates placed in the fx graph."""

    model: onnx.ModelProto             # normalised export
    candidates: list[Candidate]        # ONNX candidates (tensor = ONNX names)
    fx_candidates: list[Candidate]     # the same cuts in the fx graph (tensor = fx node names)
    mask_input: str | None
    elem_types: dict[str, int]
    unplaced: int                      # ONNX candidates with no equivalent fx cut


def onnx_mirror(gm, module_name: str, names: list[str], data: Dataset, output_name: str, max_candidates: int,
                log=print) -> OnnxMirror | None:
    """Export `gm` to ONNX, find candidates there and place them in the fx graph; None (and a log
    line saying why) if the module does not export or no candidate can be placed."""
    with tempfile.TemporaryDirectory(prefix="exitc-mirror-") as work:
        file = os.path.join(work, "module.onnx")
        n = min(8, data.rows)
        args = [torch.from_numpy(np.ascontiguousarray(data.feeds[k][:n])) for k in names]
        try:
            export_onnx(gm, args, names, [output_name], file, "dynamo")
            model, _ = normalize(load_model(file), output=output_name, label=f"{module_name} (exported)")
        except ExitcError as exc:
            log(f"exitc: {module_name}: no ONNX mirror ({exc}); candidates from the fx graph, costs measured in torch")
            return None
    # An input exit on the graph input itself (cut 0) has no fx cut to place it at (its segment
    # would be an empty module, which the exporters cannot write): the torch path leaves it out.
    candidates = [c for c in find_candidates(model, max_candidates=max_candidates) if c.cut > 0]
    idx = GraphIndex.build(model)
    elem_types = {name: info.elem_type for name, info in idx.infos.items()}
    # The candidate tensors' values on a few rows, from ONNX Runtime and from the fx graph.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for c in candidates:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(c.tensor, elem_types.get(c.tensor, 1), None))
    rows = {k: v[:3] for k, v in data.feeds.items()}
    values = make_session(probe, f"{module_name} (exported)").run(rows, [c.tensor for c in candidates])
    placed = match_tensors(record_values(gm, _torch_feeds(rows)), {c.tensor: v for c, v in zip(candidates, values)})
    onnx_cands, fx_cands = [], []
    for c in candidates:
        fx_name = placed.get(c.tensor)
        if fx_name is None:
            continue
        # Side tensors (a transformer's extended mask) are recomputed from the graph inputs in the
        # fx segments; the check below rejects a cut where anything heavy would be recomputed.
        fx_cut = dataclasses.replace(c, tensor=fx_name, side=())
        if cut_recomputes_nothing(gm, fx_cut):
            onnx_cands.append(c)
            fx_cands.append(fx_cut)
    if not onnx_cands:
        log(f"exitc: {module_name}: none of the {len(candidates)} candidates of the ONNX export could be placed in "
            "the fx graph; candidates from the fx graph, costs measured in torch")
        return None
    return OnnxMirror(model, onnx_cands, fx_cands, onnx_mask_input(model), elem_types,
                      len(candidates) - len(onnx_cands))


def compile_traced(gm, module_name: str, names: list[str], data: Dataset, opts: CompileOptions,
                   output_name: str = "logits", log=print, mirror: bool = True) -> TorchCompiled:
    """The fx pipeline on a traced module (see the module docstring). mirror=False skips the ONNX
    mirror: candidates from the fx graph, features and costs in torch."""
    feeds = data.feeds
    if data.rows < 3:
        raise ExitcError(f"{data.path}: {data.rows} rows; at least 3 are needed")
    obs = observe(gm, _torch_feeds(feeds, slice(0, 2)), _torch_feeds(feeds, slice(0, 3)))
    out = obs[output_node(gm).name]
    if not (out.is_tensor and out.batch_major and len(out.shape) == 2 and isinstance(out.shape[1], int)
            and out.shape[1] >= 2 and out.dtype.is_floating_point):
        raise ExitcError(f"{module_name}: the output has shape {out.shape}; exitc needs a batch-major "
                         "classification output [batch, classes]")
    for n in names:
        if not obs[n].batch_major:
            raise ExitcError(f"{module_name}: input {n!r} is not batch-major")
    inputs = {n: obs[n] for n in names}
    mask_input = find_mask_input(obs, names)
    twin = onnx_mirror(gm, module_name, names, data, output_name, opts.max_candidates, log) if mirror else None
    candidates = twin.fx_candidates if twin else find_fx_candidates(gm, obs, max_candidates=opts.max_candidates)
    log(f"exitc: {len(candidates)} candidate exits in {module_name}"
        + (f" (from its ONNX export; {twin.unplaced} could not be placed in the fx graph)" if twin and twin.unplaced
           else " (from its ONNX export)" if twin else ""))
    fit_idx, cert_idx = split_rows(data.rows, opts.certify_fraction, opts.seed, opts.max_fit_rows)
    fitted: list[FittedHead] = []
    profile = None
    emit_probabilities = False
    if candidates and opts.target_acc < 1.0:
        neighbours = None
        if twin:
            probe = FeatureProbe(twin.model, twin.candidates, twin.mask_input)
            cache = probe.collect(data, progress=opts.progress)
            outputs, features = cache.outputs, cache.features
            if opts.augment:  # the ONNX pipeline's augment stage, on the mirror
                twin_inputs = [GraphIndex.build(twin.model).infos[n] for n in names]
                neighbours = augment_stage(SimpleNamespace(inputs=twin_inputs), data.take(fit_idx),
                                           cache.predictions[fit_idx], twin.mask_input, probe,
                                           cache.outputs_are_probabilities, opts, log)
        else:  # features computed in torch: no neighbours (they would need the ONNX probe)
            outputs, features = collect_features_torch(gm, candidates, mask_input, data)
        emit_probabilities = looks_like_probabilities(outputs)
        probs = (outputs if emit_probabilities else softmax(outputs)).astype(np.float32)
        fitted = distill_heads(twin.candidates if twin else candidates, [f[fit_idx] for f in features],
                               probs[fit_idx], kinds=opts.head_kinds, seed=opts.seed, progress=opts.progress,
                               neighbours=neighbours)
        b = min(opts.batch_size, len(fit_idx))
        if opts.cost_profile is not None:  # given costs (e.g. measured on the target machine): no timing here
            profile = given_profile(opts.cost_profile, candidates, b)
        elif twin:
            profile = profile_costs(twin.model, fitted, twin.mask_input, data.take(fit_idx), b, twin.elem_types,
                                    progress=opts.progress)
        else:
            heads = [ExitHeadModule(h.candidate.layout, h.layers, h.gate_w, h.gate_b, pooling=h.candidate.pooling)
                     for h in fitted]
            profile = profile_torch(gm, candidates, heads, mask_input,
                                    _torch_feeds(data.take(fit_idx).feeds, slice(0, b)))
        # From here on the heads belong to the fx graph's cuts.
        fitted = [dataclasses.replace(h, candidate=c) for h, c in zip(fitted, candidates)]
        pred = outputs.argmax(1)
        cert_scores, cert_agree = certify_stage(fitted, [f[cert_idx] for f in features], pred[cert_idx])
        fit_scores = np.stack([h.oof_score for h in fitted], axis=1)
        fit_agree = np.stack([h.oof_agree for h in fitted], axis=1)
        plan = choose_plan(fit_scores, fit_agree, cert_scores, cert_agree, profile, opts.target_acc, opts.confidence,
                           latency_weight=opts.latency_weight)
    else:
        plan = Plan.without_exits(opts.target_acc, opts.confidence, "no candidate exit points found" if not candidates
                                  else "target_acc 1.0 admits no early exit")
    cuts = [fitted[c].candidate for c in plan.exits]
    heads = [ExitHeadModule(fitted[c].candidate.layout, fitted[c].layers, fitted[c].gate_w, fitted[c].gate_b,
                            threshold=plan.thresholds[i], emit_probabilities=emit_probabilities,
                            pooling=fitted[c].candidate.pooling)
             for i, c in enumerate(plan.exits)]
    segments = build_fx_segments(gm, cuts)
    if plan.reason:
        log(f"exitc: {plan.reason}; the compiled model runs the original as one segment")
    else:
        log(f"exitc: {len(plan.exits)} exits kept (candidates {plan.exits}), agreement bound "
            f"{plan.agreement_bound:.4f}, predicted speedup {plan.predicted_speedup:.2f}x at batch {profile.batch_size}")
    example = {k: v[:2] for k, v in feeds.items()}
    measured_in = "given" if opts.cost_profile is not None else "onnxruntime" if twin else "torch"
    return TorchCompiled(module_name, gm, segments, heads, [c.tensor for c in cuts], mask_input, inputs, out,
                         output_name, emit_probabilities, plan, profile, candidates, fitted, example, measured_in,
                         [c.tensor for c in twin.candidates] if twin else None)


# --------------------------------------------------------------------------------------------
# fallback: whole model through ONNX


class OnnxCompiled:
    """The compiled model of the ONNX fallback, with the interface of :class:`TorchCompiled`."""

    def __init__(self, artifact: str, input_names: list[str], workdir, reason: str, result):
        from .runtime import load

        self.artifact = artifact
        self.input_names = input_names
        self._workdir = workdir  # keeps the exported model and the artifact alive
        self.fallback_reason = reason
        self.result = result
        self.plan = result.plan
        self.model = load(artifact, engine="python")
        self.num_exits = self.model.num_exits
        self.last_exit_index: torch.Tensor | None = None

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            kwargs, args = args[0], ()
        feeds = dict(zip(self.input_names, args))
        feeds.update(kwargs)
        outs, exit_index = self.model.run({k: _to_numpy(feeds[k]) for k in self.input_names})
        self.last_exit_index = torch.from_numpy(exit_index)
        return torch.from_numpy(outs[self.model.output_names.index(self.model.prediction_output)])

    def save(self, path: str, force: bool = False, exporter: str = "auto") -> str:
        if os.path.exists(path):
            if not force:
                raise ExitcError(f"{path}: output directory already exists (use force=True to replace it)")
            shutil.rmtree(path)
        shutil.copytree(self.artifact, path)
        return path


def compile_via_onnx(module: torch.nn.Module, names: list[str], data: Dataset, opts: CompileOptions,
                     exporter: str = "auto", reason: str = "", log=print) -> OnnxCompiled:
    """Export the whole module to ONNX and compile it with :func:`exitc.driver.compile_model`."""
    from .driver import compile_model

    work = tempfile.TemporaryDirectory(prefix="exitc-torch-")
    model_path = os.path.join(work.name, f"{type(module).__name__}.onnx")
    calib_path = os.path.join(work.name, "calib.npz")
    n = min(8, data.rows)
    args = [torch.from_numpy(data.feeds[k][:n]) for k in names]
    kind = export_onnx(module, args, names, ["logits"], model_path, exporter)
    log(f"exitc: exported {type(module).__name__} to ONNX ({kind} exporter, opset {OPSET})")
    np.savez(calib_path, **data.feeds)
    out_dir = os.path.join(work.name, "model.exitc")
    result = compile_model(model_path, calib_path, out_dir, opts, log=log)
    return OnnxCompiled(out_dir, names, work, reason, result)


# --------------------------------------------------------------------------------------------
# CLI helper: exitc compile module.py:factory


def load_factory(spec: str) -> torch.nn.Module:
    """``"path/to/file.py:name"`` -> the nn.Module ``name`` (called with no arguments if it is a
    factory function or class). Raises ExitcError naming the file/name on any problem."""
    if ":" not in spec:
        raise ExitcError(f"{spec}: expected FILE.py:NAME")
    path, name = spec.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ExitcError(f"{path}: no such file")
    mod_name = "exitc_user_" + os.path.splitext(os.path.basename(path))[0]
    s = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(s)
    try:
        s.loader.exec_module(mod)
    except Exception as exc:
        raise ExitcError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(mod, name):
        raise ExitcError(f"{path}: has no attribute {name!r}")
    obj = getattr(mod, name)
    if not isinstance(obj, torch.nn.Module):
        try:
            obj = obj()
        except Exception as exc:
            raise ExitcError(f"{spec}: calling it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, torch.nn.Module):
        raise ExitcError(f"{spec}: did not produce a torch.nn.Module (got {type(obj).__name__})")
    return obj


def examples_from_npz(module: torch.nn.Module, path) -> dict[str, np.ndarray]:
    """Two rows of each forward argument found in an .npz (a single array stands for the first
    argument whatever its name); ExitcError naming the file if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k][:2] for k in npz.files if k != "labels"}
    except (OSError, ValueError) as exc:
        raise ExitcError(f"{path}: not a readable .npz ({exc})") from None
    params = [p.name for p in forward_params(module)]
    if len(arrays) == 1 and params and params[0] not in arrays:
        arrays = {params[0]: next(iter(arrays.values()))}
    examples = {p: arrays[p] for p in params if p in arrays}
    if not examples:
        raise ExitcError(f"{path}: no array named after an argument of {type(module).__name__}.forward {params}")
    return examples


def compile_module_cli(spec: str, calib_path: str, out_dir: str, example_shape: str | None = None,
                       force: bool = False, **options) -> Any:
    """What ``exitc compile FILE.py:NAME --calib calib.npz`` runs. ``example_shape`` ("3,32,32" or
    "1,3,32,32") only checks the calibration arrays of a single-input module."""
    module = load_factory(spec)
    if os.path.exists(out_dir) and not force:
        raise ExitcError(f"{out_dir}: output directory already exists (use --force to replace it)")
    examples = examples_from_npz(module, calib_path)
    if example_shape:
        dims = [int(d) for d in example_shape.replace("x", ",").split(",") if d]
        first = next(iter(examples.values()))
        if list(first.shape[1:]) != dims[-(first.ndim - 1):]:
            raise ExitcError(f"{calib_path}: rows have shape {list(first.shape[1:])}, --example-shape says {dims}")
    compiled = compile(module, examples, calib=calib_path, **options)
    compiled.save(out_dir, force=force)
    return compiled
