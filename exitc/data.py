"""Calibration / test data: `.npz` files whose arrays are named after the model's inputs.

A single-input model may use any one array name; an optional ``labels`` array is only used for
reporting labelled accuracy. Every problem is reported as one line naming the file and tensor.
An array of another dtype than the input's is cast where that keeps its meaning (see
:func:`cast_to`: numpy's float64 default for a float32 input, int64 ids for an int32 input whose
values fit) and refused otherwise; `Dataset.casts` says what was cast.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .errors import ExitcError

LABELS = "labels"


@dataclass
class Dataset:
    feeds: dict[str, np.ndarray]     # input name -> array [rows, ...]
    labels: np.ndarray | None
    path: str
    casts: dict[str, str] = field(default_factory=dict)  # input name -> "float64 -> float32" where cast

    @property
    def rows(self) -> int:
        return len(next(iter(self.feeds.values())))

    @cached_property
    def distinct_rows(self) -> int:
        """How many different rows there are (a row's inputs compared byte for byte). Kept: the
        torch front end checks the rows before tracing and the pipeline again (1.2 s on
        cv_native's 3000 images)."""
        parts = [np.ascontiguousarray(a).reshape(len(a), -1).view(np.uint8).reshape(len(a), -1)
                 for a in self.feeds.values()]
        whole = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        return len({hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in whole})

    def take(self, index: np.ndarray) -> "Dataset":
        return Dataset({k: v[index] for k, v in self.feeds.items()},
                       None if self.labels is None else self.labels[index], self.path, dict(self.casts))


def take_rows(feeds: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Those rows of every input, contiguous (what sessions are fed)."""
    return {k: np.ascontiguousarray(v[rows]) for k, v in feeds.items()}


def cast_to(arr: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """`arr` as `dtype` where the cast keeps its meaning, else None: float to float (rounding only;
    values must stay finite), integer to integer or integer to float where every value comes back
    unchanged, bool to integer. Never float to integer or anything to bool."""
    src, dst = arr.dtype, np.dtype(dtype)
    if np.issubdtype(src, np.floating) and np.issubdtype(dst, np.floating):
        with np.errstate(over="ignore"):
            out = arr.astype(dst)
        return out if np.isfinite(out).all() or not np.isfinite(arr).all() else None
    if (np.issubdtype(src, np.integer) or src == np.bool_) and (np.issubdtype(dst, np.integer)
                                                              or np.issubdtype(dst, np.floating)):
        out = arr.astype(dst)
        return out if np.array_equal(out.astype(src), arr) else None
    return None


def read_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz by name, or of an .npy (one array, named "arr_0" as np.savez names an
    unnamed one: it stands for a model's only input); ExitcError naming the file otherwise."""
    if not os.path.isfile(path):
        raise ExitcError(f"{path}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"arr_0": loaded}
        with loaded as npz:
            return {k: npz[k] for k in npz.files}
    except Exception:
        raise ExitcError(f"{path}: not a readable .npz (or, for a model with one input, .npy) file") from None


def file_layout(feeds: dict[str, np.ndarray], batch_axes: dict[str, int]) -> dict[str, np.ndarray]:
    """Rows-first feeds (a Dataset's) with each input's rows moved back to its axis in
    `batch_axes` (name -> axis, as load_dataset read them), contiguous: as the model file and the
    artifact take them."""
    if not batch_axes:
        return feeds
    return {k: np.ascontiguousarray(np.moveaxis(v, 0, batch_axes[k])) if batch_axes.get(k) else v
            for k, v in feeds.items()}


def load_dataset(path: str, inputs, label: str = "data", batch_axes: dict[str, int] | None = None) -> Dataset:
    """Load and validate `path` against the model inputs (a list of TensorInfo, rows first).
    `batch_axes` names inputs whose arrays hold their rows on another axis (as the model file
    takes them, e.g. 1 for [time, batch]); the Dataset holds every array rows first."""
    arrays = read_arrays(path)
    labels = arrays.pop(LABELS, None)
    names = [i.name for i in inputs]
    if len(inputs) == 1 and names[0] not in arrays:
        if len(arrays) != 1:
            raise ExitcError(f"{path}: missing input tensor {names[0]!r} (found {', '.join(sorted(arrays)) or 'none'})")
        arrays = {names[0]: next(iter(arrays.values()))}
    feeds, casts = {}, {}
    for info in inputs:
        if info.name not in arrays:
            raise ExitcError(f"{path}: missing input tensor {info.name!r} (found {', '.join(sorted(arrays)) or 'none'})")
        arr = arrays[info.name]
        rows_axis = (batch_axes or {}).get(info.name, 0)
        # what the file should hold, in the model file's layout (rows on rows_axis)
        expected = list(info.shape[1:])
        expected.insert(rows_axis, "rows")
        file_shape = list(arr.shape)
        if arr.ndim != info.rank:
            raise ExitcError(f"{path}: tensor {info.name!r} has shape {file_shape}, the model expects {expected}")
        arr = np.moveaxis(arr, rows_axis, 0) if rows_axis else arr
        if arr.dtype != info.dtype:
            cast = cast_to(arr, info.dtype)
            if cast is None:
                raise ExitcError(f"{path}: tensor {info.name!r} has dtype {arr.dtype}, the model expects {info.dtype}"
                                 " (and its values do not all convert unchanged)")
            casts[info.name] = f"{arr.dtype} -> {info.dtype}"
            arr = cast
        for axis, (got, want) in enumerate(zip(file_shape, expected)):
            if isinstance(want, int) and got != want:
                raise ExitcError(f"{path}: tensor {info.name!r} has shape {file_shape}, the model expects "
                                 f"{expected} (axis {axis})")
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
    return Dataset(feeds, labels, path, casts)


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
