"""ONNX Runtime (CPU) backend: the embedded default.

Sessions are configured deliberately and identically everywhere (original model, segments,
profiling, bench): thread spinning is off because on small shared VMs it doubled latency and
starved chained sessions of CPU, and the intra-op thread count is fixed so that the original and
the compiled model are compared under the same conditions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import ExitcError


def default_threads() -> int:
    env = os.environ.get("EXITC_THREADS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # FATAL only: ORT logs a failing kernel to stderr at ERROR as well as raising it; exitc turns
    # the exception into its one line, so ERROR lines would make a second.
    opts.log_severity_level = 4
    return opts


@dataclass
class OrtSession:
    """A thin wrapper so callers never touch ORT specifics."""

    session: ort.InferenceSession
    label: str

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        return self.session.run(list(outputs) if outputs is not None else None, dict(feeds))


def make_session(model: onnx.ModelProto | bytes | str, label: str, threads: int | None = None) -> OrtSession:
    """Create an ORT CPU session; an op ORT cannot run becomes a one-line ExitcError."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    try:
        sess = ort.InferenceSession(model, sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several exception types; all mean "cannot run this"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExitcError(f"{label}: ONNX Runtime cannot load the model: {first}") from None
    return OrtSession(sess, label)
