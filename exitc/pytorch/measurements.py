"""Measurements in torch, for a traced module without an ONNX mirror.

Holds: :class:`TorchMeasurements` (the :class:`exitc.analysis.Measurements` that
:func:`exitc.analysis.analyse` runs on), its features (:func:`collect_features_torch`) and costs
(:func:`profile_torch`), and :func:`find_mask_input` (the attention-mask input of a token model).

Guarantees: features are pooled as the exit heads pool them (:func:`exitc.passes.fx.pool_features`);
every cost is the line through median timings at batch 1 and at the profiling batch
(:class:`exitc.profile.Cost`); no synthetic neighbours (their features would need the ONNX probe).
"""

from __future__ import annotations

import time

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
from ..profile import Cost, Profile
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
        return FeatureCache.from_outputs(outputs, features)

    def neighbours(self, fit, fit_pred, kind, opts, log=print):
        return None

    def profile(self, heads: list[FittedHead], fit: Dataset, opts: CompileOptions) -> Profile:
        b = min(opts.batch_size, fit.rows)
        torch_heads = [torch_exit_head(h.exit_head(k, onnx.TensorProto.FLOAT, self.mask_input, LOGITS))
                       for k, h in enumerate(heads)]
        return profile_torch(self.gm, [h.candidate for h in heads], torch_heads, self.mask_input,
                             _torch_feeds(fit.feeds, slice(0, b)))
