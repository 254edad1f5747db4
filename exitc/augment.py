"""Synthetic neighbours of the fit rows, labelled by the original model itself.

Labels are never needed: the heads learn the original's own soft outputs, so the original can
label as many perturbed copies of the fit rows as the heads need. That matters on small
calibration sets, where the heads are what limits the early exits (a head on 900 real rows sees
too few examples of what the original finds easy). Certification never sees these rows: it stays
on real, untouched calibration rows, so the guarantee is unchanged.

Perturbations are generic, chosen by the input's form, never by its meaning:

* image-like inputs (float or 8-bit, rank 4, at most 4 channels, NCHW or NHWC): small shifts with
  edge padding, horizontal flips, a little Gaussian noise (rounded and clipped for 8-bit images);
* token inputs (integer, rank 2, with an attention mask): a few tokens dropped (the rest moved up,
  the row re-padded) or replaced by tokens drawn from other rows; the first and last real token
  (e.g. [CLS]/[SEP]) always stay;
* 1-D signals (float, rank 3, at most 4 channels: [batch, channels, length]): small shifts in
  time with edge padding, a little Gaussian noise;
* other float inputs: a little Gaussian noise per feature.

A perturbation is used only if the original's prediction is mostly stable under it (STABLE of the
rows keep their prediction): one under which the original changes its mind would teach the heads
a different distribution from the one they serve. Whether the neighbours help a given head is then
decided by distillation on out-of-fold agreement with real rows (exitc.distill), head by head.

:func:`augment_stage` is the pipeline's augment stage: :func:`make_neighbours` on fit splits below
AUGMENT_MAX_FIT_ROWS, handed to distillation as :class:`exitc.distill.NeighbourRows`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from .data import Dataset, take_rows
from .distill import NeighbourRows
from .features import FeatureCache, FeatureProbe
from .passes.graph import TensorInfo

if TYPE_CHECKING:
    from .options import CompileOptions
    from .passes.normalize import Signature

STABLE = 0.9          # share of rows whose prediction a perturbation must keep
STABILITY_ROWS = 256  # fit rows each perturbation is tried on
# Twice as many neighbours (8 a row, at most 10000) did not pay: CV from 3000 rows, seeds 0-4,
# same cached features and costs, predicted speedup at batch 32 2.010/2.099/2.133/2.200/2.195x ->
# 2.112/2.066/2.135/1.956/2.205x (mean 2.127x -> 2.095x), with augmentation twice as long.
# Training each head on all perturbations' neighbours at once (beside each kind on its own) moved
# seed 0 from 2.010x to 2.009x. The spread between seeds is the certification split's: seed 0's input
# head was the best of the five out of fold (worth 0.561) and took the fewest certification rows (0.461).
MAX_COPIES = 4        # neighbours per fit row at most
MAX_ROWS = 5000       # neighbours at most
# Arithmetic the original may spend labelling neighbours, in estimated multiply-adds
# (passes.candidates.estimate_flops): about 45 s of ONNX Runtime on 2 idle cores of our VM (cv_native
# 0.16 G a row at ~530 rows/s, nlp_austen 1.45 G at ~74 rows/s). A count, not a time: the same
# calibration set gets the same neighbours, and so the same plan, on a busy machine or an idle one
# (a time budget gave cv_native 5000 neighbours idle and about 2700 at load 5).
NEIGHBOUR_MULTIPLY_ADDS = 4e12
# Small perturbations, one per neighbour, each kind a group of its own that distillation tries
# separately. Measured on the CV sample from 3000 calibration rows (input exit, MLP head,
# out-of-fold share of rows taken at 99% precision, real rows only: 0.49): shifts of up to 4% of
# the side 0.56; flips 0.43-0.47 (Fashion-MNIST items are not mirror-symmetric to the original);
# 8% shifts + flips + 3% noise composed 0.41-0.50. So: small, and never composed.
# Nor mixed pairs (lam * x + (1 - lam) * another fit row, lam in [0.6, 0.9], labelled by the
# original, used despite their stability of 0.73, a fourth kind beside these three): CV from 3000
# rows, seeds 0/1/2, certified predicted speedup at batch 32 1.81/1.95/2.07x -> 1.81/1.60/1.92x
# (input exit 0.467/0.497/0.520 of the certification rows -> 0.431/not kept/0.489; 2026-12-08).
# Nor other image kinds (2026-12-08; CV from 3000 rows, input exit, MLP on real fit rows plus two
# neighbours of each, share of the certification rows taken at 99.47% precision, seeds 0-4 of the
# split; stability in brackets): none 0.474, shifts 0.483 (0.93), rotations of up to 10 degrees
# 0.450 (0.91), scaling by 0.9-1.1 0.470 (0.91), elastic warps 0.376 (0.71), erased patches 0.420
# (0.90), contrast 0.8-1.2 and brightness +-20 0.495 (0.96; paired with shifts +0.012, within the
# seeds' spread), shifts + rotations + scaling 0.483.
SHIFT = 0.04          # image shifts: up to this share of the side
NOISE = 0.01          # Gaussian noise: this share of the input's standard deviation
TOKEN_SHARE = 0.1     # tokens dropped or replaced per row

Feeds = dict[str, np.ndarray]
Perturbation = Callable[[Feeds, np.ndarray, np.random.Generator], Feeds]  # (feeds, rows to change, rng)


@dataclass
class Neighbours:
    """Synthetic rows: features/outputs (like the calibration rows'), and the fit row each came from."""

    cache: FeatureCache | None
    source: np.ndarray                                       # [rows] index into the fit rows
    stability: dict[str, float] = field(default_factory=dict)  # perturbation -> share of kept predictions
    used: list[str] = field(default_factory=list)            # the stable perturbations
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [rows] index into `used`

    @property
    def rows(self) -> int:
        return len(self.source)


def _image_axes(info: TensorInfo) -> tuple[int, int, int] | None:
    """(channel, height, width) axes of an image-like input (float, or 8-bit pixels), or None."""
    if info.rank != 4 or not (np.issubdtype(info.dtype, np.floating) or info.dtype in (np.uint8, np.int8)):
        return None
    s = info.shape
    small = [a for a in (1, 3) if isinstance(s[a], int) and s[a] <= 4]
    if small == [1] or (small == [1, 3] and not (isinstance(s[2], int) and s[2] <= 4)):
        return 1, 2, 3
    if small == [3]:
        return 3, 1, 2
    return None


def _signal_axes(info: TensorInfo) -> tuple[int, int] | None:
    """(channel, length) axes of a 1-D signal input [batch, channels <= 4, length], or None."""
    if info.rank != 3 or not np.issubdtype(info.dtype, np.floating):
        return None
    c = info.shape[1]
    return (1, 2) if isinstance(c, int) and c <= 4 else None


def _shift(name: str, *axes: int) -> Perturbation:
    """Each changed row moved by up to SHIFT of its size along every axis in `axes` (edges repeated)."""
    def apply(feeds, rows, rng):
        x = feeds[name].copy()
        sizes = [x.shape[a] for a in axes]
        steps = [max(1, round(SHIFT * n)) for n in sizes]
        pad = [(0, 0)] * x.ndim
        for a, st in zip(axes, steps):
            pad[a] = (st, st)
        for r in np.flatnonzero(rows):
            padded = np.pad(x[r:r + 1], pad, mode="edge")
            idx = [slice(None)] * x.ndim
            for a, n, st in zip(axes, sizes, steps):
                d = rng.integers(-st, st + 1)
                idx[a] = slice(st + d, st + d + n)
            x[r] = padded[tuple(idx)][0]
        return {**feeds, name: x}
    return apply


def _flip(name: str, w_axis: int) -> Perturbation:
    def apply(feeds, rows, rng):
        x = feeds[name].copy()
        x[rows] = np.flip(x[rows], axis=w_axis)
        return {**feeds, name: x}
    return apply


def _noise(name: str, scale: np.ndarray) -> Perturbation:
    def apply(feeds, rows, rng):
        x = feeds[name].copy()
        if np.issubdtype(x.dtype, np.integer):  # 8-bit pixels: rounded, kept in range
            info = np.iinfo(x.dtype)
            noisy = x[rows].astype(np.float64) + rng.standard_normal(x[rows].shape) * scale
            x[rows] = np.clip(np.rint(noisy), info.min, info.max).astype(x.dtype)
        else:
            x[rows] = x[rows] + (rng.standard_normal(x[rows].shape) * scale).astype(x.dtype)
        return {**feeds, name: x}
    return apply


def _token_edit(names: list[str], mask: str, replace: bool, pool: dict[str, np.ndarray]) -> Perturbation:
    """Drop (replace=False) or replace tokens at the same positions of every token input."""
    def apply(feeds, rows, rng):
        out = {k: v.copy() for k, v in feeds.items()}
        m = feeds[mask]
        pads = {n: (feeds[n][m == 0][0] if (m == 0).any() else 0) for n in names}
        for r in np.flatnonzero(rows):
            length = int((m[r] != 0).sum())
            inner = np.arange(1, length - 1)
            if len(inner) < 2:
                continue
            k = max(1, round(TOKEN_SHARE * len(inner)))
            pos = rng.choice(inner, size=k, replace=False)
            if replace:
                src = rng.integers(0, len(pool[names[0]]), size=k)
                for n in names:
                    if n != mask:
                        out[n][r, pos] = pool[n][src]
            else:
                keep = np.setdiff1d(np.arange(m.shape[1]), pos)
                for n in names:
                    row = feeds[n][r, keep]
                    out[n][r] = np.concatenate([row, np.full(k, pads[n] if n != mask else 0, row.dtype)])
        return out
    return apply


def perturbations(inputs: list[TensorInfo], feeds: Feeds, mask_input: str | None) -> dict[str, Perturbation]:
    """The perturbations that suit these inputs (see the module doc), by name."""
    out: dict[str, Perturbation] = {}
    for info in inputs:
        x = feeds[info.name]  # spreads in float64: a float16 image's variance overflows in its own dtype
        axes = _image_axes(info)
        if axes is not None:
            _, h, w = axes
            if x.shape[h] >= 8 and x.shape[w] >= 8:
                out[f"shift:{info.name}"] = _shift(info.name, h, w)
                out[f"flip:{info.name}"] = _flip(info.name, w)
            out[f"noise:{info.name}"] = _noise(info.name, np.float32(NOISE * x.std(dtype=np.float64)))
        elif _signal_axes(info) is not None:  # a 1-D signal [batch, channels, length]: shifted in time
            if x.shape[2] >= 8:
                out[f"shift:{info.name}"] = _shift(info.name, 2)
            out[f"noise:{info.name}"] = _noise(info.name, np.float32(NOISE * x.std(dtype=np.float64)))
        elif np.issubdtype(info.dtype, np.floating) and info.rank == 2:
            out[f"noise:{info.name}"] = _noise(info.name, (NOISE * x.std(axis=0, dtype=np.float64)).astype(np.float32))
    if mask_input is not None:
        m = feeds[mask_input]
        tokens = [i.name for i in inputs if i.rank == 2 and np.issubdtype(i.dtype, np.integer)
                  and feeds[i.name].shape == m.shape]
        ids = [n for n in tokens if n != mask_input]
        if ids:
            real = m != 0
            pool = {n: feeds[n][real] for n in tokens}
            out["drop-tokens"] = _token_edit(tokens, mask_input, False, pool)
            out["replace-tokens"] = _token_edit(tokens, mask_input, True, pool)
    return out


def make_neighbours(inputs: list[TensorInfo], fit: Dataset, fit_pred: np.ndarray, mask_input: str | None,
                    probe: FeatureProbe, kind: str, seed: int = 0, progress: bool = True) -> Neighbours:
    """Neighbours of the fit rows, labelled (and featurised) by the original through `probe`.

    Each perturbation is first tried on STABILITY_ROWS fit rows (those rows are kept as neighbours
    if it is stable); then up to MAX_COPIES neighbours per fit row in all (at most MAX_ROWS, and
    what the original computes in NEIGHBOUR_MULTIPLY_ADDS) are
    made, shared equally among the stable perturbations, one perturbation per neighbour."""
    rng = np.random.default_rng(seed + 1)
    kinds = perturbations(inputs, fit.feeds, mask_input)
    empty = Neighbours(None, np.zeros(0, np.int64))
    if not kinds:
        return empty
    caches: list[FeatureCache] = []
    sources: list[np.ndarray] = []
    stability: dict[str, float] = {}
    for name, kind in kinds.items():
        src = rng.choice(fit.rows, size=min(STABILITY_ROWS, fit.rows), replace=False)
        rows = take_rows(fit.feeds, src)
        cache = probe.collect(Dataset(kind(rows, np.ones(len(src), bool), rng), None, fit.path), progress=False,
                              kind=kind)
        stability[name] = float((cache.predictions == fit_pred[src]).mean())
        if stability[name] >= STABLE:
            caches.append(cache)
            sources.append(src)
    used = [k for k in kinds if stability[k] >= STABLE]
    if not used:
        return Neighbours(None, np.zeros(0, np.int64), stability, [])
    groups = [np.full(len(s), j, np.int64) for j, s in enumerate(sources)]
    budget = int(NEIGHBOUR_MULTIPLY_ADDS / max(probe.flops_per_row, 1.0))
    total = min(MAX_COPIES * fit.rows, MAX_ROWS, budget)
    per_kind = max(0, total // len(used) - STABILITY_ROWS)
    for j, name in enumerate(used):
        if not per_kind:
            break
        src = rng.integers(0, fit.rows, size=per_kind)
        feeds = kinds[name](take_rows(fit.feeds, src), np.ones(per_kind, bool), rng)
        caches.append(probe.collect(Dataset(feeds, None, fit.path), progress=progress,
                                    desc=f"augment: label neighbours ({name})", kind=kind))
        sources.append(src)
        groups.append(np.full(per_kind, j, np.int64))
    cache = FeatureCache(np.concatenate([c.outputs for c in caches]), np.concatenate([c.probs for c in caches]),
                         [np.concatenate([c.features[k] for c in caches]) for k in range(len(caches[0].features))],
                         kind)
    return Neighbours(cache, np.concatenate(sources).astype(np.int64), stability, used, np.concatenate(groups))


# Neighbours are for small calibration sets. On the CV sample's 4000 fit rows they tripled
# distillation time (84 s -> 336 s on a loaded VM) for a plan within noise of the one without.
AUGMENT_MAX_FIT_ROWS = 2000


def augment_stage(sig: Signature, fit: Dataset, fit_pred: np.ndarray, mask_input: str | None, probe: FeatureProbe,
                  kind: str, opts: CompileOptions, log=print) -> NeighbourRows | None:
    """Synthetic neighbours of the fit rows labelled by the original (:func:`make_neighbours`), or
    None (fit split of AUGMENT_MAX_FIT_ROWS or more, or no stable perturbation)."""
    if fit.rows >= AUGMENT_MAX_FIT_ROWS:
        return None
    nb = make_neighbours(sig.inputs, fit, fit_pred, mask_input, probe, kind, seed=opts.seed,
                         progress=opts.progress)
    tried = ", ".join(f"{k} {v:.2f}" for k, v in nb.stability.items())
    if nb.cache is None:
        if tried:
            log(f"exitc: no perturbation keeps the original's predictions stable ({tried}); no neighbours")
        return None
    log(f"exitc: {nb.rows} synthetic neighbours of {fit.rows} fit rows (prediction stability: {tried})")
    return NeighbourRows(nb.cache.features, nb.cache.probs, nb.source, nb.group, tuple(nb.used))
