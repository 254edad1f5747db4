"""Measure costs on the target backend: every backbone slice between consecutive candidates,
every head, the per-call overhead and the original model, at batch 1 and the deployment batch.

Each cost is modelled as ``fixed + per_row * rows`` from the two batch sizes, which is what the
policy needs to price ragged batches after compaction. Measured times, not FLOPs, drive the choice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto
from tqdm import tqdm

from .backends import make_session
from .backends.ort import OrtSession
from .errors import ExitcError
from .data import Dataset
from .distill import FittedHead
from .passes.candidates import Candidate
from .passes.graph import GraphIndex
from .passes.sequence import DEFAULT_CALL_ROWS
from .passes.split import build_segments, head_model
from .predictions import LOGITS


@dataclass
class Cost:
    """Seconds of one call with `rows` rows: ``fixed + per_row * rows``, the line through the two
    measured batch sizes (1 and the deployment batch), so both are priced as measured.

    `fixed` may be negative. On CPUs a row can cost more inside a large batch than alone (its
    activations no longer fit in cache): the cv_native sample's MobileNetV2 at 160 px measured
    6.3 ms at batch 1 and 16.2 ms a row at batch 32. Clipping the intercept at 0, as exitc did
    before, priced a batch-1 row at the batch-32 row cost, 2.6x too high, so the extra cost of a
    full-depth row at batch 1 was predicted +4.4% and measured +25%. For a call of at least one
    row the line stays positive (it runs through two positive points with a slope >= 0), and the
    policy's expected cost (exitc.policy.CostModel.expected) prices calls of >= 1 row only."""

    fixed: float     # seconds per call (the line's intercept; may be negative, see above)
    per_row: float   # seconds per row

    def at(self, rows: float) -> float:
        return max(0.0, self.fixed + self.per_row * rows)

    @classmethod
    def from_two(cls, t1: float, tb: float, b: int) -> "Cost":
        """The line through (1, t1) and (b, tb); a slope below 0 (measurement noise) becomes 0."""
        return cls.through(t1, max(tb, t1), b)

    @classmethod
    def through(cls, t1: float, tb: float, b: int) -> "Cost":
        """The line through (1, t1) and (b, tb) as it is (for calibrated costs, which must add up
        exactly at both sizes; a falling line stays >= 0 between them, where it is used)."""
        per_row = (tb - t1) / (b - 1) if b > 1 else t1
        return cls(t1 - per_row, per_row)


NO_COST = Cost(0.0, 0.0)  # an empty slice (before an input exit at cut 0)


@dataclass
class Profile:
    batch_size: int
    original: Cost
    slices: list[Cost]          # work of the backbone between candidates k-1 and k (len = candidates + 1)
    heads: list[Cost]           # work of head k (len = candidates)
    call_overhead: float        # seconds per runtime call (the smallest measured fixed cost)
    timings: dict = field(default_factory=dict)
    # Token models: the user's original as measured at the padded length, where `original` and
    # the slices are priced for rows cut to their length (cut_to_lengths); None: `original` is it.
    padded_original: Cost | None = None
    # Seconds per row that each cut between segments adds beyond the per-call cost (see
    # cut_cost_per_row); charged to every segment after the first (policy.CostModel).
    cut_per_row: float = 0.0

    @property
    def user_original(self) -> Cost:
        """The model the user gave, as measured: what speedups are relative to."""
        return self.padded_original or self.original

    def call_rows(self) -> float:
        """The fixed cost of one call through the user's model, in full-length rows: the measured
        line's intercept over its slope, at least MIN_CALL_ROWS (a CPU line can have an intercept
        <= 0, see Cost, and yet each call has a cost of its own)."""
        line = self.user_original
        if line.per_row <= 0:
            return DEFAULT_CALL_ROWS
        return round(max(MIN_CALL_ROWS, line.fixed / line.per_row), 3)

    def cut_to_lengths(self, factor_b1: float, factor_batch: float) -> "Profile":
        """This profile for a token model whose runtime cuts rows to their length: the original and
        every slice cost `factor_b1` of their full-length cost at batch 1 and `factor_batch` at the
        deployment batch (exitc.passes.sequence.length_factors), a cut's per-row cost
        `factor_batch` (its carried tensors are cut too); heads (pooled features, a few layers)
        and the per-call cost stay. The policy then compares plans with the model that the
        artifact runs without exits (the original, cut), and speedups stay relative to the user's
        model (`padded_original`)."""
        b = self.batch_size

        def cut(c: Cost) -> Cost:
            return NO_COST if c is NO_COST else Cost.through(c.at(1) * factor_b1, c.at(b) * factor_batch, b)

        return replace(self, original=cut(self.original), slices=[cut(c) for c in self.slices],
                       padded_original=self.user_original, cut_per_row=self.cut_per_row * factor_batch,
                       timings={**self.timings, "length_factors": {"batch1": factor_b1, f"batch{b}": factor_batch}})

    def to_json(self) -> dict:
        return {"batch_size": self.batch_size, "original": asdict(self.original),
                "slices": [asdict(c) for c in self.slices], "heads": [asdict(c) for c in self.heads],
                "call_overhead": self.call_overhead, "cut_per_row": self.cut_per_row, "timings": self.timings,
                "padded_original": asdict(self.padded_original) if self.padded_original else None}


