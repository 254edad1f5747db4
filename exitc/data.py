"""Calibration / test data: `.npz` files whose arrays are named after the model's inputs.

A single-input model may use any one array name; an optional ``labels`` array is only used for
reporting labelled accuracy. Every problem is reported as one line naming the file and tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import ExitcError

LABELS = "labels"


@dataclass
class Dataset:
    feeds: dict[str, np.ndarray]     # input name -> array [rows, ...]
    labels: np.ndarray | None
    path: str

    @property
    def rows(self) -> int:
        return len(next(iter(self.feeds.values())))

    def take(self, index: np.ndarray) -> "Dataset":
        return Dataset({k: v[index] for k, v in self.feeds.items()},
                       None if self.labels is None else self.labels[index], self.path)


def load_dataset(path: str, inputs, label: str = "data") -> Dataset:
    """Load and validate `path` against the model inputs (a list of TensorInfo)."""
    if not os.path.isfile(path):
        raise ExitcError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception:
        raise ExitcError(f"{path}: not a readable .npz file") from None
    labels = arrays.pop(LABELS, None)
    names = [i.name for i in inputs]
    if len(inputs) == 1 and names[0] not in arrays:
        if len(arrays) != 1:
            raise ExitcError(f"{path}: missing input tensor {names[0]!r} (found {', '.join(sorted(arrays)) or 'none'})")
        arrays = {names[0]: next(iter(arrays.values()))}
    feeds = {}
    for info in inputs:
        if info.name not in arrays:
            raise ExitcError(f"{path}: missing input tensor {info.name!r} (found {', '.join(sorted(arrays)) or 'none'})")
        arr = arrays[info.name]
        if arr.dtype != info.dtype:
            raise ExitcError(f"{path}: tensor {info.name!r} has dtype {arr.dtype}, the model expects {info.dtype}")
        if arr.ndim != info.rank:
            raise ExitcError(f"{path}: tensor {info.name!r} has shape {list(arr.shape)}, the model expects "
                             f"{['rows'] + list(info.shape[1:])}")
        for axis, (got, want) in enumerate(zip(arr.shape[1:], info.shape[1:]), start=1):
            if isinstance(want, int) and got != want:
                raise ExitcError(f"{path}: tensor {info.name!r} has shape {list(arr.shape)}, the model expects "
                                 f"{['rows'] + list(info.shape[1:])} (axis {axis})")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(axis=1).sum())
            raise ExitcError(f"{path}: tensor {info.name!r} contains NaN or Inf in {bad} rows")
        feeds[info.name] = arr
    rows = {len(a) for a in feeds.values()}
    if len(rows) != 1:
        raise ExitcError(f"{path}: input tensors have different row counts {sorted(rows)}")
    n = rows.pop()
    if n == 0:
        raise ExitcError(f"{path}: no rows")
    if labels is not None:
        if labels.ndim != 1 or len(labels) != n:
            raise ExitcError(f"{path}: 'labels' has shape {list(labels.shape)}, expected [{n}]")
        labels = labels.astype(np.int64)
    return Dataset(feeds, labels, path)


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
