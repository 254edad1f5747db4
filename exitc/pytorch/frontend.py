"""The PyTorch front end proper: ``exitc.compile(module, example_inputs, calib=...)``.

Holds: :func:`compile`, :func:`compile_with_options` and :func:`compile_traced` (a module through
the pipeline), :func:`torch_front_end` (the ONNX mirror as the pipeline's :class:`FrontEnd`) and
:func:`place_candidates` (the mirror's candidates placed in the fx graph), with their result
:class:`TorchFrontEnd`.

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
measurements taken in torch (:class:`exitc.pytorch.measurements.TorchMeasurements`). The result
runs in torch only: with no ONNX export there is no artifact to save.

If symbolic tracing fails (e.g. Python control flow on tensor values or shapes), the failure names
the submodule, the whole module is exported to ONNX (torch.onnx.export, dynamo exporter at opset
18, legacy exporter if that fails) and compiled by :func:`exitc.driver.compile_model`; the result
(:class:`exitc.pytorch.fallback.OnnxCompiled`) has the same interface, backed by
:func:`exitc.runtime.load`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
import time

import numpy as np
import onnx
import torch

from ..analysis import analyse, check_rows, split_rows
from ..backends import make_session
from ..data import Dataset
from ..driver import FrontEnd, normalise_stage, run_pipeline
from ..emit import plan_exit_heads
from ..errors import ExitcError
from ..options import CompileOptions
from ..passes import load_model
from ..passes.candidates import Candidate
from ..passes.fx import (TraceFailure, cut_recomputes_nothing, find_fx_candidates, input_names, match_tensors,
                         observe, output_node, record_values, trace)
from ..passes.graph import GraphIndex
from ..predictions import is_classification_shape
from .export import _data_reader, _source, export_onnx
from .fallback import compile_via_onnx
from .inputs import _item_to_feeds, _torch_feeds, bind_inputs, examples_from_npz, forward_params, to_dataset
from .measurements import TorchMeasurements, find_mask_input
from .runtime import TorchCompiled


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
    at the fx placeholder of the same name (the mirror keeps the forward's argument names). A
    time-major candidate ("tbc": [time, batch, C] between recurrent layers, as torch.onnx writes
    a `batch_first=True` nn.LSTM stack) is placed only where the fx graph holds it batch-major,
    [batch, time, C]: fx cuts carry the batch on axis 0 (the torch runtime compacts rows there)
    and the runtime's head reads the tensor transposed (TorchExitHead)."""
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
                                          {c.tensor: np.swapaxes(v, 0, 1) if c.layout == "tbc" else v
                                           for c, v in zip(inner, values)}))
    placement = {}
    for c in candidates:
        fx_name = placed_names.get(c.tensor)
        if fx_name is None:
            continue
        # An ONNX input exit recomputed from the inputs is carried by the fx segments instead.
        fx_cut = dataclasses.replace(c, tensor=fx_name, side=(), recomputed=False)
        if cut_recomputes_nothing(gm, fx_cut):
            placement[c.tensor] = fx_cut
    return placement


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
    from ..passes import find_candidates  # the candidates stage's own rule, to know what can be placed

    candidates = find_candidates(front.model, max_candidates=opts.max_candidates)
    placement = place_candidates(gm, front.model, candidates, data, label)
    if not placement:
        log(f"exitc: {module_name}: none of the {len(candidates)} candidates of the ONNX export could be placed in "
            "the fx graph; candidates from the fx graph, costs measured in torch")
        return None
    front = dataclasses.replace(front, label=module_name, place=lambda cands: [c for c in cands if c.tensor in placement],
                                source=_source(module_name, kind))
    return TorchFrontEnd(front, placement, len(candidates) - len(placement))


def compile(module: torch.nn.Module, example_inputs=None, calib=None, target_acc: float = 0.99,
            confidence: float = 0.95, batch_size: int = 32, certify_fraction: float = CompileOptions.certify_fraction,
            max_fit_rows: int = CompileOptions.max_fit_rows,
            head_kinds: tuple[str, ...] = CompileOptions.head_kinds, max_candidates: int = CompileOptions.max_candidates,
            seed: int = 0, output_name: str = "logits", exporter: str = "auto", progress: bool = False, log=print,
            latency_weight: float = CompileOptions.latency_weight, cost_profile=None, augment: bool = True,
            never_slower: bool = True, trim_padding: str = CompileOptions.trim_padding):
    """Compile a PyTorch classifier into an early-exit model.

    module: an ``nn.Module`` whose forward returns one tensor [batch, classes] (logits or
    probabilities). example_inputs: a tensor, a tuple of tensors or a dict by argument name (only
    names, dtypes and non-batch shapes are used; default: the first calibration rows). calib: see
    :func:`to_dataset`. output_name: the prediction output's name in the artifact. cost_profile:
    optional ``f(candidates, batch_size) -> exitc.profile.Profile`` giving the costs instead of
    timing them here (reproducible compiles, costs from the target machine). augment,
    never_slower, trim_padding and the other options as :class:`exitc.options.CompileOptions` (the same pipeline
    runs them). exporter: for the ONNX fallback of an untraceable module.

    Returns :class:`TorchCompiled`, or :class:`OnnxCompiled` when torch.fx cannot trace the module
    (the reason, naming the submodule, is logged and kept in ``compiled.fallback_reason``).
    """
    opts = CompileOptions(target_acc=target_acc, confidence=confidence, batch_size=batch_size, output=output_name,
                          certify_fraction=certify_fraction, max_fit_rows=max_fit_rows, max_candidates=max_candidates,
                          head_kinds=tuple(head_kinds), seed=seed, progress=progress,
                          latency_weight=latency_weight, cost_profile=cost_profile, augment=augment,
                          never_slower=never_slower, trim_padding=trim_padding)
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
    if not (out.is_tensor and out.batch_major and is_classification_shape(out.shape[1:])
            and out.dtype.is_floating_point):
        raise ExitcError(f"{module_name}: the output has shape {out.shape}; exitc needs a batch-major "
                         "classification output [batch, classes] (or [batch, 1] scores)")
    # how the exits answer: one score per row, or in the output's shape (as emit.ArtifactSpec)
    answer_form = dict(binary=tuple(out.shape[1:]) == (1,), class_dims=tuple(out.shape[1:]) if len(out.shape) > 2 else None)
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
        heads = plan_exit_heads(plan, result.heads, {}, result.mask_input, result.prediction_kind, **answer_form)
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
    heads = plan_exit_heads(plan, found.heads, {}, mask_input, found.prediction_kind, **answer_form)
    return TorchCompiled(cuts=[found.heads[c].candidate for c in plan.exits], heads=heads, mask_input=mask_input,
                         plan=plan, profile=found.profile, candidates=candidates, fitted=found.heads,
                         measured_in="given" if opts.cost_profile is not None else "torch", **common)