MIN_CALL_ROWS = 0.5


def _rows(feeds: dict, n: int, batch_axes: dict[str, int] | None = None) -> dict:
    """The first `n` rows of every tensor, along its batch axis (1 for a time-major carried
    tensor, else 0)."""
    axes = batch_axes or {}
    return {k: v[(slice(None),) * axes.get(k, 0) + (slice(0, n),)] for k, v in feeds.items()}


def _batch_axes(model: onnx.ModelProto) -> dict[str, int]:
    return {name: info.batch_axis for name, info in GraphIndex.build(model).infos.items() if info.batch_axis}


def measure_interleaved(jobs: list[tuple[str, OrtSession, dict]], reps: int, bar=None) -> dict[str, float]:
    """Median time of each (name, session, feeds) job, measured round-robin: every round runs every
    job once, so drift of a noisy machine (another process taking a core) hits all jobs alike
    instead of biasing whichever was measured during the disturbance."""
    for _, sess, feeds in jobs:
        sess.run(feeds)
    times: dict[str, list[float]] = {name: [] for name, _, _ in jobs}
    for _ in range(reps):
        for name, sess, feeds in jobs:
            t0 = time.perf_counter()
            sess.run(feeds)
            times[name].append(time.perf_counter() - t0)
        if bar:
            bar.update(1)
    return {name: float(np.median(v)) for name, v in times.items()}


def _backbone_jobs(model: onnx.ModelProto, cands: list[Candidate], mask_input: str | None, feeds: dict):
    """(name, session, feeds) for the original model and every slice, plus the carried state."""
    jobs = [("original", make_session(model, "original model"), feeds)]
    state = dict(feeds)
    for seg in build_segments(model, cands, [None] * len(cands), mask_input):
        if not seg.model.graph.node:  # nothing before an input exit at cut 0: costs nothing
            continue
        sess = make_session(seg.model, f"segment {seg.index}")
        seg_feeds = {k: state[k] for k in seg.inputs}
        jobs.append((f"slice{seg.index}", sess, seg_feeds))
        state.update(zip(sess.output_names, sess.run(seg_feeds, sess.output_names)))
    return jobs, state


def _measure(jobs, b: int, reps_b1: int, reps_bn: int, bar=None, batch_axes: dict[str, int] | None = None):
    t1 = measure_interleaved([(n, s, _rows(f, 1, batch_axes)) for n, s, f in jobs], reps_b1, bar)
    tb = measure_interleaved(jobs, reps_bn, bar)
    return {n: Cost.from_two(t1[n], tb[n], b) for n, _, _ in jobs}, {n: {"batch1": t1[n], f"batch{b}": tb[n]} for n, _, _ in jobs}


def profile_backbone(model: onnx.ModelProto, cands: list[Candidate], mask_input: str | None, feeds: dict,
                     reps_b1: int = 30, reps_bn: int = 8):
    """Original model and every slice between consecutive candidates: (original, slices, timings)."""
    b = len(next(iter(feeds.values())))
    jobs, _ = _backbone_jobs(model, cands, mask_input, feeds)
    costs, timings = _measure(jobs, b, reps_b1, reps_bn, batch_axes=_batch_axes(model))
    return costs["original"], [costs.get(f"slice{k}", NO_COST) for k in range(len(cands) + 1)], timings


