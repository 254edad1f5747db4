"""Measurements in torch, for a traced module without an ONNX mirror.

Holds: :class:`TorchMeasurements` (the :class:`exitc.analysis.Measurements` that
:func:`exitc.analysis.analyse` runs on), its features (:func:`collect_features_torch`) and costs
(:func:`profile_torch`), and :func:`find_mask_input` (the attention-mask input of a token model).

Guarantees: features are pooled as the exit heads pool them (:func:`exitc.passes.fx.pool_features`);
every cost is the line through median timings, taken round-robin, at batch 1 and at the
profiling batch (:class:`exitc.profile.Cost`), slices calibrated to the original as on the ONNX
path; no synthetic neighbours (their features would need the ONNX probe).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from ..data import Dataset, batches
from ..distill import FittedHead
from ..features import FeatureCache
from ..options import CompileOptions
from ..passes.candidates import Candidate
from ..passes.fx import Observed, build_fx_segments, extract_segment, input_names, output_node, pool_features
from ..predictions import LOGITS
from ..profile import Cost, Profile, calibrate_slices, cut_cost_per_row, measure_interleaved, without_call
from .inputs import _torch_feeds
from .runtime import TorchExitHead, torch_exit_head


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


class _Call:
    """A torch call in the shape exitc.profile.measure_interleaved times: run(feeds) -> outputs."""

    def __init__(self, fn):
        self.fn = fn

    def run(self, _feeds):
        return self.fn()


def profile_torch(gm, candidates, heads: list[TorchExitHead], mask_input: str | None,
                  feeds: dict[str, torch.Tensor], reps_b1: int = 20, reps_bn: int = 5) -> Profile:
    """Measured torch costs, as :class:`exitc.profile.Profile`, the way the ONNX path measures
    (exitc.profile.profile_costs): the original, every backbone slice between consecutive
    candidates and every head, timed round-robin (measure_interleaved) at batch 1 and at the
    profiling batch, each modelled as fixed + per_row; the slices scaled to add up to the
    original (calibrate_slices), the heads less one call's overhead (a trivial fx call).

    Why interleaved and calibrated: timed one after another, a load spike during the original's
    few batch-N repetitions priced it 6x and 60x its slices on a busy 2-core VM (a batch_first
    LSTM stack compiled beside a test run predicted 6.3x and 425x where it ran at 0.6-0.75x)."""
    b = len(next(iter(feeds.values())))
    one = {k: v[:1] for k, v in feeds.items()}
    names = input_names(gm)
    ident = torch.fx.symbolic_trace(torch.nn.Identity())
    z = torch.zeros(1)
    with torch.no_grad():
        overhead = measure_interleaved([("call", _Call(lambda: ident(z)), None)], 200)["call"]
        jobs: dict[int, list] = {1: [], b: []}
        for rows, f in ((1, one), (b, feeds)):
            jobs[rows].append(("original", _Call(lambda f=f: gm(*[f[n] for n in names])), None))
        state = {1: dict(one), b: dict(feeds)}
        segments = build_fx_segments(gm, candidates)
        for seg in segments:
            for rows in (1, b):
                args = [state[rows][n] for n in seg.inputs]
                jobs[rows].append((f"slice{seg.index}", _Call(lambda seg=seg, args=args: seg.module(*args)), None))
                state[rows].update(zip(seg.outputs, seg.module(*args)))
        for k, (c, h) in enumerate(zip(candidates, heads)):
            for rows in (1, b):
                mask = state[rows].get(mask_input) if c.layout == "btc" and mask_input else None
                x = state[rows][c.tensor]
                jobs[rows].append((f"head{k}", _Call(lambda h=h, x=x, mask=mask: h(x, mask)), None))
        t1 = measure_interleaved(jobs[1], reps_b1)
        tb = measure_interleaved(jobs[b], reps_bn)
    timings = {name: {"batch1": t1[name], f"batch{b}": tb[name]} for name in t1}
    cost = {name: Cost.from_two(t1[name], tb[name], b) for name in t1}
    original = cost["original"]
    measured = [cost[f"slice{seg.index}"] for seg in segments]
    slices = calibrate_slices(measured, original, overhead, b)
    head_costs = [without_call(cost[f"head{k}"], overhead, b) for k in range(len(heads))]
    return Profile(b, original, slices, head_costs, overhead, timings,
                   cut_per_row=cut_cost_per_row(measured, original, b))


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
        return FeatureCache.from_outputs(outputs, features)

    def neighbours(self, fit, fit_pred, kind, opts, log=print):
        return None

    def profile(self, heads: list[FittedHead], fit: Dataset, opts: CompileOptions) -> Profile:
        b = min(opts.batch_size, fit.rows)
        torch_heads = [torch_exit_head(h.exit_head(k, onnx.TensorProto.FLOAT, self.mask_input, LOGITS))
                       for k, h in enumerate(heads)]
        return profile_torch(self.gm, [h.candidate for h in heads], torch_heads, self.mask_input,
                             _torch_feeds(fit.feeds, slice(0, b)))
