"""The compiler's own check of the artifact it staged, before it is put in place.

1. **Exact at full depth**: on held-out calibration rows, at the deployment batch size, at a ragged
   batch size and at batch 1 (and, where an input's size is open, at a second size), every row that
   ran the whole compiled model equals the original's output (max abs diff <= FULL_DEPTH_ATOL +
   FULL_DEPTH_RTOL * |original|). A deviation is a bug in exitc, raised as an internal error.
   Models that compute in float16 or bfloat16 are held to that type's rounding instead (see
   REDUCED_ULPS), with the same top-1 class.
2. **Batch-1 form**: the conditional single-graph form is kept only if its mean batch-1 latency
   beats the segments' (measured, not assumed: ONNX Runtime optimises `If` branches less).
3. **Never slower**: throughput at the deployment batch and the median (p50) and mean latency at
   batch 1, compiled against the original, measured interleaved on held-out rows, and the cost of
   a row that runs to the end (heads and per-call costs) against the original's. Batch-1
   latencies of the forms with exits are weighted to the exit shares of all held-out rows
   (stratum_weights): the timed rows say what each path costs, the held-out rows how many take
   it; throughput is timed on rows drawn with those shares (throughput_rows). Where the median
   batch-1 request measures slower (by more than policy.MEDIAN_TOLERANCE), batch-1 requests run
   the original; where they run the original, the
   first-exit form (exit 0, then the original) is measured beside it and kept where it wins
   (:func:`try_first_exit`); where batches measure slower, the driver falls back to the original
   model.

Measured with the runtime `exitc.load` gives users (the C++ one when built), the full-depth
overhead too (libexitc's `full_depth` option; before it existed, the reference runtime's Python
per-call costs reported cv_native's full-depth batch-1 row at +16.8%). :func:`verify_stage` is
the pipeline's verify stage: all three on the staged artifact, the decisions written into its
manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from . import emit
from .backends import make_session
from .data import Dataset, batches, file_layout
from .manifest import input_batch_axes
from .measure import batch1_latencies, run_all, run_interleaved
from .passes.normalize import Signature, resize_feeds
from .policy import MEDIAN_TOLERANCE
from .predictions import predicted_classes

if TYPE_CHECKING:
    from .options import CompileOptions
    from .policy import Plan

FULL_DEPTH_ATOL = 1e-4
FULL_DEPTH_RTOL = 1e-5
# Models that compute in float16 / bfloat16: ONNX Runtime's CPU kernels run most of their ops in
# float32 (it inserts casts, then drops the cast pairs between consecutive ops), so a tensor the
# whole model keeps in float32 is rounded to the reduced type where a segment ends and carries it.
# Full-depth rows then match to that type's rounding, not bit for bit: within REDUCED_ULPS of its
# epsilon times the row's largest magnitude, and with the same top-1 class. (The CV sample
# converted to float16 by onnxruntime.transformers: max abs diff 0.028 on logits of magnitude ~10.)
REDUCED_EPS = {onnx.TensorProto.FLOAT16: 2.0 ** -10, onnx.TensorProto.BFLOAT16: 2.0 ** -7}
REDUCED_ULPS = 16
EXACT_ROWS = 128
RAGGED_BATCH = 7
# Held-out rows timed at batch 1 per form. The median batch-1 request exits early only where more
# than half of these rows do, so their count sets how often sampling alone flips the check: on
# cv_native (seed 1) 55% of the certification rows left at the input exit, the first 100 held-out
# rows measured the median request with exits at 0.88x, and batch-1 requests were sent to the
# original (binomial sd of an exit fraction: 5% on 100 rows, 2.9% on 300).
LATENCY_ROWS = 300
THROUGHPUT_SECONDS = 2.0  # rows measured at batch N: about this long for the original, per round
# Throughput rows are drawn from this many times as many held-out rows, per exit group in the
# held-out rows' shares (stratified_rows).
THROUGHPUT_POOL = 4


@dataclass
class Verification:
    rows: int = 0                          # held-out rows compared
    agreement: float = 1.0                 # top-1 agreement with the original on them
    max_abs_diff_full_depth: float = 0.0
    full_depth_tolerance: str = "exact"    # or "<n> ulps of float16/bfloat16" (REDUCED_ULPS)
    checked: list[str] = field(default_factory=list)   # what the exactness check ran ("batch 32", ...)
    batch_size: int = 32
    throughput_ratio: float | None = None  # original seconds / compiled seconds at batch_size
    full_depth_overhead_batch: float | None = None  # full-depth path / original - 1 at batch_size
    p50_ratio_b1: float | None = None      # original p50 / compiled p50 at batch 1
    mean_ratio_b1: float | None = None
    full_depth_overhead_b1: float | None = None
    latency_ms_b1: dict = field(default_factory=dict)  # mean and p50 per form
    # what the artifact runs at batch 1: segmented | conditional (the If-graph) | first_exit | original
    batch1_form: str = "segmented"
    measurements: int = 0
    # The plan's exit fractions on all held-out rows (exits..., end): batch-1 latencies of the
    # forms with exits are weighted to them (stratified_summary); None: unweighted.
    exit_shares: list[float] | None = None

    notes: list[str] = field(default_factory=list)     # decisions taken on these measurements

    def slower_batch(self) -> bool:
        return self.throughput_ratio is not None and self.throughput_ratio < 1.0

    def slower_batch1(self) -> bool:
        """The median batch-1 request measured slower than the original's by more than the
        policy's MEDIAN_TOLERANCE (what it predicted it may pay)."""
        return self.p50_ratio_b1 is not None and self.p50_ratio_b1 < 1.0 / (1.0 + MEDIAN_TOLERANCE)

    def to_json(self) -> dict:
        return asdict(self)


