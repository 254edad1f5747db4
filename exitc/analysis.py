"""The analysis stages: features -> augment -> distill -> profile -> policy, over pluggable
measurements, on calibration rows split into a fit split and a disjoint certification split.

:func:`check_rows` and :func:`split_rows` say whether the rows suffice and how they split;
:func:`analyse` runs the stages, one call each, on a :class:`Measurements` object
(:class:`OnnxMeasurements` for every front end with an ONNX graph, the torch front end's own for a
traced module without one) and returns the :class:`Analysis` the pipeline emits. Heads only ever
see fit rows; certification only ever reads certification rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import onnx

from .augment import augment_stage
from .data import Dataset
from .distill import FittedHead, NeighbourRows, distill_heads
from .errors import ExitcError, stage
from .features import FeatureCache, FeatureProbe
from .options import CompileOptions
from .passes.candidates import Candidate
from .passes.normalize import Signature
from .passes.sequence import SequenceAxis, length_factors, row_lengths
from .policy import Plan, certification_rows, policy_stage
from .profile import Profile, TrimTiming, given_profile, profile_costs
from .stats import max_target_for, min_rows_for


def split_rows(n: int, certify_fraction: float, seed: int, max_fit_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, certification rows), disjoint, sorted: `certify_fraction` of the rows certify,
    or more where the fit split would exceed `max_fit_rows`."""
    perm = np.random.default_rng(seed).permutation(n)
    n_cert = certification_rows(n, certify_fraction, max_fit_rows)
    return np.sort(perm[n_cert:]), np.sort(perm[:n_cert])


# Rows rows_needed asks for beyond the certification minimum at the least (some rows to fit on).
MIN_FIT_ROWS = 100


def rows_needed(opts: CompileOptions) -> int:
    """Calibration rows --target-acc at --confidence needs: enough that --certify-fraction of them
    can certify it (stats.min_rows_for), and at least MIN_FIT_ROWS more than that minimum; 0 at
    --target-acc 1.0 (no exit is certified)."""
    if opts.target_acc >= 1.0:
        return 0
    need_cert = min_rows_for(opts.target_acc, opts.confidence)
    return max(int(np.ceil(need_cert / opts.certify_fraction)), need_cert + MIN_FIT_ROWS)


def reachable_target(rows: int, opts: CompileOptions) -> float | None:
    """The highest --target-acc (rounded down to 0.001) that `rows` calibration rows can be
    asked for at opts.confidence and opts.certify_fraction (the inverse of rows_needed), or None
    where they suffice for no target above 0.5."""
    m = min(int(rows * opts.certify_fraction), rows - MIN_FIT_ROWS)  # certification rows rows_needed asks for
    if m < 1:
        return None
    t = math.floor(max_target_for(m, opts.confidence) * 1000) / 1000
    while t > 0.5 and rows_needed(replace(opts, target_acc=t)) > rows:  # float rounding at the edge
        t = round(t - 0.001, 3)
    return t if t > 0.5 else None


def check_rows(data: Dataset, opts: CompileOptions) -> None:
    """Raise a one-line ExitcError unless `data` has rows_needed(opts) rows, and as many distinct
    ones: a row repeated is not new evidence (a set tiled up to the minimum, or one row copied
    600 times, certified every exit on the copies: 29x on all-zero images). The message says
    which target the rows could be asked for instead (reachable_target)."""
    need = rows_needed(opts)
    need_cert = min_rows_for(opts.target_acc, opts.confidence)

    def instead(rows: int) -> str:
        t = reachable_target(rows, opts)
        return f"; these rows allow --target-acc {t} at most" if t is not None else ""

    if data.rows < need:
        raise ExitcError(f"{data.path}: {data.rows} calibration rows; --target-acc {opts.target_acc} at --confidence "
                         f"{opts.confidence} needs at least {need} ({need_cert} for certification)"
                         f"{instead(data.rows)}")
    distinct = data.distinct_rows
    if distinct < need:
        raise ExitcError(f"{data.path}: {data.rows} calibration rows but only {distinct} distinct (repeated rows are "
                         f"not new evidence); --target-acc {opts.target_acc} at --confidence {opts.confidence} needs "
                         f"at least {need} distinct rows{instead(distinct)}")


# Where the original predicts one class on at least this share of the calibration rows, the
# compile says so: exits certified on such rows learn to answer that class.
ONE_CLASS_SHARE = 0.99


def one_class_note(predictions: np.ndarray, path: str) -> str | None:
    """A warning where the original predicts one class on ONE_CLASS_SHARE of the calibration rows
    (rows unlike the model's real inputs: blank images, padding only, one class's examples), else
    None. The bound still holds for inputs like these rows; it says nothing about other traffic."""
    pred = np.asarray(predictions)
    if len(pred) == 0:
        return None
    values, counts = np.unique(pred, return_counts=True)
    top = int(np.argmax(counts))
    if counts[top] < ONE_CLASS_SHARE * len(pred):
        return None
    return (f"warning: the original predicts class {values[top]} on {counts[top]} of the {len(pred)} calibration "
            f"rows in {path}; exits certified on them learn to answer that class, and the bound holds only for "
            f"inputs like these rows: calibrate on rows like the model's real traffic")


# Rows the original runs on to tell what its prediction output holds where nothing else runs it.
KIND_ROWS = 64


