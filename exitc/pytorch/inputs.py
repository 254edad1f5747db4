"""Inputs and calibration data of a PyTorch module.

Holds: the forward's arguments (:func:`forward_params`), example inputs bound to their names
(:func:`bind_inputs`, :func:`examples_from_npz`), calibration data in any accepted form normalised
to an :class:`exitc.data.Dataset` (:func:`to_dataset`), and numpy feeds as tensors (``_torch_feeds``).

Guarantees: every array is keyed by the forward's argument name; calibration arrays are checked
against the example inputs (rank, non-batch dims, dtype kind) and cast to their dtype; bad input
is an :class:`exitc.errors.ExitcError` naming the input or the file. Imports no other module of
:mod:`exitc.pytorch`.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import torch

from ..data import LABELS, Dataset, read_arrays
from ..errors import ExitcError

LABEL_KEYS = ("labels", "label", "targets", "target", "y")


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def forward_params(module: torch.nn.Module) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def bind_inputs(module: torch.nn.Module, example_inputs) -> dict[str, np.ndarray]:
    """Example inputs (a tensor, a tuple of positional tensors or a dict by argument name) as
    numpy arrays keyed by the forward's argument names. Raises ExitcError on a mismatch."""
    params = [p.name for p in forward_params(module)]
    if isinstance(example_inputs, dict):
        unknown = [k for k in example_inputs if k not in params]
        if unknown:
            raise ExitcError(f"{type(module).__name__}.forward has no argument {unknown[0]!r} (arguments: {params})")
        return {k: _to_numpy(example_inputs[k]) for k in params if k in example_inputs}
    if isinstance(example_inputs, (torch.Tensor, np.ndarray)):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if len(example_inputs) > len(params):
        raise ExitcError(f"{type(module).__name__}.forward takes {len(params)} inputs, got {len(example_inputs)}")
    return {name: _to_numpy(v) for name, v in zip(params, example_inputs)}


def _item_to_feeds(item, names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    if isinstance(item, dict):
        missing = [n for n in names if n not in item]
        if missing:
            raise ExitcError(f"calibration batch lacks input {missing[0]!r} (keys: {sorted(item)})")
        labels = next((item[k] for k in LABEL_KEYS if k in item and k not in names), None)
        return {n: _to_numpy(item[n]) for n in names}, None if labels is None else _to_numpy(labels)
    if isinstance(item, (torch.Tensor, np.ndarray)):
        item = (item,)
    item = tuple(item)
    if len(item) < len(names):
        raise ExitcError(f"calibration batch has {len(item)} tensors, the model takes {len(names)} ({names})")
    labels = _to_numpy(item[len(names)]) if len(item) > len(names) else None  # e.g. (x, y) from a DataLoader
    return {n: _to_numpy(v) for n, v in zip(names, item)}, labels


def to_dataset(calib, examples: dict[str, np.ndarray], label: str = "calibration data") -> Dataset:
    """Normalise calibration data to an :class:`exitc.data.Dataset` keyed by input name.

    Accepted: a path to an .npz (arrays named after the inputs) or, for one input, an .npy; a
    numpy array (single input); a tuple of arrays (positional inputs, optional trailing labels) or
    a dict of arrays (whole data set); or any iterable (a DataLoader, a list) of batches or single rows, each a tensor/array, a
    tuple/list (positional; one extra element is taken as labels) or a dict (by input name).
    Arrays are checked against the example inputs (rank, non-batch dims, dtype kind) and cast to
    their dtype; a row without the batch dim is accepted.
    """
    names = list(examples)
    if isinstance(calib, (str, os.PathLike)):
        arrays = read_arrays(str(calib))
        labels = arrays.pop(LABELS, None)
        if len(names) == 1 and names[0] not in arrays and len(arrays) == 1:
            arrays = {names[0]: next(iter(arrays.values()))}
        parts = [(_item_to_feeds(arrays, names)[0], labels)]
        label = str(calib)
    elif isinstance(calib, np.ndarray) or (isinstance(calib, tuple) and all(isinstance(a, np.ndarray) for a in calib)):
        parts = [_item_to_feeds(calib, names)]
    elif isinstance(calib, dict):
        parts = [_item_to_feeds(calib, names)]
    else:
        try:
            parts = [_item_to_feeds(item, names) for item in calib]
        except TypeError:
            raise ExitcError(f"calibration data of type {type(calib).__name__} is not supported "
                             "(DataLoader, iterable of tensors/tuples/dicts, numpy arrays or an .npz path)") from None
    if not parts:
        raise ExitcError(f"{label}: no rows")
    feeds: dict[str, np.ndarray] = {}
    for n in names:
        ex = examples[n]
        chunks = []
        for f, _ in parts:
            a = f[n]
            if a.ndim == ex.ndim - 1:
                a = a[None]
            if a.ndim != ex.ndim or a.shape[1:] != ex.shape[1:]:
                # [time, rows, ...] beside an example [time, 2, ...]: a batch_first=False module
                hint = ("; if its rows are on axis 1 (time-major), the PyTorch front end does not take it: use "
                        "batch_first=True, or export with torch.onnx and compile the .onnx file (exitc compile takes "
                        "[time, batch, ...] inputs)"
                        if a.ndim == ex.ndim >= 2 and a.shape[0] == ex.shape[0] and a.shape[2:] == ex.shape[2:] else "")
                raise ExitcError(f"{label}: input {n!r} has shape {list(a.shape)}, the example input has "
                                 f"{['rows'] + list(ex.shape[1:])}{hint}")
            if np.dtype(a.dtype).kind != np.dtype(ex.dtype).kind and not (a.dtype.kind in "iub" and ex.dtype.kind in "iub"):
                raise ExitcError(f"{label}: input {n!r} has dtype {a.dtype}, the example input has {ex.dtype}")
            chunks.append(a.astype(ex.dtype, copy=False))
        feeds[n] = np.ascontiguousarray(np.concatenate(chunks))
    labels = None
    if all(lab is not None for _, lab in parts):
        labels = np.concatenate([np.atleast_1d(lab) for _, lab in parts]).astype(np.int64)
        if len(labels) != len(feeds[names[0]]):
            labels = None
    rows = {len(a) for a in feeds.values()}
    if len(rows) != 1:
        raise ExitcError(f"{label}: inputs have different row counts {sorted(rows)}")
    return Dataset(feeds, labels, label)


def _torch_feeds(feeds: dict[str, np.ndarray], sl=slice(None)) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v[sl])) for k, v in feeds.items()}


def examples_from_npz(module: torch.nn.Module, path) -> dict[str, np.ndarray]:
    """Two rows of each forward argument found in an .npz (a single array stands for the first
    argument whatever its name); ExitcError naming the file if it cannot be read."""
    arrays = {k: v[:2] for k, v in read_arrays(str(path)).items() if k != LABELS}
    params = [p.name for p in forward_params(module)]
    if len(arrays) == 1 and params and params[0] not in arrays:
        arrays = {params[0]: next(iter(arrays.values()))}
    examples = {p: arrays[p] for p in params if p in arrays}
    if not examples:
        raise ExitcError(f"{path}: no array named after an argument of {type(module).__name__}.forward {params}")
    return examples
