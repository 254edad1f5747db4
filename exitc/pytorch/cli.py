"""What ``exitc compile FILE.py:NAME --calib calib.npz`` runs for a PyTorch module.

Holds: :func:`load_factory` (the nn.Module named in FILE.py:NAME) and :func:`compile_module_cli`
(the module compiled with the options the CLI builds for an ONNX file too, then saved).

Guarantees: every failure is one :class:`exitc.errors.ExitcError` naming the file, the name or the
option; an existing output directory is refused (without ``--force``) before anything is compiled.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from .. import emit
from ..errors import ExitcError
from ..options import CompileOptions
from .frontend import compile_with_options
from .inputs import examples_from_npz


def load_factory(spec: str) -> torch.nn.Module:
    """``"path/to/file.py:name"`` -> the nn.Module ``name`` (called with no arguments if it is a
    factory function or class). Raises ExitcError naming the file/name on any problem."""
    if ":" not in spec:
        raise ExitcError(f"{spec}: expected FILE.py:NAME")
    path, name = spec.rsplit(":", 1)
    if not os.path.isfile(path):
        raise ExitcError(f"{path}: no such file")
    mod_name = "exitc_user_" + os.path.splitext(os.path.basename(path))[0]
    s = importlib.util.spec_from_file_location(mod_name, path)
    mod = importlib.util.module_from_spec(s)
    try:
        s.loader.exec_module(mod)
    except Exception as exc:
        raise ExitcError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(mod, name):
        raise ExitcError(f"{path}: has no attribute {name!r}")
    obj = getattr(mod, name)
    if not isinstance(obj, torch.nn.Module):
        try:
            obj = obj()
        except Exception as exc:
            raise ExitcError(f"{spec}: calling it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, torch.nn.Module):
        raise ExitcError(f"{spec}: did not produce a torch.nn.Module (got {type(obj).__name__})")
    return obj


def compile_module_cli(spec: str, calib_path: str, out_dir: str, opts: CompileOptions,
                       example_shape: str | None = None, log=print) -> Any:
    """What ``exitc compile FILE.py:NAME --calib calib.npz`` runs, with the options the CLI builds
    for an ONNX file too. ``example_shape`` ("3,32,32" or "1,3,32,32") only checks the calibration
    arrays of a single-input module."""
    opts.validate()
    module = load_factory(spec)
    emit.check_destination(out_dir, opts.force)
    examples = examples_from_npz(module, calib_path)
    if example_shape:
        try:
            dims = [int(d) for d in example_shape.replace("x", ",").split(",") if d]
        except ValueError:
            raise ExitcError(f"--example-shape {example_shape!r}: expected sizes like 3,32,32") from None
        first = next(iter(examples.values()))
        if list(first.shape[1:]) != dims[-(first.ndim - 1):]:
            raise ExitcError(f"{calib_path}: rows have shape {list(first.shape[1:])}, --example-shape says {dims}")
    compiled = compile_with_options(module, examples, calib_path, opts, log=log)
    compiled.save(out_dir, force=opts.force)
    return compiled
