"""PyTorch front end: ``exitc.compile(module, example_inputs, calib=...)``.

A front end only produces what the pipeline consumes; after it, a module goes through the same
pipeline as an ONNX file (:func:`exitc.driver.run_pipeline`), so every option and every stage
(chained gates, augment, verify with its never-slower fallback, report) applies to both:

    trace (torch.fx) -> observe shapes -> ONNX mirror (export, normalised like an ONNX file)
      + placement (ONNX candidate tensor -> fx node)
      -> exitc.driver.run_pipeline: candidates (the placeable ones) -> features -> augment -> distill
         -> profile -> policy -> emit -> verify -> report: the artifact
      -> TorchCompiled: a torch runtime of that artifact (its manifest's exits, thresholds and
         gates, the fx graph split at the placed cuts, the exit loop of exitc.exit_loop)

The *ONNX mirror* is the traced module exported once to ONNX (dynamo exporter, the legacy one if
that fails). Each candidate tensor is placed in the fx graph by value
(:func:`exitc.passes.fx.match_tensors`); a cut is placeable if splitting the fx graph there
recomputes no heavy op. An input exit on the graph input itself (cut 0) is placed at the fx
placeholder: its segment is empty and its head reads the input. ``save()`` copies the artifact.

Without a mirror (neither exporter writes the module, or no candidate can be placed), there is no
ONNX model for the pipeline: candidates come from the ONNX cut rule on a shadow graph of the fx
graph (:func:`exitc.passes.fx.find_fx_candidates`), and the same analysis stages
(:func:`exitc.analysis.analyse`: features, distill, profile, policy with chained gates) run on
measurements taken in torch (:class:`TorchMeasurements`). The result runs in torch only: with no
ONNX export there is no artifact to save.

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
import os
import shutil
import tempfile
import time
from typing import Any, Sequence

import numpy as np
import onnx
import torch

from .analysis import analyse, check_rows, split_rows
from .backends import make_session
from .data import Dataset, batches
from .distill import FittedHead
from .driver import CompileResult, FrontEnd, normalise_stage, run_pipeline
from .emit import plan_exit_heads
from .errors import ExitcError
from .exit_loop import ArrayOps, ExitSpec, Step, needed_after, run_exits
from .features import FeatureCache, looks_like_probabilities
from .manifest import read_manifest
from .options import CompileOptions
from .passes import load_model
from .passes.candidates import Candidate
from .passes.fx import (ExitHeadModule, FxSegment, Observed, TraceFailure, build_fx_segments, cut_recomputes_nothing,
                        extract_segment, find_fx_candidates, input_names, match_tensors, observe, output_node,
                        pool_features, record_values, trace)
from .passes.graph import GraphIndex
from .passes.heads import ExitHead, softmax
from .policy import Plan
from .profile import Cost, Profile

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
# the torch runtime of an artifact


def _compact(tensors: dict[str, torch.Tensor], keep: torch.Tensor, batch_axes) -> dict[str, torch.Tensor]:
    idx = torch.nonzero(keep).reshape(-1)
    return {k: v.index_select(batch_axes.get(k, 0), idx) for k, v in tensors.items()}


def _scatter(dest: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    dest[rows] = values.to(dest.dtype)


# exitc.exit_loop's array operations on torch tensors (scores compared in float32, as numpy does).
TORCH_OPS = ArrayOps(
    arange=lambda n: torch.arange(n),
    full=lambda n, v: torch.full((n,), v, dtype=torch.int64),
    zeros_rows=lambda n, like: torch.zeros((n,) + tuple(like.shape[1:]), dtype=like.dtype),
    at_least=lambda score, t: score >= torch.tensor(t, dtype=torch.float32),
    any=lambda m: bool(m.any()),
    compact=_compact,
    scatter=_scatter,
)


class TorchExitHead(torch.nn.Module):
    """An :class:`ExitHead` (passes.heads) in torch: ExitHeadModule.from_head (pooling, layers,
    gate, chained gate included) with the names the exit loop needs. Returns (logits or
    probabilities, score [batch], probabilities)."""

    def __init__(self, head: ExitHead):
        super().__init__()
        self.module = ExitHeadModule.from_head(head)
        self.layout = head.layout
        self.tensor = head.tensor
        self.mask_input = head.mask_input
        self.prev_probs = head.prev_probs
        self.export_probs = head.export_probs
        self.emit_probabilities = head.emit_probabilities
        self.logits_name, self.score_name, self.probs_name = head.logits_name, head.score_name, head.probs_name
        self.threshold = float(head.meta.get("threshold", 2.0))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, prev: torch.Tensor | None = None):
        out, score = self.module(x, mask, prev if self.module.chained else None)
        return out, score, (out if self.emit_probabilities else torch.softmax(out, dim=1))


def torch_exit_head(head: ExitHead) -> TorchExitHead:
    """The one place the torch runtime builds a head from an ExitHead."""
    return TorchExitHead(head)


class TorchCompiled(torch.nn.Module):
    """A torch runtime of a compiled artifact: the fx graph split at the exits' cuts, the exits'
    heads (thresholds and chained gates as in the artifact), run by :func:`exitc.exit_loop.run_exits`
    with batch compaction, the loop the reference runtime runs.

    ``compiled(*inputs)`` takes the module's inputs and returns its prediction output; rows that
    ran to the end get exactly the original's ops (so the same values), exited rows the exit head's
    output. The exit taken by each row of the last call is ``last_exit_index`` (int64 [batch];
    ``num_exits`` means "ran the whole model"). :meth:`save` writes the artifact.
    """

    def __init__(self, module_name: str, gm, cuts: list[Candidate], heads: list[ExitHead], mask_input: str | None,
                 inputs: dict[str, Observed], output: Observed, output_name: str, plan: Plan, profile: Profile | None,
                 candidates: list[Candidate], fitted: list[FittedHead], measured_in: str,
                 artifact: str | None = None, workdir=None, onnx_candidates: list[str] | None = None,
                 result: CompileResult | None = None):
        super().__init__()
        self.module_name = module_name
        self.graph_module = gm
        self.cut_tensors = [c.tensor for c in cuts]  # fx node each exit's head reads
        self.segments: list[FxSegment] = build_fx_segments(gm, cuts)
        self.segment_modules = torch.nn.ModuleList([s.module for s in self.segments])
        # The heads read the fx node of their cut (an ExitHead names the ONNX tensor).
        self.heads = torch.nn.ModuleList([torch_exit_head(dataclasses.replace(h, tensor=c.tensor))
                                          for h, c in zip(heads, cuts)])
        self.mask_input = mask_input
        self.input_specs = inputs
        self.input_names = list(inputs)
        self.output_spec = output
        self.output_name = output_name
        self.emit_probabilities = bool(heads and heads[0].emit_probabilities)
        self.plan, self.profile, self.candidates, self.fitted = plan, profile, candidates, fitted
        self.measured_in = measured_in              # where the cost profile was measured
        self.onnx_candidates = onnx_candidates      # candidate tensors in the ONNX mirror, if one was used
        self.artifact = artifact                    # the emitted artifact (None without a mirror)
        self.result = result                        # the pipeline's CompileResult (None without a mirror)
        self._workdir = workdir                     # keeps the mirror and the artifact alive
        self.num_exits = len(heads)
        self.num_classes = int(output.shape[1])
        self.last_exit_index: torch.Tensor | None = None

    @classmethod
    def from_artifact(cls, artifact: str, heads: list[ExitHead], cuts: list[Candidate], **kwargs) -> "TorchCompiled":
        """The torch runtime of `artifact`: its manifest's exits (candidate tensor, threshold, head
        outputs) must be `heads`' (the plan's ExitHeads, exitc.emit.plan_exit_heads); a mismatch is
        a bug, not bad input."""
        exits = [s["exit"] for s in read_manifest(artifact)["segments"] if s["exit"]]
        if [(e["candidate"], e["logits"], e["score"], float(e["threshold"])) for e in exits] != \
                [(h.tensor, h.logits_name, h.score_name, float(h.meta["threshold"])) for h in heads]:
            raise RuntimeError(f"{artifact}: the manifest's exits are not the plan's")
        return cls(heads=heads, cuts=cuts, artifact=artifact, **kwargs)

    def _bind(self, args, kwargs) -> dict[str, torch.Tensor]:
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            kwargs, args = args[0], ()
        feeds = dict(zip(self.input_names, args))
        feeds.update({k: v for k, v in kwargs.items() if k in self.input_specs})
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ExitcError(f"missing input {missing[0]!r} (inputs: {self.input_names})")
        return {k: torch.as_tensor(feeds[k]) for k in self.input_names}

    def steps(self) -> list[Step]:
        """The segments as exit-loop steps (thresholds read from the heads at each call)."""
        steps = []
        for seg, head in zip(self.segments, self.heads):
            reads = [head.tensor] + [n for n in (head.mask_input, head.prev_probs) if n]
            steps.append(Step(tuple(dict.fromkeys(seg.inputs + [r for r in reads if r not in seg.outputs])),
                              tuple(seg.carry_out) + ((head.probs_name,) if head.export_probs else ()),
                              ExitSpec(seg.index, head.logits_name, head.score_name, head.threshold)))
        last = self.segments[-1]
        steps.append(Step(tuple(last.inputs), (), None, (self.output_name,)))
        return steps

    def _run_segment(self, i: int, state: dict) -> dict:
        seg = self.segments[i]
        outs = dict(zip(seg.outputs, seg.module(*[state[n] for n in seg.inputs])))
        if i == self.num_exits:
            return {self.output_name: outs[seg.outputs[0]]}
        head = self.heads[i]
        x = outs[head.tensor] if head.tensor in outs else state[head.tensor]
        out, score, prob = head(x, state[head.mask_input] if head.mask_input else None,
                                state[head.prev_probs] if head.prev_probs else None)
        outs.update({head.logits_name: out, head.score_name: score})
        if head.export_probs:
            outs[head.probs_name] = prob
        return outs

    @torch.no_grad()
    def forward(self, *args, **kwargs) -> torch.Tensor:
        state = self._bind(args, kwargs)
        batch = state[self.input_names[0]].shape[0]
        results = {self.output_name: torch.zeros(batch, self.num_classes, dtype=self.output_spec.dtype)}
        steps = self.steps()
        loop = run_exits(steps, self._run_segment, state, batch, results, self.output_name, TORCH_OPS,
                         needed_after(steps))
        self.last_exit_index = loop.exit_index
        return results[self.output_name]

    def save(self, path: str, force: bool = False, exporter: str = "auto") -> str:
        """Copy the artifact (docs/artifact-format.md) emitted by the pipeline to `path`, atomically.
        `exporter` is accepted for compatibility: the artifact's segments come from the ONNX mirror."""
        if self.artifact is None:
            raise ExitcError(f"{self.module_name}: no artifact to save: the module has no ONNX export (no mirror), "
                             "so it was compiled for the torch runtime only")
        return copy_artifact(self.artifact, path, force)


