"""What a prediction output holds and what class it stands for: the one definition every
comparison with the original uses (verify, bench, the agreement monitor; libexitc's monitor
mirrors it), and the form exit heads answer in.

Kinds (manifest ``prediction_kind``): "logits" (any real scores), "probabilities" (rows that sum
to 1, or one sigmoid score in [0, 1]), "log_probabilities" (a LogSoftmax's output: rows whose
logsumexp is 0, e.g. PyTorch models trained with nll_loss). Exit heads answer in the original's
kind (:func:`answer`), so a caller reading exp() of a log-probability, or a probability, gets one
from an exited row too.

[rows, classes]: the class is the argmax. [rows, 1], one score per row (a binary classifier):
class 1 where the score is above 0.5 ("probabilities") or above 0 ("logits"). For distillation a
binary original is seen as two classes (:func:`as_two_classes`), whose argmax is that same decision.
"""

from __future__ import annotations

import numpy as np

LOGITS = "logits"
PROBABILITIES = "probabilities"
LOG_PROBABILITIES = "log_probabilities"
KINDS = (LOGITS, PROBABILITIES, LOG_PROBABILITIES)

# How far a row's sum of probabilities (or logsumexp of log-probabilities) may be from 1 (0).
_SUM_ATOL = 1e-3


def is_classification_shape(dims) -> bool:
    """Whether a prediction output's shape without its batch axis is a classifier's: [classes]
    ([1]: one score per row), or one axis of classes with axes of size 1 around it ([classes, 1,
    1], [1, classes]). Both front ends decide by this."""
    dims = list(dims)
    if not dims or not all(isinstance(d, int) and d >= 1 for d in dims):
        return False
    return len(dims) == 1 or sum(d > 1 for d in dims) == 1


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
    return bool(out.min() >= -1e-6 and out.max() <= 1 + 1e-6
                and np.allclose(out.sum(axis=1, dtype=np.float64), 1.0, atol=_SUM_ATOL))


def scores_are_log_probabilities(out: np.ndarray) -> bool:
    """Several columns, every score <= 0, and every row's logsumexp 0 (a LogSoftmax's output).
    Never for one score per row (a negative logit would pass)."""
    if out.ndim != 2 or out.shape[1] < 2 or not np.isfinite(out).all() or out.max() > 1e-6:
        return False
    z = out.astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return bool(np.allclose(lse, 0.0, atol=_SUM_ATOL))


def prediction_kind(out: np.ndarray) -> str:
    """The kind of a prediction output, read from its values on calibration rows (see the module doc)."""
    if scores_are_probabilities(out):
        return PROBABILITIES
    if scores_are_log_probabilities(out):
        return LOG_PROBABILITIES
    return LOGITS


def answer(logits: np.ndarray, probs: np.ndarray, kind: str) -> np.ndarray:
    """A head's answer in `kind`, from its logits and their softmax `probs` (both [rows, classes]):
    the probabilities, their log (a log_softmax of the logits), or the logits themselves."""
    if kind == PROBABILITIES:
        return probs
    if kind == LOG_PROBABILITIES:
        z = logits - logits.max(axis=1, keepdims=True)
        return (z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(logits.dtype)
    return logits


def as_two_classes(out: np.ndarray, probabilities: bool) -> np.ndarray:
    """A binary original's scores [rows, 1] as two classes: probabilities [1 - p, p], or logits
    [0, z] (whose softmax is [1 - sigmoid(z), sigmoid(z)]); argmax equals predicted_classes."""
    s = out[:, :1].astype(np.float32)
    return np.concatenate([1 - s, s], axis=1) if probabilities else np.concatenate([np.zeros_like(s), s], axis=1)
