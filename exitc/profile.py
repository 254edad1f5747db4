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
from .data import Dataset, take_rows
from .distill import FittedHead
from .passes.candidates import Candidate
from .passes.graph import GraphIndex
from .passes.sequence import (DEFAULT_CALL_ROWS, SequenceAxis, cut_feeds, length_chunks, longest, row_lengths,
                              trim_feeds)
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

    def cut_to_lengths(self, factor_b1: float, factor_batch: float,
                       padded: tuple[float, float] | None = None) -> "Profile":
        """This profile for a token model whose runtime cuts rows to their length: the original and
        every slice cost `factor_b1` of their full-length cost at batch 1 and `factor_batch` at the
        deployment batch (exitc.passes.sequence.length_factors), a cut's per-row cost
        `factor_batch` (its carried tensors are cut too); heads (pooled features, a few layers)
        and the per-call cost stay. The policy then compares plans with the model that the
        artifact runs without exits (the original, cut), and speedups stay relative to the user's
        model (`padded_original`). `padded`: the user's model's cost relative to the measured
        `original` at (batch 1, the deployment batch) where they differ (TrimTiming.padded_factors:
        the opened graph measured at the padded length is not the user's file); None: the same."""
        b = self.batch_size

        def cut(c: Cost) -> Cost:
            return NO_COST if c is NO_COST else Cost.through(c.at(1) * factor_b1, c.at(b) * factor_batch, b)

        user = self.user_original
        if padded is not None:
            user = Cost.through(user.at(1) * padded[0], user.at(b) * padded[1], b)
        return replace(self, original=cut(self.original), slices=[cut(c) for c in self.slices],
                       padded_original=user, cut_per_row=self.cut_per_row * factor_batch,
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


class _Calls:
    """Several calls of one session timed as one job (measure_interleaved): a batch split by
    length, each part cut to its longest row, as runtimes run it."""

    def __init__(self, sess: OrtSession):
        self.sess = sess

    def run(self, parts: list[dict]):
        for part in parts:
            self.sess.run(part)


@dataclass(frozen=True)
class TrimTiming:
    """A token model's sequence trimming as measured on calibration rows: seconds at batch 1 (a
    row) and at the deployment batch of the model as the user gave it at the padded length
    (`padded`), the opened graph at the padded length (`opened`, what the profile measures slices
    on) and the opened graph on the same rows as runtimes run them (`cut`: a batch split by
    length, each part cut to its longest row; see measure_trimming)."""

    batch_size: int
    padded: tuple[float, float]
    opened: tuple[float, float]
    cut: tuple[float, float]

    def factors(self) -> tuple[float, float]:
        """What cutting rows to their length does to a cost measured on the opened graph at the
        padded length, at (batch 1, the deployment batch): Profile.cut_to_lengths' factors."""
        return tuple(c / o if o > 0 else 1.0 for c, o in zip(self.cut, self.opened))

    def padded_factors(self) -> tuple[float, float]:
        """The user's model relative to the opened graph, both at the padded length."""
        return tuple(p / o if o > 0 else 1.0 for p, o in zip(self.padded, self.opened))

    def cut_vs_padded(self) -> tuple[float, float]:
        """The cut graph's time relative to the user's model at (batch 1, the deployment batch)."""
        return tuple(c / p if p > 0 else 1.0 for c, p in zip(self.cut, self.padded))

    def relative(self, latency_weight: float) -> float:
        """cut_vs_padded weighted as the policy weighs its objective (batch 1: `latency_weight`,
        the deployment batch: the rest)."""
        r1, rb = self.cut_vs_padded()
        return (1.0 - latency_weight) * rb + latency_weight * r1

    def pays(self, latency_weight: float) -> bool:
        return self.relative(latency_weight) <= 1.0 - MIN_TRIM_SAVING

    def to_json(self) -> dict:
        b = self.batch_size
        return {name: {"batch1": v[0], f"batch{b}": v[1]}
                for name, v in (("padded", self.padded), ("opened", self.opened), ("cut", self.cut))}


# Sequence trimming is kept only where it measures at least this much faster than the padded
# model (TrimTiming.pays): about the run-to-run spread of such a measurement here, and a smaller
# gain does not pay for a graph whose shapes ONNX Runtime no longer knows. Why measure at all: on
# tiny text classifiers (bench/text_families.py: transformers' BERT, ALBERT, ELECTRA, ... with 32
# hidden units at 32 tokens) the opened graph cut to its rows measured 1.01-1.13x the padded
# model's time at batch 32 on 9 of 13 exports, where the estimate from the rows' lengths
# (length_factors) said 0.78-0.89x; 11 of the exports, compiled both ways, predicted a median
# 1.35x of their measured batch-32 speedup with the estimate and 1.10x with this (measured mean
# 2.18x and 2.27x). On the samples (MiniLM at 128 tokens) it measures 0.54-0.57x (nlp_austen) and
# 0.67x (NLP) at batch 32.
MIN_TRIM_SAVING = 0.05
# Rows and rounds of that measurement: on the nlp_austen sample (MiniLM at 128 tokens, a ~250-s
# compile) about 20 s. With 2 rounds one disturbed call moves a result (a median of 2 is a mean).
TRIM_BATCHES, TRIM_ROWS_B1, TRIM_ROUNDS_B1, TRIM_ROUNDS = 2, 8, 5, 3


def measure_trimming(padded: onnx.ModelProto, opened: onnx.ModelProto, axis: SequenceAxis, feeds: dict,
                     batch_size: int, seed: int = 0) -> TrimTiming:
    """Time the user's model (`padded`) and the opened graph at the padded length and cut to the
    rows' lengths, interleaved, on TRIM_ROWS_B1 single calibration rows (each cut to its length)
    and TRIM_BATCHES random batches of `batch_size` rows (split by length as runtimes split them,
    passes.sequence.length_chunks, each part cut to its longest row). Sums over the rows and over
    the batches.

    The split needs a call's cost in rows, read off the line through the padded model's batch-1
    and batch timings (Profile.call_rows does the same for the runtimes): here from the single
    rows and a first pass over the batches, TRIM_ROUNDS each. With one round for that pass the
    split moved between runs, and with it what the cut batches cost (nlp_austen: 0.82 s and 0.71 s
    for the same two batches). Cut in one call each, the same batches cost 0.86x the padded model
    against 0.54x split: the split is what runtimes pay, so it is what is timed."""
    n = len(feeds[axis.mask])
    b = max(1, min(batch_size, n))
    rng = np.random.default_rng(seed)
    s_pad, s_open = make_session(padded, "original model"), make_session(opened, "opened graph")
    cut_calls = _Calls(s_open)
    singles = [take_rows(feeds, rng.choice(n, 1)) for _ in range(TRIM_ROWS_B1)]
    batches = [take_rows(feeds, np.sort(rng.choice(n, b, replace=False))) for _ in range(TRIM_BATCHES)]

    def cut_parts(f: dict, call_rows: float) -> list[dict]:
        lengths = row_lengths(f[axis.mask])
        return [cut_feeds(take_rows(f, chunk), axis, longest(lengths[chunk]))
                for chunk in length_chunks(lengths, call_rows, axis.length) if len(chunk)]

    def total(t: dict, name: str) -> float:
        return sum(v for k, v in t.items() if k.rstrip("0123456789") == name)

    t1 = measure_interleaved([job for i, f in enumerate(singles) for job in (
        (f"padded{i}", s_pad, f), (f"opened{i}", s_open, f), (f"cut{i}", s_open, trim_feeds(f, axis)))],
        TRIM_ROUNDS_B1)
    tb = measure_interleaved([job for i, f in enumerate(batches) for job in (
        (f"padded{i}", s_pad, f), (f"opened{i}", s_open, f))], TRIM_ROUNDS)
    line = Cost.from_two(total(t1, "padded") / len(singles), total(tb, "padded") / len(batches), b)
    call_rows = max(MIN_CALL_ROWS, line.fixed / line.per_row) if line.per_row > 0 else DEFAULT_CALL_ROWS
    tc = measure_interleaved([job for i, f in enumerate(batches) for job in (
        (f"padded{i}", s_pad, f), (f"cut{i}", cut_calls, cut_parts(f, call_rows)))], TRIM_ROUNDS)
    # the batches' cut time relative to the padded model in its own rounds, on pass 1's scale
    cut_b = total(tc, "cut") / total(tc, "padded") * total(tb, "padded")
    return TrimTiming(b, (total(t1, "padded"), total(tb, "padded")), (total(t1, "opened"), total(tb, "opened")),
                      (total(t1, "cut"), cut_b))


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