def profile_costs(model: onnx.ModelProto, heads: list[FittedHead], mask_input: str | None, data: Dataset,
                  batch_size: int, elem_types: dict[str, int], reps_b1: int = 30, reps_bn: int = 8,
                  progress: bool = True) -> Profile:
    """Costs of the original, every slice and every head at batch 1 and the deployment batch."""
    cands = [h.candidate for h in heads]
    b = min(batch_size, data.rows)
    feeds = _rows(data.feeds, b)
    jobs, state = _backbone_jobs(model, cands, mask_input, feeds)
    for k, fitted in enumerate(heads):
        c = fitted.candidate
        head = fitted.exit_head(k, elem_types.get(c.tensor, TensorProto.FLOAT), mask_input, LOGITS)
        # A head on a recomputed tensor pays for recomputing it (its segment does): the head with
        # that light cone, from the graph inputs.
        hm = build_segments(model, [c], [head], mask_input)[0].model if c.recomputed else head_model(model, head, mask_input)
        sess = make_session(hm, f"head {k}")
        jobs.append((f"head{k}", sess, {name: state[name] for name in sess.input_names}))
    with tqdm(total=2 * (reps_b1 + reps_bn), desc="profile", unit="round", disable=not progress, leave=False) as bar:
        costs, timings = _measure(jobs, b, reps_b1, reps_bn, bar, _batch_axes(model))
    original = costs["original"]
    slices = [costs.get(f"slice{k}", NO_COST) for k in range(len(cands) + 1)]
    head_costs = [costs[f"head{k}"] for k in range(len(heads))]
    # Per-call cost of a segment: at least the smallest fixed cost measured, and at least what the
    # slices, called one by one at batch 1, cost beyond the monolithic model per extra call (on
    # the NLP sample 0.35 ms per call, 40x a trivial graph's; ignoring it predicted a batch-1
    # speedup where there was a slowdown).
    timed = [c for c in slices if c is not NO_COST]
    smallest_call = min((min(max(c.fixed, 0.0), c.at(1)) for c in head_costs + timed), default=0.0)
    overhead = max(smallest_call, split_cost(slices, original, 1), 0.0)
    return Profile(b, original, calibrate_slices(slices, original, overhead, b),
                   [without_call(h, overhead, b) for h in head_costs], overhead, timings,
                   cut_per_row=cut_cost_per_row(slices, original, b))


def split_cost(slices: list[Cost], original: Cost, rows: int) -> float:
    """What the slices (empty ones aside), each called on its own with `rows` rows, cost in sum
    beyond the monolithic model, per extra call."""
    timed = [c for c in slices if c is not NO_COST]
    return (sum(c.at(rows) for c in timed) - original.at(rows)) / max(len(timed) - 1, 1)


def cut_cost_per_row(slices: list[Cost], original: Cost, batch: int) -> float:
    """Seconds per row that a cut between two segments costs beyond the per-call cost: split_cost
    grows with the rows (the carried tensors written out and read back, fusions and cache reuse
    lost across the cut); its slope between batch 1 and `batch`, 0 where it falls (noise).
    Measured: on the CV and NLP samples 0.2-1.0% of the original's cost a row; on small models of
    a few ms a batch 3-9% (a channel-shuffle net with SE blocks at 32 px: predicted 1.98x at
    batch 32 without it, measured 1.38x), where every extra exit's cut decides whether it pays."""
    if sum(c is not NO_COST for c in slices) < 2 or batch <= 1:
        return 0.0
    return max(0.0, (split_cost(slices, original, batch) - split_cost(slices, original, 1)) / (batch - 1))


def without_call(cost: Cost, overhead: float, batch: int) -> Cost:
    """`cost` less one call's overhead at both measured batch sizes (a head fused into a segment
    makes no call of its own)."""
    return Cost.from_two(max(cost.at(1) - overhead, 0.0), max(cost.at(batch) - overhead, 0.0), batch)


def given_profile(cost_profile, candidates: list[Candidate], batch_size: int) -> Profile:
    """Costs from a user's ``cost_profile(candidates, batch_size) -> Profile`` (costs measured
    elsewhere, e.g. on the target machine, or fixed for reproducible tests), checked to price
    every candidate's head and every slice."""
    profile = cost_profile(candidates, batch_size)
    k = len(candidates)
    if len(profile.heads) != k or len(profile.slices) != k + 1:
        raise ExitcError(f"cost_profile returned costs for {len(profile.heads)} heads and {len(profile.slices)} "
                         f"slices; {k} candidates need {k} and {k + 1}")
    return profile


def calibrate_slices(slices: list[Cost], original: Cost, overhead: float, batch: int) -> list[Cost]:
    """Work cost of each slice (without the per-call overhead), scaled so that the slices add up to
    the monolithic model at batch 1 and at `batch`, each scaled on its own. Timed one by one, thin
    slices cost more in total than the whole model (each call wakes the thread pool, loses fusions
    and cache reuse), which would make every exit look unprofitable; their *relative* costs are
    what locates an exit along the model. Scaling the two measured points, not the line's
    intercept and slope, keeps a negative intercept (see Cost) from zeroing the batch-1 cost."""
    points = []
    for rows in (1, batch):
        work = [max(s.at(rows) - overhead, 0.0) for s in slices]  # an empty slice (NO_COST) does none
        total = sum(work)
        scale = max(original.at(rows) - overhead, 0.0) / total if total > 0 else 0.0
        points.append([w * scale for w in work])
    return [NO_COST if s is NO_COST else Cost.through(w1, wb, batch)
            for s, w1, wb in zip(slices, *points)]
