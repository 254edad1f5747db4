"""The exit loop: how an artifact's segments run with early exits (docs/artifact-format.md).

One definition for every Python runtime of an artifact: the reference runtime (:mod:`exitc.runtime`,
numpy arrays, segments on ONNX Runtime) and the torch runtime (:class:`exitc.pytorch.runtime.TorchCompiled`,
torch tensors, fx segments). The C++ runtime (runtime/src/model.cpp) implements the same loop and is
tested against the reference runtime.

Per segment i, on the rows still running:

1. the segment runs (with exit i's head fused in, except for the last segment);
2. rows whose exit score is >= the exit's threshold leave: their exit logits are scattered to the
   prediction output at their request rows and their exit index is i;
3. if no row is left, stop; otherwise the tensors segment i carries are added to the state, tensors
   no later segment reads are dropped, and (if any row left) the survivors are compacted;
4. the last segment writes every output for the rows that reach it.

The loop itself uses no array library: the array operations come in an :class:`ArrayOps`
(:data:`NUMPY` here; the torch runtime passes its own, so this module never imports torch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from .compaction import compact_rows, scatter_rows


@dataclass(frozen=True)
class ExitSpec:
    """Exit `index` of a segment: the head's output and score names and its threshold."""

    index: int
    logits: str
    score: str
    threshold: float


@dataclass(frozen=True)
class Step:
    """One segment as the loop sees it."""

    inputs: tuple[str, ...]            # state tensors the segment (and its head) reads
    carry_out: tuple[str, ...]         # tensors it adds to the state for later segments
    exit: ExitSpec | None              # None: the last segment
    outputs: tuple[str, ...] = ()      # last segment: the model outputs it writes


@dataclass(frozen=True)
class ArrayOps:
    """The array operations the loop needs, for one array library."""

    arange: Callable                   # n -> int64 [n] 0..n-1
    full: Callable                     # (n, value) -> int64 [n]
    zeros_rows: Callable               # (n, like) -> zeros [n, *like.shape[1:]] of like's dtype
    at_least: Callable                 # (score, threshold float) -> bool mask (float32 comparison)
    any: Callable                      # mask -> Python bool
    compact: Callable                  # (tensors dict, keep mask, batch axes) -> dict of the kept rows
    scatter: Callable                  # (dest, rows, values): dest[rows] = values


NUMPY = ArrayOps(
    arange=lambda n: np.arange(n),
    full=lambda n, v: np.full(n, v, np.int64),
    zeros_rows=lambda n, like: np.zeros((n,) + like.shape[1:], like.dtype),
    at_least=lambda score, t: score >= np.float32(t),
    any=lambda m: bool(m.any()),
    compact=compact_rows,
    scatter=scatter_rows,
)


def needed_after(steps: list[Step]) -> list[set[str]]:
    """For each step, the state tensors some later step reads."""
    out: list[set[str]] = []
    needed: set[str] = set()
    for s in reversed(steps):
        out.insert(0, set(needed))
        needed |= set(s.inputs)
    return out


@dataclass
class LoopResult:
    exit_index: object                 # int64 [batch]; len(steps) - 1: ran the whole model
    overhead_seconds: float = 0.0      # time outside the segments (decisions, compaction, scatter)


def run_exits(steps: list[Step], run_segment: Callable[[int, dict], Mapping], state: dict, batch: int,
              results: dict, prediction: str, ops: ArrayOps, needed: list[set[str]] | None = None,
              batch_axes: Mapping[str, int] | None = None, full_depth: bool = False) -> LoopResult:
    """Run `steps` on `state` (graph inputs by name, `batch` rows) with early exits, as the module
    docstring says. `run_segment(i, state)` returns segment i's outputs by name (for an exit: at
    least its carry_out, logits and score). `results` maps output names to arrays of `batch` rows:
    the prediction output must be there (exited rows are written into it); other outputs are
    created on first write (zeros). `full_depth`: no row exits (heads still run).

    Guarantees: every row gets exactly one exit index; an exited row's prediction is its exit's
    logits, a full-depth row's outputs are the last segment's; `results` is updated in place."""
    needed = needed if needed is not None else needed_after(steps)
    num_exits = len(steps) - 1
    exit_index = ops.full(batch, num_exits)
    active = ops.arange(batch)
    overhead = 0.0
    for i, step in enumerate(steps):
        outs = run_segment(i, state)
        t0 = time.perf_counter()
        ex = step.exit
        if ex is None:
            for name in step.outputs:
                if name not in results:
                    results[name] = ops.zeros_rows(batch, outs[name])
                ops.scatter(results[name], active, outs[name])
            overhead += time.perf_counter() - t0
            break
        leave = ops.at_least(outs[ex.score], float("inf") if full_depth else ex.threshold)
        any_leave = ops.any(leave)
        if any_leave:
            rows = active[leave]
            ops.scatter(results[prediction], rows, outs[ex.logits][leave])
            exit_index[rows] = ex.index
        keep = ~leave
        if not ops.any(keep):
            overhead += time.perf_counter() - t0
            break
        state.update({k: outs[k] for k in step.carry_out})
        live = {k: v for k, v in state.items() if k in needed[i]}
        state = ops.compact(live, keep, batch_axes or {}) if any_leave else live
        if any_leave:
            active = active[keep]
        overhead += time.perf_counter() - t0
    return LoopResult(exit_index, overhead)
