"""The compiler driver: the pipeline, one call per stage.

    front end (load) -> candidates -> features -> augment -> distill -> profile -> policy
      -> emit -> verify -> report

A front end produces a :class:`FrontEnd` (a normalised ONNX model with observed shapes, its
signature, the calibration data, and for PyTorch the candidates its runtime can place):
:func:`load_stage` for an ONNX file, :mod:`exitc.pytorch.frontend` for an nn.Module. Everything after
it is :func:`run_pipeline`, the same for both. Each stage lives in its own module and only exchanges
plain values with the others: candidates in exitc.passes.candidates; features, augment, distill,
profile and policy in :func:`exitc.analysis.analyse`; emit in exitc.emit; verify in
:func:`exitc.verify.verify_stage`; report in exitc.report.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import onnx

from . import emit, report
from .analysis import OnnxMeasurements, analyse, check_rows, split_rows
from .data import Dataset, load_dataset
from .distill import FittedHead
from .errors import stage
from .options import CompileOptions
from .passes import find_candidates, load_model
from .passes.candidates import Candidate
from .passes.graph import GraphIndex
from .passes.normalize import Signature, check_rows_independent, observe_shapes, prepare
from .passes.sequence import SequenceAxis, open_sequence, sequence_open_view
from .passes.shape_reads import resolve_shape_reads
from .passes.split import find_mask_input
from .policy import Plan
from .profile import MIN_TRIM_SAVING, Profile, TrimTiming, measure_trimming
from .verify import Verification, verify_stage

@dataclass
class CompileResult:
    out_dir: str
    plan: Plan
    candidates: list[Candidate]
    heads: list[FittedHead]
    profile: Profile | None
    seconds: float
    stage_seconds: dict = field(default_factory=dict)
    verification: Verification | None = None
    manifest: dict | None = None       # the artifact's manifest as written
    prediction_kind: str = "logits"    # what the original's prediction output holds; the exits answer in it
    mask_input: str | None = None      # the attention-mask input the btc heads read


OBSERVE_ROWS = 8


@dataclass
class FrontEnd:
    """What a front end hands the pipeline: a normalised ONNX model with every intermediate shape
    observed on calibration rows, and everything the stages after it need. The ONNX front end is
    :func:`load_stage`; the PyTorch one (exitc.pytorch.frontend) exports the traced module and also
    says which candidates its runtime can place (`place`)."""

    model: onnx.ModelProto             # normalised, shapes observed
    sig: Signature
    data: Dataset                      # calibration rows, keyed by the model's input names
    reference: onnx.ModelProto         # prepared, nothing observed: what the artifact is checked against
    path: str                          # the ONNX file (the manifest's source section hashes it)
    label: str                         # the model as log lines name it
    # Candidates the front end's own runtime can place (in graph order, a subset); None: all.
    place: Callable[[list[Candidate]], list[Candidate]] | None = None
    source: dict | None = None         # entries that replace the manifest's "source" section
    # Token models: the padded inputs whose sequence axis the model now leaves open, and the
    # opened graph before observation (the batch-1 form "original"); None / `reference` otherwise.
    sequence: SequenceAxis | None = None
    runnable: onnx.ModelProto | None = None
    # What cutting the rows to their length measured on calibration rows (profile.measure_trimming);
    # None: not measured (costs given, --trim-padding always): the profile estimates it.
    trim: TrimTiming | None = None


def normalise_stage(raw: onnx.ModelProto, read_data: Callable[[Signature], Dataset], opts: CompileOptions,
                    path: str, label: str, log=print) -> FrontEnd:
    """The model prepared (passes.normalize.prepare), the data read against its inputs by
    `read_data`, and every intermediate shape observed on real calibration rows."""
    reference, sig = prepare(raw, output=opts.output, label=label)
    data = read_data(sig)
    check_rows_independent(reference, sig, data.feeds, label)
    if data.casts:
        log(f"exitc: {data.path}: cast to the model's input dtypes: "
            + ", ".join(f"{k} {v}" for k, v in data.casts.items()))
    # Runtimes cut padding along axis 1 of rows-first token inputs; inputs the artifact takes
    # time-major (sig.batch_axes) run at their padded length.
    runnable, sequence, why = (open_sequence(reference, sig.inputs, sig.output.name, data.feeds)
                               if opts.trim_padding != "never" and not sig.batch_axes else (reference, None, None))
    trim = None
    # Costs given for another machine (opts.cost_profile) outrank timings taken here.
    if sequence is not None and opts.trim_padding == "auto" and opts.cost_profile is None:
        trim = measure_trimming(reference, runnable, sequence, data.feeds, opts.batch_size, opts.seed)
        if not trim.pays(opts.latency_weight):
            r1, rb = trim.cut_vs_padded()
            log(f"exitc: rows run at the padded length: cut to their length, calibration rows measured "
                f"{rb:.2f}x the padded model's time at batch {trim.batch_size} and "
                f"{r1:.2f}x at batch 1 (kept where it saves at least "
                f"{MIN_TRIM_SAVING:.0%}; --trim-padding always keeps it)")
            runnable, sequence, trim = reference, None, None
    if sequence is not None:
        log(f"exitc: token inputs {', '.join(sequence.inputs)} padded to {sequence.length}: a batch runs at the "
            f"length of its longest row ({sequence.mask!r} says which tokens are padding)")
    elif why is not None:
        log(f"exitc: rows run at the padded length: {why}")
    view = sequence_open_view(sig, sequence)
    feeds = {k: v[:OBSERVE_ROWS] for k, v in data.feeds.items()}
    model = observe_shapes(runnable, view, feeds, label=label)
    model, _ = resolve_shape_reads(model, feeds, view.resized)
    if sig.dropped_outputs:
        log(f"exitc: the compiled model produces only the prediction output {sig.output.name!r}; the original's "
            f"other outputs ({', '.join(sig.dropped_outputs)}) are not produced (use --output to choose another)")
    if sig.fixed_axes:
        shapes = ", ".join(f"{i.name}{i.shape}" for i in sig.inputs)
        log(f"exitc: {label} runs only at the size of the calibration rows; compiled for {shapes}")
    return FrontEnd(model, sig, data, reference, path, label, sequence=sequence, runnable=runnable, trim=trim)


def load_stage(model_path: str, calib_path: str, opts: CompileOptions, log=print) -> FrontEnd:
    """The ONNX front end: the file read and normalised (:func:`normalise_stage`), the .npz
    calibration data read against its inputs."""
    return normalise_stage(load_model(model_path),
                           lambda sig: load_dataset(calib_path, sig.inputs, batch_axes=sig.batch_axes), opts,
                           model_path, model_path, log)


def compile_model(model_path: str, calib_path: str, out_dir: str, opts: CompileOptions | None = None,
                  log=print) -> CompileResult:
    """`exitc compile model.onnx`: the ONNX front end (:func:`load_stage`), then :func:`run_pipeline`."""
    opts = opts or CompileOptions()
    opts.validate()
    emit.check_destination(out_dir, opts.force)
    t0 = time.perf_counter()
    with stage("load"):
        front = load_stage(model_path, calib_path, opts, log)
    return run_pipeline(front, out_dir, opts, log, started=t0)


def run_pipeline(front: FrontEnd, out_dir: str, opts: CompileOptions, log=print,
                 started: float | None = None) -> CompileResult:
    """The pipeline after a front end: candidates -> features -> augment -> distill -> profile ->
    policy -> emit -> verify -> report, one call per stage; each stage names itself for error
    messages (exitc.errors.stage). Every front end's model goes through exactly this."""
    opts.validate()
    emit.check_destination(out_dir, opts.force)
    t0 = time.perf_counter() if started is None else started
    stages: dict[str, float] = {"load": time.perf_counter() - t0}
    t = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        stages[name] = now - t
        t = now

    model, sig, data, reference = front.model, front.sig, front.data, front.reference
    with stage("load"):
        check_rows(data, opts)
        mask_input = find_mask_input(model)
        elem_types = {name: info.elem_type for name, info in GraphIndex.build(model).infos.items()}

    with stage("candidates"):
        candidates = find_candidates(model, max_candidates=opts.max_candidates)
        if front.place is not None:
            candidates = front.place(candidates)
    log(f"exitc: {len(candidates)} candidate exits in {os.path.basename(front.label)}")
    mark("candidates")

    fit_idx, cert_idx = split_rows(data.rows, opts.certify_fraction, opts.seed, opts.max_fit_rows)
    holdout = data.take(cert_idx) if len(cert_idx) else data
    found = analyse(OnnxMeasurements(model, sig, mask_input, elem_types), candidates, data, fit_idx, cert_idx, opts,
                    log, mark, front.sequence, front.trim)
    plan, heads, profile = found.plan, found.heads, found.profile

    staging = None
    try:
        while True:
            with stage("emit"):
                staging, manifest = emit.stage(out_dir, emit.ArtifactSpec(
                    model, sig, front.path, heads, plan, profile, mask_input, elem_types, found.prediction_kind,
                    original=front.runnable or reference, source=front.source, sequence=front.sequence))
            with stage("verify"):
                check = verify_stage(staging, manifest, reference, sig, holdout, plan, opts, log)
            # Costs given by the user (measured on the target machine) outrank timings taken here.
            if not (plan.exits and opts.never_slower and opts.cost_profile is None and check.slower_batch()):
                break
            # Measured, not predicted: the policy expected this plan to be no slower. The
            # original is the one plan that needs no new certification.
            reason = (f"measured slower than the original on held-out rows (throughput at batch {check.batch_size} "
                      f"{check.throughput_ratio:.2f}x)")
            log(f"exitc: {reason}; falling back to the original model")
            emit.discard(staging)
            staging = None
            plan = Plan.without_exits(plan.target, plan.confidence, reason, plan.n_fit, plan.n_certify,
                                      plan.original_cost_batch, plan.original_cost_b1, plan.curve,
                                      cost_batch=profile.original.at(profile.batch_size) if profile else None,
                                      cost_b1=profile.original.at(1) if profile else None)
        mark("emit+verify")
        with stage("report"):
            report.write_reports(staging, manifest, plan, candidates, heads, profile, check, opts, found.notes)
            emit.commit(staging, out_dir, opts.force)
            staging = None
    finally:
        emit.discard(staging)
    mark("report")
    result = CompileResult(out_dir, plan, candidates, heads, profile, time.perf_counter() - t0, stages, check,
                           manifest, found.prediction_kind, mask_input)
    report.print_summary(result, log)
    return result