class _RowsFirst:
    """An artifact's runtime fed the compiler's rows-first arrays: inputs the artifact takes with
    their rows on another axis (the manifest's batch_axis, e.g. [time, batch]) are moved there
    before each run, as users hold them."""

    def __init__(self, model, batch_axes: dict[str, int]):
        self._model, self._axes = model, batch_axes

    def run(self, feeds):
        return self._model.run(file_layout(feeds, self._axes))

    def __getattr__(self, name):
        return getattr(self._model, name)


def _load(path: str, use_conditional: bool = True, full_depth: bool = False):
    """The artifact as users load it: the C++ runtime when built, else the reference, taking
    rows-first feeds (_RowsFirst). full_depth: no row exits (what a row that runs to the end
    pays, in the runtime users run)."""
    try:
        from .cpp_runtime import CppExitModel

        model = CppExitModel(path, use_conditional=use_conditional, full_depth=full_depth)
    except ImportError:
        from .runtime import ExitModel

        model = ExitModel(path, use_conditional=use_conditional, full_depth=full_depth)
    return _rows_first(model)


def _rows_first(model):
    """`model` (a runtime of an artifact) taking rows-first feeds (_RowsFirst) where it needs to."""
    axes = input_batch_axes(model.manifest)
    return _RowsFirst(model, axes) if axes else model