@dataclass
class Analysis:
    """What the analysis stages (features -> augment -> distill -> profile -> policy) decide."""

    plan: Plan
    heads: list[FittedHead]
    profile: Profile | None
    prediction_kind: str               # what the original's prediction output holds: the exits answer in it
    notes: list[str] = field(default_factory=list)  # warnings on the calibration rows (one_class_note)


class Measurements(Protocol):
    """What :func:`analyse` measures with: the candidates' features and the original's outputs on
    rows, synthetic neighbours of the fit rows (or None), and the cost of every slice and head."""

    measured_in: str                   # where the costs are measured ("onnxruntime", "torch")

    def features(self, candidates: list[Candidate], data: Dataset, opts: CompileOptions) -> FeatureCache: ...

    def neighbours(self, fit: Dataset, fit_pred: np.ndarray, kind: str, opts: CompileOptions,
                   log=print) -> NeighbourRows | None: ...

    def profile(self, heads: list[FittedHead], fit: Dataset, opts: CompileOptions) -> Profile: ...


class OnnxMeasurements:
    """The measuring stages on an ONNX model: features from the probe model (exitc.features),
    synthetic neighbours (exitc.augment), costs on ONNX Runtime (exitc.profile). The torch front
    end's no-mirror case plugs in its own :class:`Measurements` with the same three methods."""

    measured_in = "onnxruntime"

    def __init__(self, model: onnx.ModelProto, sig: Signature, mask_input: str | None, elem_types: dict[str, int]):
        self.model, self.sig, self.mask_input, self.elem_types = model, sig, mask_input, elem_types
        self.probe: FeatureProbe | None = None

    def features(self, candidates: list[Candidate], data: Dataset, opts: CompileOptions) -> FeatureCache:
        self.probe = FeatureProbe(self.model, candidates, self.mask_input)
        return self.probe.collect(data, progress=opts.progress)

    def neighbours(self, fit: Dataset, fit_pred: np.ndarray, kind: str, opts: CompileOptions,
                   log=print) -> NeighbourRows | None:
        return augment_stage(self.sig, fit, fit_pred, self.mask_input, self.probe, kind, opts, log)

    def profile(self, heads: list[FittedHead], fit: Dataset, opts: CompileOptions) -> Profile:
        return profile_costs(self.model, heads, self.mask_input, fit, opts.batch_size, self.elem_types,
                             progress=opts.progress)


def analyse(measure: Measurements, candidates: list[Candidate], data: Dataset, fit_idx: np.ndarray, cert_idx: np.ndarray,
            opts: CompileOptions, log=print, mark=lambda name: None, sequence: SequenceAxis | None = None,
            trim: TrimTiming | None = None) -> Analysis:
    """features -> augment -> distill -> profile -> policy, one call per stage, on `measure`'s
    measurements (:class:`OnnxMeasurements` or the torch front end's). Guarantees: the heads are fitted
    on the fit rows only, the plan certified on the certification rows only; no exit where there is no
    candidate or --target-acc is 1.0. `sequence`: a token model that runtimes cut to row lengths;
    measured costs are priced for that (profile.Profile.cut_to_lengths), by what cutting measured
    on calibration rows (`trim`, profile.measure_trimming) or, not measured, by the rows'
    lengths (passes.sequence.length_factors)."""
    if not candidates or opts.target_acc >= 1.0:
        reason = "no candidate exit points found" if not candidates else "--target-acc 1.0 admits no early exit"
        with stage("features"):  # what the prediction output holds, for the manifest: from a few rows
            kind = measure.features([], data.take(np.arange(min(data.rows, KIND_ROWS))), opts).kind
        return Analysis(Plan.without_exits(opts.target_acc, opts.confidence, reason), [], None, kind)
    with stage("features"):
        cache = measure.features(candidates, data, opts)
    notes = [n for n in [one_class_note(cache.predictions, data.path)] if n]
    for n in notes:
        log(f"exitc: {n}")
    mark("features")
    neighbours = None
    if opts.augment:
        with stage("augment"):
            neighbours = measure.neighbours(data.take(fit_idx), cache.predictions[fit_idx],
                                            cache.kind, opts, log)
        mark("augment")
    with stage("distill"):
        heads = distill_heads(candidates, [f[fit_idx] for f in cache.features], cache.probs[fit_idx],
                              kinds=opts.head_kinds, seed=opts.seed, progress=opts.progress, neighbours=neighbours)
    if neighbours is not None:
        taken = ", ".join(f"exit candidate {k}: {h.augmented}" for k, h in enumerate(heads) if h.augmented)
        log(f"exitc: heads fitted with neighbours too: {taken or 'none (no head gained from them)'}")
    mark("distill")
    with stage("profile"):
        if opts.cost_profile is not None:  # given costs (e.g. measured on the target machine): no timing here
            profile = given_profile(opts.cost_profile, candidates, min(opts.batch_size, len(fit_idx)))
        else:
            profile = measure.profile(heads, data.take(fit_idx), opts)
            if sequence is not None and trim is not None:
                profile = profile.cut_to_lengths(*trim.factors(), padded=trim.padded_factors())
                profile.timings["trimming"] = trim.to_json()
            elif sequence is not None:
                profile = profile.cut_to_lengths(*length_factors(
                    row_lengths(data.feeds[sequence.mask][fit_idx]), profile.call_rows(), sequence.length,
                    profile.batch_size))
    mark("profile")
    with stage("policy"):
        plan = policy_stage(heads, [f[cert_idx] for f in cache.features], cache.predictions[cert_idx], profile, opts)
    mark("policy")
    return Analysis(plan, heads, profile, cache.kind, notes)
