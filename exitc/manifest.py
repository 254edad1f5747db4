"""The artifact manifest (docs/artifact-format.md): building, reading and validating it."""

from __future__ import annotations

import json
import os

from .errors import ExitcError
from .predictions import KINDS, LOGITS

FORMAT = "exitc"
SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST = "manifest.json"


def tensor_entry(info) -> dict:
    return {"name": info.name, "dtype": str(info.dtype), "shape": list(info.shape), "batch_axis": info.batch_axis or 0}


def input_infos(manifest: dict):
    """The model inputs declared by a manifest, as TensorInfo (for loading .npz data against them)."""
    import numpy as np
    from onnx import helper

    from .passes.graph import TensorInfo

    return [TensorInfo(i["name"], helper.np_dtype_to_tensor_dtype(np.dtype(i["dtype"])), i["shape"])
            for i in manifest["inputs"]]


def read_manifest(path: str) -> dict:
    """Read and validate `path/manifest.json`; errors name the file and the field."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise ExitcError(f"{path}: not a compiled model directory")
    if not os.path.isfile(mpath):
        raise ExitcError(f"{mpath}: missing (not a compiled exitc model)")
    try:
        with open(mpath) as f:
            m = json.load(f)
    except (OSError, ValueError) as exc:
        raise ExitcError(f"{mpath}: not valid JSON ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ExitcError(f"{mpath}: not an exitc manifest (field 'format' must be {FORMAT!r})")
    version = m.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise ExitcError(f"{mpath}: schema_version {version!r} is not supported (this exitc reads {list(SUPPORTED_VERSIONS)})")
    for key, kind in (("inputs", list), ("outputs", list), ("segments", list), ("carried", list),
                      ("prediction_output", str), ("num_classes", int)):
        if not isinstance(m.get(key), kind):
            raise ExitcError(f"{mpath}: field {key!r} is missing or not a {kind.__name__}")
    if m["prediction_output"] not in [o.get("name") for o in m["outputs"]]:
        raise ExitcError(f"{mpath}: field 'prediction_output' names {m['prediction_output']!r}, which is not among 'outputs'")
    if m.get("prediction_kind", LOGITS) not in KINDS:
        raise ExitcError(f"{mpath}: field 'prediction_kind' must be one of {', '.join(KINDS)}, got {m['prediction_kind']!r}")
    if not m["segments"]:
        raise ExitcError(f"{mpath}: field 'segments' is empty")
    for i, seg in enumerate(m["segments"]):
        for key in ("file", "inputs", "carry_out"):
            if key not in seg:
                raise ExitcError(f"{mpath}: segments[{i}] lacks field {key!r}")
        f = os.path.join(path, seg["file"])
        if not os.path.isfile(f):
            raise ExitcError(f"{f}: segment file missing")
        ex = seg.get("exit")
        last = i == len(m["segments"]) - 1
        if last and ex is not None:
            raise ExitcError(f"{mpath}: the last segment cannot have an exit")
        if not last:
            if not isinstance(ex, dict) or not all(k in ex for k in ("logits", "score", "threshold", "index")):
                raise ExitcError(f"{mpath}: segments[{i}].exit needs logits, score, threshold and index")
    cond = m.get("conditional")
    if cond is not None and not os.path.isfile(os.path.join(path, cond.get("file", ""))):
        raise ExitcError(f"{os.path.join(path, cond.get('file', ''))}: conditional model file missing")
    return m
