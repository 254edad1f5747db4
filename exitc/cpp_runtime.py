"""`exitc.load` backed by the C++ runtime (libexitc through the `_exitc_runtime` module).

Same interface as :class:`exitc.runtime.ExitModel`, which stays the reference the C++ runtime is
tested against (tests/test_cpp_runtime.py).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from . import _exitc_runtime
from .errors import ExitcError
from .manifest import read_manifest


class CppExitModel:
    def __init__(self, path: str, threads: int | None = None, use_conditional: bool = True, full_depth: bool = False):
        """full_depth: no row exits (the heads still run), as in :class:`exitc.runtime.ExitModel`."""
        self.path = path
        self.manifest = read_manifest(path)  # same validation and messages as the reference
        m = self.manifest
        self.inputs = m["inputs"]
        self.output_names = [o["name"] for o in m["outputs"]]
        self.prediction_output = m["prediction_output"]
        self.num_classes = m["num_classes"]
        self.num_exits = len(m["segments"]) - 1
        try:
            self._model = _exitc_runtime.load(path, int(threads or 0), bool(use_conditional), bool(full_depth))
        except (ValueError, RuntimeError) as exc:
            raise ExitcError(str(exc)) from None

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        try:
            outs, exit_index = self._model.run(dict(feeds))
        except ValueError as exc:  # bad inputs: names, dtypes, shapes
            raise ExitcError(str(exc)) from None
        return [outs[n] for n in self.output_names], exit_index

    __call__ = run

    def stats(self) -> dict:
        return dict(self._model.stats())

    @property
    def overhead_seconds(self) -> float:
        """Seconds spent outside the segment engines (exit decisions, compaction, scatter and the
        core's per-call bookkeeping; not feed validation), summed over calls since load or
        :meth:`reset_stats`. Same meaning as :attr:`exitc.runtime.ExitModel.overhead_seconds`."""
        return float(self._model.stats()["overhead_seconds"])

    @property
    def engine_seconds(self) -> float:
        """Seconds spent inside the segment engines (and conditional.onnx), summed over calls."""
        return float(self._model.stats()["engine_seconds"])

    def reset_stats(self) -> None:
        self._model.reset_stats()
