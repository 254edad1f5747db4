"""Run the original model over the calibration data (and synthetic neighbours of it) and cache
what distillation needs: the original's prediction output and pooled features at every candidate
exit (FeatureProbe)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from .backends import make_session
from .data import Dataset, batches
from .passes.candidates import Candidate, estimate_flops
from .passes.graph import GraphIndex
from .passes.heads import softmax
from .passes.split import probe_model, probe_name
from .predictions import PROBABILITIES, as_two_classes, is_binary, prediction_kind


@dataclass
class FeatureCache:
    outputs: np.ndarray          # the original's prediction output [rows, classes] (a binary one's as two classes)
    probs: np.ndarray            # its class probabilities (soft targets)
    features: list[np.ndarray]   # pooled features per candidate [rows, D_k]
    kind: str                    # what the outputs hold (predictions.KINDS); exit heads answer in it

    @property
    def predictions(self) -> np.ndarray:
        return self.outputs.argmax(axis=1)

    @classmethod
    def from_outputs(cls, outputs: np.ndarray, features: list[np.ndarray], kind: str | None = None) -> "FeatureCache":
        """The cache of the original's prediction outputs on some rows and the pooled features of
        the same rows (every front end's measurements build it here). `kind`: what the outputs
        hold (predictions.KINDS; read from their values where None). Soft targets are the
        outputs where they are probabilities, else their softmax (which turns log-probabilities
        back into probabilities); a binary original's one score per row is seen as two classes
        (predictions.as_two_classes), so heads learn it like any classifier; an output with axes
        of size 1 around its classes ([rows, classes, 1, 1]) is taken as [rows, classes]."""
        outputs = outputs.reshape(len(outputs), -1)
        if kind is None:
            kind = prediction_kind(outputs)
        is_prob = kind == PROBABILITIES
        if is_binary(outputs):
            outputs = as_two_classes(outputs, is_prob)
        probs = outputs if is_prob else softmax(outputs)
        return cls(outputs, probs.astype(np.float32), features, kind)


# Rows per probe run. Only memory and speed depend on it, not the features (the probe is the
# original model plus pooling, row-independent; tests/test_features.py checks that).
PROBE_BATCH_ROWS = 64


class FeatureProbe:
    """The original model with pooled-feature outputs at every candidate (passes.split.probe_model),
    loaded once and run over any rows: the calibration data, and synthetic neighbours of it, in
    batches of `batch_size` rows."""

    def __init__(self, model: onnx.ModelProto, candidates: list[Candidate], mask_input: str | None,
                 batch_size: int = PROBE_BATCH_ROWS):
        self.session = make_session(probe_model(model, candidates, mask_input), "probe model")
        self.names = [model.graph.output[0].name] + [probe_name(k) for k in range(len(candidates))]
        self.batch_size = batch_size
        self.seconds_per_row = 0.0  # measured on the last collect()
        # the original's estimated multiply-adds per row (what a neighbour costs to label)
        self.flops_per_row = float(sum(estimate_flops(GraphIndex.build(model))))

    def collect(self, data: Dataset, batch_size: int | None = None, progress: bool = True,
                desc: str = "features: run original", kind: str | None = None) -> FeatureCache:
        """Features and the original's outputs on `data` (in batches of `batch_size` rows, default
        the probe's); `kind` overrides the detection of what the outputs hold (neighbours are
        judged like the calibration rows they came from). Guarantees: row i of every returned
        array belongs to row i of `data`."""
        parts: list[list[np.ndarray]] = [[] for _ in self.names]
        t = time.perf_counter()
        for sl in tqdm(list(batches(data.rows, batch_size or self.batch_size)), desc=desc, unit="batch",
                       disable=not progress, leave=False):
            outs = self.session.run({k: v[sl] for k, v in data.feeds.items()}, self.names)
            for p, o in zip(parts, outs):
                p.append(o)
        self.seconds_per_row = (time.perf_counter() - t) / max(data.rows, 1)
        out = np.concatenate(parts[0]).astype(np.float32)
        return FeatureCache.from_outputs(out, [np.concatenate(p).astype(np.float32) for p in parts[1:]], kind)