def reduced_precision_eps(model: onnx.ModelProto) -> float:
    """The epsilon of the coarsest reduced float type (float16, bfloat16) among the model's
    weights, inputs, outputs and inferred tensors; 0.0 where it computes in float32 or wider."""
    g = model.graph
    types = {t.data_type for t in g.initializer}
    types |= {v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    return max((REDUCED_EPS[t] for t in types if t in REDUCED_EPS), default=0.0)


def _within(got: np.ndarray, ref: np.ndarray, reduced_eps: float = 0.0, probabilities: bool = False) -> float:
    """Max abs difference, or +inf where it exceeds the tolerance (see REDUCED_ULPS for
    `reduced_eps` > 0, which also requires the same top-1 class per row)."""
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(got64 - ref64)
    tol = FULL_DEPTH_ATOL + FULL_DEPTH_RTOL * np.abs(ref64)
    if reduced_eps > 0:
        scale = np.abs(ref64).reshape(len(ref64), -1).max(axis=1).reshape((-1,) + (1,) * (ref64.ndim - 1))
        tol = tol + REDUCED_ULPS * reduced_eps * scale
        if ref64.ndim >= 2 and (predicted_classes(got64, probabilities) != predicted_classes(ref64, probabilities)).any():
            return float("inf")
    return float(diff.max()) if (diff <= tol).all() else float("inf")


class ConditionalDeviates(Exception):
    """The conditional form's full-depth rows deviate where the segments' do not: ONNX Runtime
    runs some ops differently inside `If` branches (the QDQ -> integer-kernel fusions of a
    quantized transformer do not reach into them). Its max abs diff is args[0]."""


def check_exact(path: str, model: onnx.ModelProto, sig: Signature, data: Dataset, batch_size: int,
                result: Verification) -> None:
    """Part 1 of the module doc; fills `result` and raises RuntimeError on a deviation."""
    from .runtime import ExitModel

    compiled = _rows_first(ExitModel(path))
    probabilities = compiled.manifest.get("prediction_kind") == "probabilities"
    original = make_session(model, "original model")
    n = min(EXACT_ROWS, data.rows)
    feeds = {k: v[:n] for k, v in data.feeds.items()}
    runs = [(f"batch {batch_size}", feeds, n, batch_size), (f"batch {RAGGED_BATCH}", feeds, min(n, 3 * RAGGED_BATCH),
                                                            RAGGED_BATCH),
            ("batch 1", feeds, min(n, 8), 1)]
    if sig.resized:
        small = {k: v[:16] for k, v in feeds.items()}
        sizes = ", ".join(f"{name} axis {a} = {s}" for name, axes in sig.resized.items() for a, s in axes.items())
        runs.append((f"resized input ({sizes})", resize_feeds(small, sig.resized), len(small[next(iter(small))]), 8))
    agree = total = 0
    max_diff = 0.0
    eps = reduced_precision_eps(model)
    result.full_depth_tolerance = "exact" if eps == 0 else f"{REDUCED_ULPS} ulps of {'float16' if eps < 2 ** -8 else 'bfloat16'}"
    for what, f, rows, b in runs:
        for sl in batches(rows, b):
            part = {k: v[sl] for k, v in f.items()}
            ref = original.run(part)[0]
            outs, exit_index = compiled.run(part)
            got = outs[0]
            end = exit_index == compiled.num_exits
            if end.any():
                d = _within(got[end], ref[end], eps, probabilities)
                if not np.isfinite(d) and b == 1 and compiled.manifest.get("conditional"):
                    # the same rows through the segments (loaded only here: most compiles never get here)
                    seg_outs, seg_idx = _rows_first(ExitModel(path, use_conditional=False)).run(part)
                    seg_end = seg_idx == compiled.num_exits
                    if not seg_end.any() or np.isfinite(_within(seg_outs[0][seg_end], ref[seg_end], eps, probabilities)):
                        raise ConditionalDeviates(float(np.abs(got[end] - ref[end]).max()))
                if not np.isfinite(d):
                    raise RuntimeError(f"compiled model deviates from the original on full-depth rows at {what} "
                                       f"(max abs diff {float(np.abs(got[end] - ref[end]).max()):.3g})")
                max_diff = max(max_diff, d)
            if what == f"batch {batch_size}":
                agree += int((predicted_classes(got, probabilities) == predicted_classes(ref, probabilities)).sum())
                total += len(ref)
        result.checked.append(what)
    result.rows = total
    result.agreement = agree / max(total, 1)
    result.max_abs_diff_full_depth = max_diff


def measure(path: str, model: onnx.ModelProto, data: Dataset, batch_size: int, conditional: dict | None,
            result: Verification) -> None:
    """Part 3 of the module doc (one more measurement each call; ratios are averaged over the
    calls, so a second call firms up a borderline first one). Batch-1 latencies are measured for
    the original, the segments, the full-depth path and the artifact's batch-1 form if it has one
    ("conditional": the manifest's `conditional` section, None without one); :func:`choose_batch1`
    decides between them. Forms with exits have their latencies weighted to the held-out rows'
    exit shares (`result.exit_shares`, stratum_weights)."""
    original = make_session(model, "original model")
    compiled = _load(path, use_conditional=False)
    full = _load(path, use_conditional=False, full_depth=True)
    feeds = data.feeds

    def run_orig(f):
        return original.run(f)

    # Rows at batch N: about THROUGHPUT_SECONDS of the original per round, 4 to 16 batches.
    b = min(batch_size, data.rows)
    run_all(run_orig, feeds, b, b)
    t_batch, _ = run_all(run_orig, feeds, b, b)
    n = int(np.clip(round(THROUGHPUT_SECONDS / max(t_batch, 1e-6)), 4, 16)) * b
    n = min(n, data.rows)
    # Exit indices once, for the throughput pool and the batch-1 rows (both prefixes of `data`).
    idx = exit_indices(compiled, data, min(data.rows, max(THROUGHPUT_POOL * n, LATENCY_ROWS)),
                       result.exit_shares, b)
    timed = throughput_rows(data, n, idx, result.exit_shares).feeds
    # Warm-up over the rows measured (was one batch): compaction makes ragged batches, and each
    # new size pays a first run. Paired on cv_native (4 x 2 rounds of 512 rows, fresh sessions):
    # 1.79x with one batch, 1.84x with the rows; exitc bench measured 1.87x on the test split.
    for fn in (compiled.run, full.run):
        run_all(fn, timed, n, b)
    ratios, full_ratios = [], []
    for _ in range(2):
        (t_o, t_c, t_f), _ = run_interleaved([run_orig, compiled.run, full.run], timed, n, b)
        ratios.append(t_o / t_c)
        full_ratios.append(t_f / t_o - 1.0)

    forms = {"original": run_orig, "segmented": compiled.run, "full_depth": full.run}
    if idx is not None:
        idx = idx[:min(LATENCY_ROWS, data.rows)]
    weights = {"segmented": exit_weights(idx, result.exit_shares)}
    if conditional is not None:
        forms["conditional"] = _load(path, use_conditional=True).run
        # the If-graph takes the rows the segments take; the original form none; the first-exit
        # form those exit 0 takes
        if conditional.get("form") == "if":
            weights["conditional"] = weights["segmented"]
        elif conditional.get("after_first_exit"):
            weights["conditional"] = exit_weights(idx, result.exit_shares, first_exit_only=True)
    lat = measure_batch1(forms, data, result, weights=weights)

    k = result.measurements
    avg = (lambda old, new: running_mean(old, new, k))
    result.batch_size = b
    result.throughput_ratio = avg(result.throughput_ratio, float(np.mean(ratios)))
    result.full_depth_overhead_batch = avg(result.full_depth_overhead_batch, float(np.mean(full_ratios)))
    result.full_depth_overhead_b1 = avg(result.full_depth_overhead_b1,
                                        float(lat["full_depth"].mean() / lat["original"].mean() - 1.0))
    result.measurements = k + 1


def measure_batch1(forms: dict, data: Dataset, result: Verification, average: bool = True,
                   weights: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Batch-1 latencies of `forms` (name -> run function), interleaved row by row on
    LATENCY_ROWS held-out rows; mean and p50 recorded in `result.latency_ms_b1` (with `average`,
    averaged with an earlier measurement of the same name: result.measurements of them so far),
    weighted per row where `weights` names the form (stratified_summary). Returns the seconds
    per row by name."""
    rows = min(LATENCY_ROWS, data.rows)
    lat = dict(zip(forms, batch1_latencies(list(forms.values()), data.feeds, rows)))
    k = result.measurements if average else 0
    for name, v in lat.items():
        mean, p50 = stratified_summary(v, (weights or {}).get(name))
        old = result.latency_ms_b1.get(name) or {}
        result.latency_ms_b1[name] = {"mean_ms": running_mean(old.get("mean_ms"), mean * 1e3, k),
                                      "p50_ms": running_mean(old.get("p50_ms"), p50 * 1e3, k)}
    return lat


def exit_indices(model, data: Dataset, rows: int, shares, batch: int | None = None) -> np.ndarray | None:
    """The exit index `model` (the artifact with exits) gives each of the first `rows` held-out
    rows, run `batch` rows at a time (all at once by default; a row's exit does not depend on the
    rows beside it); None without shares to weight to."""
    if not shares:
        return None
    out = [model.run({k: v[sl] for k, v in data.feeds.items()})[1] for sl in batches(rows, batch or rows)]
    return np.concatenate([np.asarray(i, np.int64) for i in out])


def stratified_rows(idx: np.ndarray, shares, n: int) -> np.ndarray:
    """Sorted indices of `n` of the rows with exit indices `idx` whose exit groups have the
    held-out `shares` (largest-remainder rounding; each group's rows spread over its members; a
    group short of rows is topped up with other rows); all rows where `n` covers them.

    Why: throughput at batch N is a sum over rows of their paths' costs, so it moves with the
    timed rows' exit mix, which a sample of a few hundred rows misses by a few points: the first
    512 held-out rows of CV from 3000 rows (seed 0, certify fraction 0.4) had 39.5% run to the
    end against 37.8% of all 1200. Measured in fresh processes on that artifact (two rounds
    each): first rows 2.01x / 1.99x, stratified 2.04x / 1.98x; on test rows 2.14x / 2.13x and
    2.08x / 2.08x (exitc bench: 2.18x): within this VM's noise there, and not the cause of
    compile-time figures reading below exitc bench's."""
    if n >= len(idx):
        return np.arange(len(idx))
    shares = np.asarray(shares, float)
    shares = shares / shares.sum()
    want = np.floor(n * shares).astype(np.int64)
    rest = n - int(want.sum())
    want[np.argsort(-(n * shares - want), kind="stable")[:rest]] += 1
    take = []
    for g, w in enumerate(want):
        members = np.flatnonzero(idx == g)
        if w and len(members):
            take.append(members[np.unique(np.linspace(0, len(members) - 1, min(w, len(members))).round().astype(np.int64))])
    sel = np.concatenate(take) if take else np.zeros(0, np.int64)
    if len(sel) < n:
        others = np.setdiff1d(np.arange(len(idx)), sel)
        sel = np.concatenate([sel, others[:n - len(sel)]])
    return np.sort(sel)


def throughput_rows(data: Dataset, n: int, idx: np.ndarray | None, shares) -> Dataset:
    """The `n` held-out rows to time at batch N: of the first THROUGHPUT_POOL * n held-out rows
    (in random order: verify_stage shuffles them), those with the held-out exit mix
    (stratified_rows; `idx`: exit_indices of a prefix of `data` at least that long); the first
    `n` rows without indices."""
    if idx is None or n >= data.rows:
        return data.take(np.arange(min(n, data.rows)))
    return data.take(stratified_rows(idx[:THROUGHPUT_POOL * n], shares, n))


def exit_weights(idx: np.ndarray | None, shares, first_exit_only: bool = False) -> np.ndarray | None:
    """stratum_weights for rows with exit indices `idx` (exit_indices): grouped by exit index,
    or by "taken at exit 0" with `first_exit_only`; None without indices."""
    if idx is None:
        return None
    if first_exit_only:
        return stratum_weights((idx != 0).astype(np.int64), [shares[0], 1.0 - shares[0]])
    return stratum_weights(idx, shares)


def stratum_weights(groups: np.ndarray, shares) -> np.ndarray:
    """Per-row weights that give each group of a latency sample (rows grouped by exit index) the
    share it has on all held-out rows (post-stratification; groups the sample lacks are dropped
    and the rest renormalised).

    Why: a batch-1 median sits on a cliff where about half the rows leave early, and on a few
    hundred timed rows the share that leaves moves by +-3 points from sample to sample. CV from
    3000 rows (54% of the held-out rows left by exit 1, whose path costs half a request) measured
    its median request at 0.94x in one compile and sent batch-1 requests to the original, where
    the test split then showed 1.96x-2.09x. Weighted, the timing sample answers what each path
    costs, and the held-out rows say how many take it."""
    shares = np.asarray(shares, float)
    counts = np.bincount(groups, minlength=len(shares))[:len(shares)]
    w = np.where(counts[groups] > 0, shares[groups] / np.maximum(counts[groups], 1), 0.0)
    return w / w.sum() if w.sum() > 0 else np.full(len(groups), 1.0 / len(groups))


def stratified_summary(seconds: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """(mean, median) of per-row latencies, weighted (stratum_weights) or not."""
    if weights is None:
        return float(seconds.mean()), float(np.median(seconds))
    order = np.argsort(seconds, kind="stable")
    cum = np.cumsum(weights[order])
    return float(np.dot(weights, seconds)), float(seconds[order][np.searchsorted(cum, 0.5 * cum[-1])])


def running_mean(old: float | None, new: float, k: int) -> float:
    """The mean of `k` earlier measurements (`old`) and `new`; `new` alone where there is none."""
    return new if old is None or k == 0 else (old * k + new) / (k + 1)


def first_exit_wins(lat: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None) -> bool:
    """On batch-1 latencies measured side by side (seconds per row of "original", the original
    model; "conditional", the artifact's original form; "first_exit"; per-row `weights` by name
    where given, see stratified_summary): the first-exit form keeps the median request within the
    policy's MEDIAN_TOLERANCE of the original's and lowers the mean below the artifact's original
    form."""
    mean_first, p50_first = stratified_summary(lat["first_exit"], (weights or {}).get("first_exit"))
    return bool(np.median(lat["original"]) / p50_first >= 1.0 / (1.0 + MEDIAN_TOLERANCE)
                and mean_first < lat["conditional"].mean())


def try_first_exit(staging: str, manifest: dict, model: onnx.ModelProto, holdout: Dataset,
                   result: Verification, log=print) -> bool:
    """Where batch-1 requests run the original: measure the first-exit form (exit 0, then the
    original for the rows it does not take) beside it, and keep it where :func:`first_exit_wins`.
    The policy's prices are least certain for small graphs (cv_native's input head: 5.6% of a
    batch-1 request predicted, 7-10% measured through libexitc on 2026-12-06; an earlier note
    here said 2%, read off a p50 at the exit-fraction cliff), so here the measurement decides. With
    fewer than half the rows leaving at exit 0, the p50 is the fastest of the full-depth requests,
    which is why the form can pass within MEDIAN_TOLERANCE while a full-depth request pays more
    on average. The first-exit form's latencies are weighted to the held-out share exit 0 takes
    (stratum_weights). The result is the plan's at exit 0 and the original's elsewhere: the
    certified bound holds (policy.batch1_forms)."""
    cond = manifest["conditional"]
    cond["after_first_exit"] = True
    emit.update_manifest(staging, manifest)
    try:
        variant = _load(staging, use_conditional=True)
    finally:
        del cond["after_first_exit"]
        emit.update_manifest(staging, manifest)
    original = make_session(model, "original model")
    plain = _load(staging, use_conditional=True)
    segmented = _load(staging, use_conditional=False)  # which rows exit 0 takes (the weights)
    forms = {"original": original.run, "conditional": plain.run, "first_exit": variant.run}
    # Twice the usual rows: at 47% leaving at exit 0 the p50 of 100 rows moved by +-4% between rounds.
    rows = min(2 * LATENCY_ROWS, holdout.rows)
    idx = exit_indices(segmented, holdout, rows, result.exit_shares)
    weights = {"first_exit": exit_weights(idx, result.exit_shares, first_exit_only=True)}
    if not first_exit_wins(dict(zip(forms, batch1_latencies(list(forms.values()), holdout.feeds, rows))), weights):
        return False
    # Measured again for the record (the decision's own round is not reused: a winner's round
    # is biased towards it); the three side by side, replacing the earlier batch-1 figures. Its
    # rows are the first LATENCY_ROWS of the decision's: their exit indices are a prefix.
    head = None if idx is None else idx[:min(LATENCY_ROWS, holdout.rows)]
    measure_batch1(forms, holdout, result, average=False,
                   weights={"first_exit": exit_weights(head, result.exit_shares, first_exit_only=True)})
    cond["after_first_exit"] = True
    emit.update_manifest(staging, manifest)
    lat = result.latency_ms_b1
    note = (f"exit 0, then the original, measured p50 {lat['original']['p50_ms'] / lat['first_exit']['p50_ms']:.2f}x "
            f"and mean {lat['original']['mean_ms'] / lat['first_exit']['mean_ms']:.2f}x against the original at "
            "batch 1: batch-1 requests run it")
    log(f"exitc: {note}")
    result.notes.append(note)
    return True


def choose_batch1(result: Verification, conditional: dict | None) -> str:
    """The batch-1 form to keep, from the measured latencies. The manifest's `conditional` says
    what the policy chose (policy.batch1_forms): the original model (form "original"), the first
    exit then the original ("original" with `after_first_exit`), or exits at batch 1 (the
    If-graph, form "if", or no conditional file), where the faster of the segments and the
    If-graph by mean is kept. Sets the batch-1 ratios of `result` for that form."""
    lat = result.latency_ms_b1
    kind = (conditional or {}).get("form")
    if kind == "original":
        first = bool(conditional.get("after_first_exit"))
        measured = "first_exit" if first and "first_exit" in lat else "conditional"
        name = "first_exit" if first else "original"
    elif kind == "if" and lat["conditional"]["mean_ms"] < lat["segmented"]["mean_ms"]:
        measured = name = "conditional"
    else:
        measured = name = "segmented"
    result.p50_ratio_b1 = lat["original"]["p50_ms"] / lat[measured]["p50_ms"]
    result.mean_ratio_b1 = lat["original"]["mean_ms"] / lat[measured]["mean_ms"]
    result.batch1_form = name
    return name


def verify_stage(staging: str, manifest: dict, model: onnx.ModelProto, sig: Signature, holdout: Dataset, plan: Plan,
                 opts: CompileOptions, log=print) -> Verification:
    """Check the staged artifact (the module doc; `model` is the front end's reference, run as the
    original): exact at full depth; with exits, measured against the original (twice where the
    first measurement says slower), the batch-1 form chosen on the measurements (batch-1 requests
    run the original where the median one measures slower), and the figures recorded in the
    manifest."""
    check = Verification(batch_size=opts.batch_size, exit_shares=list(plan.exit_fractions) if plan.exits else None)
    # Every check below reads a prefix of the held-out rows (the first EXACT_ROWS, LATENCY_ROWS, ...);
    # in a random order each prefix is a simple random sample even where the calibration file is
    # sorted (by class, by length, by source), which file order does not give.
    holdout = holdout.take(np.random.default_rng(opts.seed).permutation(holdout.rows))
    try:
        check_exact(staging, model, sig, holdout, opts.batch_size, check)
    except ConditionalDeviates as dev:
        log(f"exitc: the single-graph batch-1 form deviates from the original at full depth (max abs diff "
            f"{dev.args[0]:.3g}; ONNX Runtime runs some of its ops differently inside If branches): batch-1 requests "
            "run the segments")
        emit.drop_conditional(staging, manifest)
        check = Verification(batch_size=opts.batch_size, exit_shares=check.exit_shares)
        check_exact(staging, model, sig, holdout, opts.batch_size, check)
    if check.full_depth_tolerance != "exact":
        log(f"exitc: reduced-precision model: full-depth rows match the original within {check.full_depth_tolerance} "
            f"(max abs diff {check.max_abs_diff_full_depth:.3g}), with the same top-1 class, not bit for bit: ONNX "
            "Runtime computes it in float32 between ops and a segment's end rounds what it carries")
    if not plan.exits:
        return check

    def measure_and_choose() -> str:
        cond = manifest.get("conditional")
        measure(staging, model, holdout, opts.batch_size, cond, check)
        return choose_batch1(check, cond)

    measure_and_choose()
    # Costs given for another machine (opts.cost_profile) outrank timings taken here: informational.
    act = opts.never_slower and opts.cost_profile is None
    if act and (check.slower_batch() or check.slower_batch1()):
        measure_and_choose()  # a borderline first measurement: measure again (ratios are averaged)
    policy_form = check.batch1_form
    if act and check.batch1_form != "original" and check.slower_batch1():
        note = (f"the median batch-1 request measured {check.p50_ratio_b1:.2f}x "
                f"{'with the first exit' if check.batch1_form == 'first_exit' else 'with exits'}; batch-1 requests "
                "run the original model")
        log(f"exitc: {note}")
        check.notes.append(note)
        plan.use_batch1_form("original")
        emit.write_batch1_form(staging, manifest, "original", model)
        check.latency_ms_b1.pop("conditional", None)  # that was the If-graph
        measure(staging, model, holdout, opts.batch_size, manifest["conditional"], check)
        choose_batch1(check, manifest["conditional"])
    elif check.batch1_form == "segmented" and manifest.get("conditional"):
        emit.drop_conditional(staging, manifest)
    # Where batch-1 requests run the original (the policy's choice, or after exits measured
    # slower), the first-exit form gets its measured chance; not again after it measured slower.
    if act and check.batch1_form == "original" and policy_form != "first_exit" \
            and try_first_exit(staging, manifest, model, holdout, check, log):
        plan.use_batch1_form("first_exit")
        choose_batch1(check, manifest["conditional"])
    manifest["profile"]["measured"] = {
        "throughput_ratio": check.throughput_ratio, "p50_ratio_b1": check.p50_ratio_b1,
        "mean_ratio_b1": check.mean_ratio_b1, "batch_size": check.batch_size,
        "full_depth_overhead_b1": check.full_depth_overhead_b1,
        "full_depth_overhead_batch": check.full_depth_overhead_batch,
        "batch1_latency_ms": check.latency_ms_b1, "batch1_form": check.batch1_form, "notes": check.notes}
    emit.update_manifest(staging, manifest)
    return check
