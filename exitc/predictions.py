"""What class a prediction output stands for: the one definition every comparison with the
original uses (verify, bench, the agreement monitor; libexitc's monitor mirrors it).

[rows, classes]: the argmax. [rows, 1], one score per row (a binary classifier): class 1 where
the score is above 0.5 (a sigmoid probability; manifest ``prediction_kind`` "probabilities") or
above 0 (a single logit; "logits"). For distillation a binary original is seen as two classes
(:func:`as_two_classes`), whose argmax is that same decision.
"""

from __future__ import annotations

import numpy as np


def is_binary(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[1] == 1


def predicted_classes(out: np.ndarray, probabilities: bool) -> np.ndarray:
    """Class per row (int64) of a prediction output; `probabilities`: whether its scores are
    probabilities (only read for one score per row)."""
    out = np.asarray(out)
    if is_binary(out):
        return (out[:, 0].astype(np.float64) > (0.5 if probabilities else 0.0)).astype(np.int64)
    return out.reshape(len(out), -1).argmax(axis=1)


def scores_are_probabilities(out: np.ndarray) -> bool:
    """One score per row: every score in [0, 1] (a sigmoid's output). Several columns: rows that
    are probability distributions."""
    if is_binary(out):
        return bool(out.min() >= -1e-6 and out.max() <= 1 + 1e-6)
    return bool(out.min() >= -1e-6 and out.max() <= 1 + 1e-6 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def as_two_classes(out: np.ndarray, probabilities: bool) -> np.ndarray:
    """A binary original's scores [rows, 1] as two classes: probabilities [1 - p, p], or logits
    [0, z] (whose softmax is [1 - sigmoid(z), sigmoid(z)]); argmax equals predicted_classes."""
    s = out[:, :1].astype(np.float32)
    return np.concatenate([1 - s, s], axis=1) if probabilities else np.concatenate([np.zeros_like(s), s], axis=1)
