"""The Python reference runtime: executes an artifact exactly as docs/artifact-format.md says.

It is the oracle the C++ runtime is tested against. `load(path)` returns an :class:`ExitModel`;
calling it with the original model's inputs returns the original's outputs (same names, shapes,
dtypes, order) and, per row, the exit it took.
"""

from __future__ import annotations

import os
import threading
from typing import Mapping

import numpy as np

from .backends import make_session
from .errors import ExitcError
from .exit_loop import NUMPY, ExitSpec, Step, needed_after, run_exits
from .manifest import read_manifest
from .passes.sequence import DEFAULT_CALL_ROWS, SequenceAxis, cut_feeds, length_chunks, longest, row_lengths


class ExitModel:
    """A loaded early-exit model (reference implementation)."""

    def __init__(self, path: str, threads: int | None = None, use_conditional: bool = True, full_depth: bool = False):
        """full_depth: no row exits (the heads still run), so every row pays what a row that runs
        to the end pays; the compiler measures that overhead with it."""
        self.path = path
        self.full_depth = full_depth
        self.manifest = read_manifest(path)
        m = self.manifest
        self.inputs = m["inputs"]
        self.output_names = [o["name"] for o in m["outputs"]]
        self.prediction_output = m["prediction_output"]
        self.num_classes = m["num_classes"]
        spec = next(o for o in m["outputs"] if o["name"] == self.prediction_output)
        # a row's shape: [classes], or with axes of size 1 around them ([classes, 1, 1])
        self._row_dims = tuple(d if isinstance(d, int) else self.num_classes for d in spec["shape"][1:])
        self.segments = m["segments"]
        self.num_exits = len(self.segments) - 1
        self._sessions = [make_session(os.path.join(path, s["file"]), os.path.join(path, s["file"]), threads)
                          for s in self.segments]
        cond = m.get("conditional")
        self._conditional = (make_session(os.path.join(path, cond["file"]), os.path.join(path, cond["file"]), threads)
                             if cond and use_conditional and not full_depth else None)
        # The first-exit batch-1 form: a batch-1 request runs segment 0 and its exit first, and the
        # conditional file (the original) only if that exit does not take it.
        self._after_first_exit = bool(cond and cond.get("after_first_exit")) and self._conditional is not None
        self._steps = steps_of_manifest(m)
        self._needed_after = needed_after(self._steps)  # tensor names still needed after segment i
        self._batch_axes = {t["name"]: int(t.get("batch_axis", 0)) for t in list(m["inputs"]) + list(m["carried"])}
        seq = m.get("sequence")
        # Token inputs whose padding is dropped per call, and the batch split by length
        # (exitc.passes.sequence); None: every row runs at the interface's length.
        self.sequence = SequenceAxis.from_manifest(seq) if seq else None
        self._call_rows = float(seq.get("call_rows", DEFAULT_CALL_ROWS)) if seq else DEFAULT_CALL_ROWS
        self._lock = threading.Lock()
        self._exit_counts = np.zeros(self.num_exits + 1, np.int64)
        # Seconds spent outside the segment engines (exit decisions, compaction, scatter), for
        # benchmarks that report the runtime's own overhead separately.
        self.overhead_seconds = 0.0

    # -- validation -------------------------------------------------------------------------
    def _check(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        batch = None
        names = [i["name"] for i in self.inputs]
        unknown = [k for k in feeds if k not in names]
        if unknown:  # as libexitc: a misspelt name is an error, not an input silently left out
            raise ExitcError(f"unknown input {unknown[0]!r} (model inputs: {', '.join(names)})")
        for spec in self.inputs:
            name = spec["name"]
            if name not in feeds:
                raise ExitcError(f"missing input {name!r} (model inputs: {', '.join(names)})")
            arr = np.asarray(feeds[name])
            if arr.dtype != np.dtype(spec["dtype"]):
                raise ExitcError(f"input {name!r} has dtype {arr.dtype}, expected {spec['dtype']}")
            shape, axis = spec["shape"], int(spec.get("batch_axis", 0))
            if arr.ndim != len(shape) or any(isinstance(d, int) and d != g and i != axis
                                             for i, (d, g) in enumerate(zip(shape, arr.shape))):
                raise ExitcError(f"input {name!r} has shape {list(arr.shape)}, expected {shape}")
            if batch is None:
                batch = arr.shape[axis]
            elif arr.shape[axis] != batch:
                raise ExitcError(f"input {name!r} has {arr.shape[axis]} rows, other inputs have {batch}")
            out[name] = np.ascontiguousarray(arr)
        return out

    # -- execution --------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Returns ([outputs in manifest order], exit_index int64 [batch]). A token model's batch is
        split by length and each part runs at its longest row's length (the manifest's
        "sequence" section; exitc.passes.sequence)."""
        state = self._check(feeds)
        first = self.inputs[0]
        batch = state[first["name"]].shape[int(first.get("batch_axis", 0))]
        seq = self.sequence
        if seq is None or batch == 0:
            return self._run_rows(state, batch)
        lengths = row_lengths(state[seq.mask])
        chunks = length_chunks(lengths, self._call_rows, seq.length)
        if len(chunks) == 1:
            return self._run_rows(cut_feeds(state, seq, longest(lengths)), batch)
        outputs: list[np.ndarray] = []
        exit_index = np.empty(batch, np.int64)
        for rows in chunks:
            part = {k: np.take(v, rows, axis=self._batch_axes.get(k, 0)) for k, v in state.items()}
            outs, exits = self._run_rows(cut_feeds(part, seq, longest(lengths[rows])), len(rows))
            if not outputs:
                outputs = [np.zeros((batch,) + o.shape[1:], o.dtype) for o in outs]
            for dest, o in zip(outputs, outs):
                dest[rows] = o
            exit_index[rows] = exits
        return outputs, exit_index

    __call__ = run

    def _run_rows(self, state: dict[str, np.ndarray], batch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """One call's rows through the batch-1 form or the exit loop."""
        results: dict[str, np.ndarray] = {}
        for spec in self.manifest["outputs"]:  # exited rows of non-prediction outputs stay zero
            if spec["name"] == self.prediction_output:
                results[spec["name"]] = np.zeros((batch,) + self._row_dims, np.dtype(spec["dtype"]))
        if batch == 1 and self._conditional is not None:
            exit_index = self._first_exit(state, results) if self._after_first_exit else None
            if exit_index is None:
                outs = self._conditional.run(state)
                exit_index = outs[-1].astype(np.int64)
                self._count(exit_index)
                return list(outs[:-1]), exit_index
        else:
            loop = run_exits(self._steps, self._run_segment, state, batch, results, self.prediction_output, NUMPY,
                             self._needed_after, self._batch_axes, self.full_depth)
            exit_index = loop.exit_index
            with self._lock:
                self.overhead_seconds += loop.overhead_seconds
        self._count(exit_index)
        for spec in self.manifest["outputs"]:  # outputs no row reached: zeros of the declared shape
            if spec["name"] not in results:
                dims = [d if isinstance(d, int) else 0 for d in spec["shape"][1:]]
                results[spec["name"]] = np.zeros([batch] + dims, np.dtype(spec["dtype"]))
        return [results[n] for n in self.output_names], exit_index

    def _first_exit(self, state: dict[str, np.ndarray], results: dict[str, np.ndarray]) -> np.ndarray | None:
        """The first-exit batch-1 form's first step: segment 0 and its exit on the one row. Its exit
        index (0) with its logits written into `results` where the exit takes the row, else None
        (the row runs the original)."""
        ex = self._steps[0].exit
        outs = self._run_segment(0, state)
        if not bool(NUMPY.at_least(outs[ex.score], ex.threshold)[0]):
            return None
        results[self.prediction_output][:] = outs[ex.logits]
        return np.full(1, ex.index, np.int64)

    def _run_segment(self, i: int, state: dict) -> dict:
        step = self._steps[i]
        wanted = list(step.carry_out) + ([step.exit.logits, step.exit.score] if step.exit else list(step.outputs))
        return dict(zip(wanted, self._sessions[i].run({k: state[k] for k in step.inputs}, wanted)))

    def _count(self, exit_index: np.ndarray) -> None:
        counts = np.bincount(exit_index, minlength=self.num_exits + 1)
        with self._lock:
            self._exit_counts += counts

    def stats(self) -> dict:
        with self._lock:
            counts = self._exit_counts.copy()
        total = int(counts.sum())
        return {"rows": total, "exit_counts": counts.tolist(),
                "exit_fractions": (counts / total).tolist() if total else [0.0] * len(counts)}


def steps_of_manifest(manifest: dict) -> list[Step]:
    """The manifest's segments as exit-loop steps (exitc.exit_loop)."""
    steps = []
    for seg in manifest["segments"]:
        ex = seg["exit"]
        spec = ExitSpec(int(ex["index"]), ex["logits"], ex["score"], float(ex["threshold"])) if ex else None
        steps.append(Step(tuple(seg["inputs"]), tuple(seg["carry_out"]), spec,
                          () if ex else tuple(seg["outputs"])))
    return steps


def load(path: str, engine: str = "auto", threads: int | None = None) -> ExitModel:
    """Load a compiled model. engine: "auto" (C++ runtime when built, else Python), "cpp", "python"."""
    if engine in ("auto", "cpp"):
        try:
            from .cpp_runtime import CppExitModel  # noqa: F401  (present when the C++ runtime is built)
        except ImportError:
            if engine == "cpp":
                raise ExitcError("the C++ runtime is not built in this installation (engine='cpp')") from None
        else:
            return CppExitModel(path, threads=threads)
    if engine not in ("auto", "cpp", "python"):
        raise ExitcError(f"unknown engine {engine!r} (auto, cpp, python)")
    return ExitModel(path, threads=threads)
