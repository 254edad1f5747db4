"""Paired timing of models on the same rows, used by `exitc bench` and by the compiler's own check
of the artifact (exitc.verify).

These VMs are noisy, so every comparison is interleaved: at batch N the models alternate every
`chunk_batches` batches over the same rows, and at batch 1 row by row; ratios come from totals
measured side by side, never from separate runs. The order alternates too (A B, then B A): a model
that always ran second would pay for whatever the first left behind in the caches (the same
model timed against itself in a fixed order measured 0.91x, 0.99x and 1.00x on cv_native at
batch 1 on a loaded VM).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from .data import batches

CHUNK_BATCHES = 8

Feeds = dict[str, np.ndarray]


def run_all(fn: Callable[[Feeds], object], feeds: Feeds, n: int, batch: int):
    """Run fn over the first n rows in batches: (seconds, [outputs per batch])."""
    outs = []
    t = time.perf_counter()
    for sl in batches(n, batch):
        outs.append(fn({k: v[sl] for k, v in feeds.items()}))
    return time.perf_counter() - t, outs


def run_interleaved(fns: Sequence[Callable[[Feeds], object]], feeds: Feeds, n: int, batch: int,
                    chunk_batches: int = CHUNK_BATCHES):
    """Run every fn over all rows in batches, alternating between them every `chunk_batches`
    batches. Returns (seconds per fn, outputs per fn)."""
    seconds = [0.0] * len(fns)
    outs: list[list] = [[] for _ in fns]
    step = batch * chunk_batches
    for chunk, start in enumerate(range(0, n, step)):
        sub = {k: v[start:start + step] for k, v in feeds.items()}
        for j in alternating(len(fns), chunk):
            t, o = run_all(fns[j], sub, min(step, n - start), batch)
            seconds[j] += t
            outs[j].extend(o)
    return seconds, outs


def alternating(count: int, turn: int) -> list[int]:
    """The order in which `count` measured functions run at round `turn`: forwards on even
    rounds, backwards on odd ones, so that each runs first as often as last."""
    order = list(range(count))
    return order if turn % 2 == 0 else order[::-1]


def batch1_latencies(fns: Sequence[Callable[[Feeds], object]], feeds: Feeds, rows: int, warmup: int = 2,
                     progress=None) -> list[np.ndarray]:
    """Seconds per row of every fn at batch 1, interleaved row by row (after `warmup` rows)."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(-warmup, rows):
        r = max(i, 0)
        f = {k: v[r:r + 1] for k, v in feeds.items()}
        for j in alternating(len(fns), i):
            t = time.perf_counter()
            fns[j](f)
            if i >= 0:
                times[j].append(time.perf_counter() - t)
        if progress is not None and i >= 0:
            progress.update(1)
    return [np.asarray(t) for t in times]