def copy_artifact(src: str, path: str, force: bool) -> str:
    """Copy an artifact directory to `path` through a staging directory beside it (a failure
    leaves nothing behind; `path` is replaced only with `force`)."""
    if os.path.exists(path) and not force:
        raise ExitcError(f"{path}: output directory already exists (use force=True to replace it)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ExitcError(f"{parent}: parent directory of the output does not exist")
    staging = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(src, staging)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


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
# measurements in torch (no mirror)


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


def profile_torch(gm, candidates, heads: list[TorchExitHead], mask_input: str | None,
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


class TorchMeasurements:
    """The analysis stages' measurements (:class:`exitc.analysis.Measurements`) taken in torch, for
    a traced module without an ONNX mirror: features from :func:`collect_features_torch`, costs
    from :func:`profile_torch`, no synthetic neighbours (their features would need the ONNX probe)."""

    measured_in = "torch"

    def __init__(self, gm, mask_input: str | None):
        self.gm, self.mask_input = gm, mask_input

    def features(self, candidates: list[Candidate], data: Dataset, opts: CompileOptions) -> FeatureCache:
        outputs, features = collect_features_torch(self.gm, candidates, self.mask_input, data)
        is_prob = looks_like_probabilities(outputs)
        probs = (outputs if is_prob else softmax(outputs)).astype(np.float32)
        return FeatureCache(outputs, probs, features, is_prob)

    def neighbours(self, fit, fit_pred, is_prob, opts, log=print):
        return None

    def profile(self, heads: list[FittedHead], fit: Dataset, opts: CompileOptions) -> Profile:
        b = min(opts.batch_size, fit.rows)
        torch_heads = [torch_exit_head(h.exit_head(k, onnx.TensorProto.FLOAT, self.mask_input, False))
                       for k, h in enumerate(heads)]
        return profile_torch(self.gm, [h.candidate for h in heads], torch_heads, self.mask_input,
                             _torch_feeds(fit.feeds, slice(0, b)))


# --------------------------------------------------------------------------------------------
# the front end: the ONNX mirror and the placement of its candidates in the fx graph


@dataclasses.dataclass
class TorchFrontEnd:
    """The front end's result: what the pipeline consumes (the mirror as a :class:`FrontEnd`),
    and where each placeable candidate of the mirror lies in the fx graph."""

    front: FrontEnd
    placement: dict[str, Candidate]    # ONNX candidate tensor -> the same cut in the fx graph
    unplaced: int                      # candidates of the mirror with no equivalent fx cut


def place_candidates(gm, model: onnx.ModelProto, candidates: list[Candidate], data: Dataset,
                     label: str) -> dict[str, Candidate]:
    """For each candidate of the normalised mirror `model` that the fx graph can be split at,
    the same cut in the fx graph (tensor = fx node name, no side tensors: those are recomputed
    from the graph inputs in the fx segments).

    Guarantees: a candidate is placed only if some fx node holds its tensor's value on three
    calibration rows (:func:`match_tensors`) and splitting there recomputes no heavy op
    (:func:`cut_recomputes_nothing`). An input exit (its tensor a graph input: cut 0) is placed
    at the fx placeholder of the same name (the mirror keeps the forward's argument names)."""
    graph_inputs = set(input_names(gm))
    inner = [c for c in candidates if c.tensor not in graph_inputs]
    rows = {k: v[:3] for k, v in data.feeds.items()}
    placed_names = {c.tensor: c.tensor for c in candidates if c.tensor in graph_inputs}
    if inner:
        elem_types = {name: info.elem_type for name, info in GraphIndex.build(model).infos.items()}
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for c in inner:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(c.tensor, elem_types.get(c.tensor, 1), None))
        values = make_session(probe, label).run(rows, [c.tensor for c in inner])
        placed_names.update(match_tensors(record_values(gm, _torch_feeds(rows)),
                                          {c.tensor: v for c, v in zip(inner, values)}))
    placement = {}
    for c in candidates:
        fx_name = placed_names.get(c.tensor)
        if fx_name is None:
            continue
        fx_cut = dataclasses.replace(c, tensor=fx_name, side=())
        if cut_recomputes_nothing(gm, fx_cut):
            placement[c.tensor] = fx_cut
    return placement


def _data_reader(data: Dataset, names: list[str], module_name: str):
    """normalise_stage's data reader for an export of the module: the calibration rows, already
    keyed by the forward's argument names (the exporters keep them as the ONNX input names)."""

    def read(sig) -> Dataset:
        declared = [i.name for i in sig.inputs]
        if declared != names:  # a bug, not bad input
            raise RuntimeError(f"{module_name}: the ONNX export's inputs {declared} are not the forward's {names}")
        return data

    return read


def torch_front_end(gm, module_name: str, names: list[str], data: Dataset, opts: CompileOptions, output_name: str,
                    workdir: str, log=print) -> TorchFrontEnd | None:
    """Export `gm` (the ONNX mirror), normalise it like an ONNX file (:func:`exitc.driver.normalise_stage`)
    and place its candidates in the fx graph; None (and a log line saying why) if the module does
    not export or no candidate can be placed."""
    file = os.path.join(workdir, f"{module_name}.onnx")
    n = min(8, data.rows)
    args = [torch.from_numpy(np.ascontiguousarray(data.feeds[k][:n])) for k in names]

    label = f"{module_name} (exported)"
    try:
        kind = export_onnx(gm, args, names, [output_name], file, "auto")
        front = normalise_stage(load_model(file), _data_reader(data, names, module_name), dataclasses.replace(opts, output=output_name), file,
                                label, log)
    except ExitcError as exc:
        log(f"exitc: {module_name}: no ONNX mirror ({exc}); candidates from the fx graph, costs measured in torch")
        return None
    from .passes import find_candidates  # the candidates stage's own rule, to know what can be placed

    candidates = find_candidates(front.model, max_candidates=opts.max_candidates)
    placement = place_candidates(gm, front.model, candidates, data, label)
    if not placement:
        log(f"exitc: {module_name}: none of the {len(candidates)} candidates of the ONNX export could be placed in "
            "the fx graph; candidates from the fx graph, costs measured in torch")
        return None
    front = dataclasses.replace(front, label=module_name, place=lambda cands: [c for c in cands if c.tensor in placement],
                                source=_source(module_name, kind))
    return TorchFrontEnd(front, placement, len(candidates) - len(placement))


def _source(module_name: str, exporter: str) -> dict:
    """The manifest's "source" section for a module (there is no original ONNX file to point at)."""
    return {"file": module_name, "framework": "pytorch", "path": None, "sha256": None, "torch": torch.__version__,
            "exporter": exporter}


# --------------------------------------------------------------------------------------------
# compile


def compile(module: torch.nn.Module, example_inputs=None, calib=None, target_acc: float = 0.99,
            confidence: float = 0.95, batch_size: int = 32, certify_fraction: float = CompileOptions.certify_fraction,
            max_fit_rows: int = CompileOptions.max_fit_rows,
            head_kinds: tuple[str, ...] = CompileOptions.head_kinds, max_candidates: int = CompileOptions.max_candidates,
            seed: int = 0, output_name: str = "logits", exporter: str = "auto", progress: bool = False, log=print,
            latency_weight: float = CompileOptions.latency_weight, cost_profile=None, augment: bool = True,
            never_slower: bool = True):
    """Compile a PyTorch classifier into an early-exit model.

    module: an ``nn.Module`` whose forward returns one tensor [batch, classes] (logits or
    probabilities). example_inputs: a tensor, a tuple of tensors or a dict by argument name (only
    names, dtypes and non-batch shapes are used; default: the first calibration rows). calib: see
    :func:`to_dataset`. output_name: the prediction output's name in the artifact. cost_profile:
    optional ``f(candidates, batch_size) -> exitc.profile.Profile`` giving the costs instead of
    timing them here (reproducible compiles, costs from the target machine). augment,
    never_slower and the other options as :class:`exitc.options.CompileOptions` (the same pipeline
    runs them). exporter: for the ONNX fallback of an untraceable module.

    Returns :class:`TorchCompiled`, or :class:`OnnxCompiled` when torch.fx cannot trace the module
    (the reason, naming the submodule, is logged and kept in ``compiled.fallback_reason``).
    """
    opts = CompileOptions(target_acc=target_acc, confidence=confidence, batch_size=batch_size, output=output_name,
                          certify_fraction=certify_fraction, max_fit_rows=max_fit_rows, max_candidates=max_candidates,
                          head_kinds=tuple(head_kinds), seed=seed, progress=progress,
                          latency_weight=latency_weight, cost_profile=cost_profile, augment=augment,
                          never_slower=never_slower)
    return compile_with_options(module, example_inputs, calib, opts, exporter, log)


def compile_with_options(module: torch.nn.Module, example_inputs, calib, opts: CompileOptions, exporter: str = "auto",
                         log=print):
    """:func:`compile` with its options as CompileOptions (what the CLI builds for both front ends);
    `opts.output` names the prediction output ("logits" if None)."""
    if calib is None:
        raise ExitcError("exitc.compile needs calibration data (calib=...)")
    opts = dataclasses.replace(opts, output=opts.output or "logits")
    opts.validate()
    module = module.eval()
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
        return compile_via_onnx(module, names, data, opts, exporter=exporter, reason=str(exc), log=log)
    return compile_traced(gm, type(module).__name__, names, data, opts, opts.output, log)


def compile_traced(gm, module_name: str, names: list[str], data: Dataset, opts: CompileOptions,
                   output_name: str = "logits", log=print, mirror: bool = True) -> TorchCompiled:
    """A traced module through the pipeline (see the module docstring). mirror=False skips the ONNX
    mirror: candidates from the fx graph, the analysis stages on torch measurements, no artifact."""
    started = time.perf_counter()
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
    opts = dataclasses.replace(opts, output=output_name)
    work = tempfile.TemporaryDirectory(prefix="exitc-torch-")
    twin = torch_front_end(gm, module_name, names, data, opts, output_name, work.name, log) if mirror else None
    common = dict(module_name=module_name, gm=gm, inputs=inputs, output=out, output_name=output_name)
    if twin is not None:
        if twin.unplaced:
            log(f"exitc: {twin.unplaced} candidates of the ONNX export of {module_name} could not be placed in the fx "
                "graph")
        result = run_pipeline(twin.front, os.path.join(work.name, "model.exitc"), opts, log, started=started)
        plan = result.plan
        heads = plan_exit_heads(plan, result.heads, {}, result.mask_input, result.emit_probabilities)
        return TorchCompiled.from_artifact(
            result.out_dir, heads, [twin.placement[result.candidates[c].tensor] for c in plan.exits],
            mask_input=result.mask_input, plan=plan, profile=result.profile, candidates=result.candidates,
            fitted=result.heads, measured_in="given" if opts.cost_profile is not None else "onnxruntime",
            workdir=work, onnx_candidates=[c.tensor for c in result.candidates], result=result, **common)
    work.cleanup()
    mask_input = find_mask_input(obs, names)
    candidates = find_fx_candidates(gm, obs, max_candidates=opts.max_candidates)
    log(f"exitc: {len(candidates)} candidate exits in {module_name} (from its fx graph)")
    fit_idx, cert_idx = split_rows(data.rows, opts.certify_fraction, opts.seed, opts.max_fit_rows)
    found = analyse(TorchMeasurements(gm, mask_input), candidates, data, fit_idx, cert_idx, opts, log)
    plan = found.plan
    if plan.reason:
        log(f"exitc: {plan.reason}; the compiled model runs the original as one segment")
    else:
        log(f"exitc: {len(plan.exits)} exits kept (candidates {plan.exits}), agreement bound "
            f"{plan.agreement_bound:.4f}, predicted speedup {plan.predicted_speedup:.2f}x")
    heads = plan_exit_heads(plan, found.heads, {}, mask_input, found.emit_probabilities)
    return TorchCompiled(cuts=[found.heads[c].candidate for c in plan.exits], heads=heads, mask_input=mask_input,
                         plan=plan, profile=found.profile, candidates=candidates, fitted=found.heads,
                         measured_in="given" if opts.cost_profile is not None else "torch", **common)


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
        """Copy the artifact to `path`, atomically (:func:`copy_artifact`)."""
        return copy_artifact(self.artifact, path, force)


def compile_via_onnx(module: torch.nn.Module, names: list[str], data: Dataset, opts: CompileOptions,
                     exporter: str = "auto", reason: str = "", log=print) -> OnnxCompiled:
    """Export the whole module to ONNX and compile the export like an ONNX file
    (:func:`exitc.driver.normalise_stage`, then :func:`exitc.driver.run_pipeline`)."""
    name = type(module).__name__
    output_name = opts.output or "logits"
    work = tempfile.TemporaryDirectory(prefix="exitc-torch-")
    model_path = os.path.join(work.name, f"{name}.onnx")
    n = min(8, data.rows)
    args = [torch.from_numpy(data.feeds[k][:n]) for k in names]
    kind = export_onnx(module, args, names, [output_name], model_path, exporter)
    log(f"exitc: exported {name} to ONNX ({kind} exporter, opset {OPSET})")
    opts = dataclasses.replace(opts, output=output_name)
    front = dataclasses.replace(normalise_stage(load_model(model_path), _data_reader(data, names, name), opts,
                                                model_path, name, log), source=_source(name, kind))
    result = run_pipeline(front, os.path.join(work.name, "model.exitc"), opts, log)
    return OnnxCompiled(result.out_dir, names, work, reason, result)


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


def compile_module_cli(spec: str, calib_path: str, out_dir: str, opts: CompileOptions,
                       example_shape: str | None = None, log=print) -> Any:
    """What ``exitc compile FILE.py:NAME --calib calib.npz`` runs, with the options the CLI builds
    for an ONNX file too. ``example_shape`` ("3,32,32" or "1,3,32,32") only checks the calibration
    arrays of a single-input module."""
    opts.validate()
    module = load_factory(spec)
    if os.path.exists(out_dir) and not opts.force:
        raise ExitcError(f"{out_dir}: output directory already exists (use --force to replace it)")
    examples = examples_from_npz(module, calib_path)
    if example_shape:
        try:
            dims = [int(d) for d in example_shape.replace("x", ",").split(",") if d]
        except ValueError:
            raise ExitcError(f"--example-shape {example_shape!r}: expected sizes like 3,32,32") from None
        first = next(iter(examples.values()))
        if list(first.shape[1:]) != dims[-(first.ndim - 1):]:
            raise ExitcError(f"{calib_path}: rows have shape {list(first.shape[1:])}, --example-shape says {dims}")
    compiled = compile_with_options(module, examples, calib_path, opts, log=log)
    compiled.save(out_dir, force=opts.force)
    return compiled
