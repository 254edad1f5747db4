"""Run the original model once over the calibration data and cache what distillation needs:
the original's prediction output and pooled features at every candidate exit."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from .backends import make_session
from .data import Dataset, batches
from .passes.candidates import Candidate
from .passes.heads import softmax
from .passes.split import probe_model, probe_name


@dataclass
class FeatureCache:
    outputs: np.ndarray          # the original's prediction output [rows, classes]
    probs: np.ndarray            # its class probabilities (soft targets)
    features: list[np.ndarray]   # pooled features per candidate [rows, D_k]
    outputs_are_probabilities: bool

    @property
    def predictions(self) -> np.ndarray:
        return self.outputs.argmax(axis=1)


def looks_like_probabilities(out: np.ndarray) -> bool:
    return bool(out.min() >= -1e-6 and out.max() <= 1 + 1e-6 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def collect_features(model: onnx.ModelProto, candidates: list[Candidate], mask_input: str | None,
                     data: Dataset, batch_size: int = 64, progress: bool = True) -> FeatureCache:
    probe = make_session(probe_model(model, candidates, mask_input), "probe model")
    names = [model.graph.output[0].name] + [probe_name(k) for k in range(len(candidates))]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for sl in tqdm(list(batches(data.rows, batch_size)), desc="distill: run original", unit="batch",
                   disable=not progress, leave=False):
        outs = probe.run({k: v[sl] for k, v in data.feeds.items()}, names)
        for p, o in zip(parts, outs):
            p.append(o)
    out = np.concatenate(parts[0]).astype(np.float32)
    is_prob = looks_like_probabilities(out)
    probs = out if is_prob else softmax(out)
    feats = [np.concatenate(p).astype(np.float32) for p in parts[1:]]
    return FeatureCache(out, probs.astype(np.float32), feats, is_prob)
