"""Measure costs on the target backend: every backbone slice between consecutive candidates,
every head, the per-call overhead and the original model, at batch 1 and the deployment batch.

Each cost is modelled as ``fixed + per_row * rows`` from the two batch sizes, which is what the
policy needs to price ragged batches after compaction. Measured times, not FLOPs, drive the choice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper
from tqdm import tqdm

from .backends import make_session
from .backends.ort import OrtSession
from .data import Dataset
from .distill import FittedHead
from .passes.candidates import Candidate
from .passes.heads import ExitHead
from .passes.split import build_segments, head_model


@dataclass
class Cost:
    fixed: float     # seconds per call
    per_row: float   # seconds per row

    def at(self, rows: float) -> float:
        return self.fixed + self.per_row * rows

    @classmethod
    def from_two(cls, t1: float, tb: float, b: int) -> "Cost":
        per_row = max(0.0, (tb - t1) / (b - 1)) if b > 1 else t1
        return cls(max(0.0, t1 - per_row), per_row)


@dataclass
class Profile:
    batch_size: int
    original: Cost
    slices: list[Cost]          # backbone between candidate k-1 and k (len = candidates + 1)
    heads: list[Cost]           # head k alone (len = candidates)
    call_overhead: float        # seconds per runtime call of a trivial model
    timings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"batch_size": self.batch_size, "original": asdict(self.original),
                "slices": [asdict(c) for c in self.slices], "heads": [asdict(c) for c in self.heads],
                "call_overhead": self.call_overhead, "timings": self.timings}


def time_session(sess: OrtSession, feeds: dict, reps: int, warmup: int = 2) -> float:
    """Median wall time of `reps` runs (seconds)."""
    for _ in range(warmup):
        sess.run(feeds)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _rows(feeds: dict, n: int) -> dict:
    return {k: v[:n] for k, v in feeds.items()}


def _identity_model() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "overhead",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def exit_head(fitted: FittedHead, index: int, elem_type: int, mask_input: str | None,
              emit_probabilities: bool, threshold: float | None = None) -> ExitHead:
    c = fitted.candidate
    return ExitHead(index=index, tensor=c.tensor, layout=c.layout, elem_type=elem_type,
                    mask_input=mask_input if c.layout == "btc" else None, layers=fitted.layers,
                    gate_w=fitted.gate_w, gate_b=fitted.gate_b, emit_probabilities=emit_probabilities,
                    kind=fitted.kind, meta={} if threshold is None else {"threshold": threshold})


def profile_backbone(model: onnx.ModelProto, cands: list[Candidate], mask_input: str | None, feeds: dict,
                     reps_b1: int = 30, reps_bn: int = 8, bar=None):
    """Time the call overhead, the original model and every slice between consecutive candidates.
    Returns (overhead, original Cost, slice Costs, timings, state) where state holds every carried
    tensor at the profiling batch (inputs for head profiling)."""
    b = len(next(iter(feeds.values())))
    timings: dict[str, dict] = {}
    overhead = time_session(make_session(_identity_model(), "overhead probe"), {"x": np.zeros(1, np.float32)}, 200)
    orig = make_session(model, "original model")
    t1, tb = time_session(orig, _rows(feeds, 1), reps_b1), time_session(orig, feeds, reps_bn)
    timings["original"] = {"batch1": t1, f"batch{b}": tb}
    original = Cost.from_two(t1, tb, b)
    if bar:
        bar.update(1)
    slices = []
    state = dict(feeds)
    for seg in build_segments(model, cands, [None] * len(cands), mask_input):
        sess = make_session(seg.model, f"segment {seg.index}")
        seg_feeds = {k: state[k] for k in seg.inputs}
        t1, tb = time_session(sess, _rows(seg_feeds, 1), reps_b1), time_session(sess, seg_feeds, reps_bn)
        timings[f"slice{seg.index}"] = {"batch1": t1, f"batch{b}": tb}
        slices.append(Cost.from_two(t1, tb, b))
        names = sess.output_names
        state.update(zip(names, sess.run(seg_feeds, names)))
        if bar:
            bar.update(1)
    return overhead, original, slices, timings, state


def profile_costs(model: onnx.ModelProto, heads: list[FittedHead], mask_input: str | None, data: Dataset,
                  batch_size: int, elem_types: dict[str, int], reps_b1: int = 30, reps_bn: int = 8,
                  progress: bool = True) -> Profile:
    cands = [h.candidate for h in heads]
    b = min(batch_size, data.rows)
    feeds = _rows(data.feeds, b)
    bar = tqdm(total=1 + 2 * len(cands) + 1, desc="profile", unit="model", disable=not progress, leave=False)
    overhead, original, slices, timings, state = profile_backbone(model, cands, mask_input, feeds, reps_b1, reps_bn, bar)
    head_costs = []
    for k, fitted in enumerate(heads):
        c = fitted.candidate
        hm = head_model(model, exit_head(fitted, k, elem_types.get(c.tensor, TensorProto.FLOAT), mask_input, False),
                        mask_input)
        sess = make_session(hm, f"head {k}")
        hf = {name: state[name] for name in sess.input_names}
        t1, tb = time_session(sess, _rows(hf, 1), reps_b1), time_session(sess, hf, reps_bn)
        timings[f"head{k}"] = {"batch1": t1, f"batch{b}": tb}
        head_costs.append(Cost.from_two(t1, tb, b))
        bar.update(1)
    bar.close()
    return Profile(b, original, slices, head_costs, overhead, timings)
