"""Watch a deployed artifact's agreement with its original, on live traffic, without labels.

The compile-time guarantee holds on the calibration distribution; traffic drifts. An early exit
can only disagree with the original on rows it takes (rows that run to the end get the original's
output), so the live agreement is ``1 - f * r``: ``f`` the share of rows that left early (counted
exactly, on every row served) and ``r`` the disagreement rate among them. :class:`AgreementMonitor`
estimates ``r`` from a random sample of the rows that left early (`sample_rate` of them), each
also run at full depth: the artifact's full-depth path computes what the original computes (the
compiler checks that), so no second model is needed.

With a uniform sample of the early rows, the disagreements among the sampled rows are binomial
in ``r``; exact (Clopper-Pearson) bounds on ``r`` give bounds on the live agreement at the
artifact's own confidence. :meth:`AgreementMonitor.report` says "ok" when the lower bound is at
least the certified target, "below target" when the upper bound is under it (the guarantee no
longer holds for this traffic: recompile on recent rows, or serve the original), else
"inconclusive" (too few sampled rows so far). Cost: one full-depth pass for `sample_rate` of the
early rows (1% by default), batched per call.

Engine-agnostic: it wraps anything with the runtime interface (``run(feeds) -> (outputs,
exit_index)``, ``manifest``), the reference runtime and the C++ one alike.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from .errors import ExitcError
from .predictions import predicted_classes
from .stats import clopper_pearson_lower


@dataclass
class MonitorReport:
    rows: int                    # rows served since the monitor started
    exit_counts: list[int]       # per exit, then "ran to the end"
    sampled: list[int]           # per exit: early rows also run at full depth
    disagreements: list[int]     # per exit: of those, how many the exit got wrong
    early_fraction: float        # f: share of rows that left early
    agreement_estimate: float    # 1 - f * (disagreements / sampled)
    agreement_lower: float       # at `confidence` (one-sided)
    agreement_upper: float       # at `confidence` (one-sided)
    target: float                # the certified target (manifest)
    confidence: float
    status: str                  # "ok" | "below target" | "inconclusive"

    def to_dict(self) -> dict:
        return asdict(self)


def rate_bounds(k: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided exact bounds (lower, upper) on a binomial rate from k of n."""
    if n <= 0:
        return 0.0, 1.0
    low = 1.0 - clopper_pearson_lower(n - k, n, confidence)  # upper bound on the rate
    high = clopper_pearson_lower(k, n, confidence)           # lower bound on the rate
    return high, low


class AgreementMonitor:
    """An artifact that also watches its own agreement (see the module docstring).

    `model`: a loaded artifact (``exitc.load``); `reference`: what runs sampled rows at full depth
    (default: the same artifact loaded with ``full_depth=True`` on the same engine); `sample_rate`:
    share of the early rows checked; `seed`: of the sampling (None: fresh entropy).
    Thread-safe: calls may come from several threads."""

    def __init__(self, model, sample_rate: float = 0.01, reference=None, seed: int | None = None):
        if not (0.0 < sample_rate <= 1.0):
            raise ExitcError(f"sample_rate {sample_rate} is outside (0, 1]")
        self.model = model
        self.sample_rate = float(sample_rate)
        m = model.manifest
        self.num_exits = len(m["segments"]) - 1
        self.prediction_output = m["prediction_output"]
        self._output_index = [o["name"] for o in m["outputs"]].index(self.prediction_output)
        self._probabilities = m.get("prediction_kind") == "probabilities"  # read for one score per row
        self._batch_axes = {t["name"]: int(t.get("batch_axis", 0)) for t in m["inputs"]}
        cal = m.get("calibration") or {}
        self.target = float(cal.get("target_acc", 1.0))       # what the compiler certified
        self.confidence = float(cal.get("confidence", 0.95))
        self.reference = reference if reference is not None else _full_depth_twin(model)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._counts = np.zeros(self.num_exits + 1, np.int64)
        self._sampled = np.zeros(self.num_exits + 1, np.int64)
        self._wrong = np.zeros(self.num_exits + 1, np.int64)

    def __getattr__(self, name):  # the wrapped model's interface (manifest, output_names, stats, ...)
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def run(self, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """The model's run, then :meth:`observe` on its result."""
        outputs, exit_index = self.model.run(feeds)
        self.observe(feeds, outputs[self._output_index], exit_index)
        return outputs, exit_index

    __call__ = run

    def observe(self, feeds: Mapping[str, np.ndarray], prediction: np.ndarray, exit_index: np.ndarray) -> None:
        """Count one served call's rows (`prediction`: its prediction output, `exit_index` per
        row) and check a random sample of its early rows at full depth."""
        exit_index = np.asarray(exit_index, np.int64)
        early = np.flatnonzero(exit_index < self.num_exits)
        with self._lock:
            pick = early[self._rng.random(len(early)) < self.sample_rate]
        wrong = np.zeros(0, bool)
        if len(pick):
            part = {k: np.take(np.asarray(v), pick, axis=self._batch_axes.get(k, 0)) for k, v in feeds.items()}
            ref_outputs, _ = self.reference.run(part)
            full = ref_outputs[self._output_index]
            wrong = (predicted_classes(np.asarray(prediction)[pick], self._probabilities)
                     != predicted_classes(np.asarray(full), self._probabilities))
        counts = np.bincount(exit_index, minlength=self.num_exits + 1)
        sampled = np.bincount(exit_index[pick], minlength=self.num_exits + 1)
        wrong_at = np.bincount(exit_index[pick][wrong], minlength=self.num_exits + 1)
        with self._lock:
            self._counts += counts
            self._sampled += sampled
            self._wrong += wrong_at

    def report(self) -> MonitorReport:
        with self._lock:
            counts, sampled, wrong = self._counts.copy(), self._sampled.copy(), self._wrong.copy()
        rows = int(counts.sum())
        f = float(counts[:-1].sum() / rows) if rows else 0.0
        n, k = int(sampled.sum()), int(wrong.sum())
        r_low, r_high = rate_bounds(k, n, self.confidence)
        estimate = 1.0 - f * (k / n) if n else float("nan")
        lower, upper = 1.0 - f * r_high, 1.0 - f * r_low
        if lower >= self.target:
            status = "ok"
        elif upper < self.target:
            status = "below target"
        else:
            status = "inconclusive"
        return MonitorReport(rows, counts.tolist(), sampled.tolist(), wrong.tolist(), f, estimate, lower, upper,
                             self.target, self.confidence, status)


def _full_depth_twin(model):
    """The same artifact on the same engine, every row run to the end."""
    from .runtime import ExitModel

    try:
        from .cpp_runtime import CppExitModel
    except ImportError:
        CppExitModel = None
    if CppExitModel is not None and isinstance(model, CppExitModel):
        return CppExitModel(model.path, full_depth=True)
    if isinstance(model, ExitModel):
        return ExitModel(model.path, full_depth=True)
    raise ExitcError(f"AgreementMonitor: give a reference for a model of type {type(model).__name__}")
