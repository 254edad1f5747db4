"""Batch compaction: drop rows that exited, keep the rest densely packed, scatter results back.

These two functions are the whole contract the C++ runtime reproduces (runtime/src/compaction.cpp).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def compact_rows(tensors: Mapping[str, np.ndarray], keep: np.ndarray, batch_axes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Gather the rows where `keep` is True, in order, from every tensor (along its batch axis).

    Guarantees: output row i of every tensor is the i-th kept row; tensors stay contiguous.
    """
    idx = np.flatnonzero(keep)
    out = {}
    for name, t in tensors.items():
        axis = (batch_axes or {}).get(name, 0)
        out[name] = np.ascontiguousarray(np.take(t, idx, axis=axis))
    return out


def scatter_rows(dest: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """dest[rows[i]] = values[i] for every i (rows are request-order indices)."""
    dest[rows] = values
