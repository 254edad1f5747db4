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


def input_entry(info, batch_axis: int = 0) -> dict:
    """A graph input of the artifact, from its rows-first TensorInfo: in the model file's layout,
    rows on `batch_axis` (passes.normalize.rows_first_inputs moved them to 0)."""
    shape = list(info.shape)
    shape.insert(batch_axis, shape.pop(0))
    return {"name": info.name, "dtype": str(info.dtype), "shape": shape, "batch_axis": batch_axis}


def input_batch_axes(manifest: dict) -> dict[str, int]:
    """Inputs the artifact takes with their rows on another axis than 0 (name -> that axis)."""
    return {i["name"]: int(i["batch_axis"]) for i in manifest["inputs"] if i.get("batch_axis", 0)}


def input_infos(manifest: dict):
    """The model inputs declared by a manifest, as TensorInfo with their rows first (for loading
    .npz data against them with input_batch_axes; exitc.data.file_layout gives feeds back the
    declared layout)."""
    import numpy as np
    from onnx import helper

    from .passes.graph import TensorInfo

    def rows_first(i):
        shape = list(i["shape"])
        shape.insert(0, shape.pop(int(i.get("batch_axis", 0))))
        return shape

    return [TensorInfo(i["name"], helper.np_dtype_to_tensor_dtype(np.dtype(i["dtype"])), rows_first(i))
            for i in manifest["inputs"]]


DTYPES = ("float32", "float16", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
          "uint32", "uint64", "bool")
MAX_RANK = 8


class _Fields:
    """Field checks with the C++ reader's messages (runtime/src/manifest.cpp): every error names
    the manifest file and the field's JSON path, and both readers refuse the same manifests
    (tests/test_manifest.py runs one set of broken manifests through both)."""

    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, path: str, what: str):
        raise ExitcError(f"{self.origin}: field '{path}' {what}")

    @staticmethod
    def join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    @staticmethod
    def describe(v) -> str:
        dumped = json.dumps(v)
        return f"{_json_type(v)} {dumped[:40] + '...' if len(dumped) > 40 else dumped}"

    def member(self, obj: dict, path: str, key: str):
        if key not in obj:
            self.fail(self.join(path, key), "is missing")
        return obj[key]

    def string(self, obj: dict, path: str, key: str) -> str:
        v = self.member(obj, path, key)
        if not isinstance(v, str):
            self.fail(self.join(path, key), f"must be a string, got {_json_type(v)}")
        return v

    def optional_string(self, obj: dict, path: str, key: str) -> str | None:
        v = obj.get(key)
        if v is not None and not isinstance(v, str):
            self.fail(self.join(path, key), f"must be a string, got {_json_type(v)}")
        return v

    def integer(self, obj: dict, path: str, key: str) -> int:
        v = self.member(obj, path, key)
        if not _is_int(v):
            self.fail(self.join(path, key), f"must be an integer, got {self.describe(v)}")
        return v

    def number(self, obj: dict, path: str, key: str) -> float:
        v = self.member(obj, path, key)
        if not (_is_int(v) or isinstance(v, float)):
            self.fail(self.join(path, key), f"must be a number, got {self.describe(v)}")
        return float(v)

    def array(self, obj: dict, path: str, key: str) -> list:
        v = self.member(obj, path, key)
        if not isinstance(v, list):
            self.fail(self.join(path, key), f"must be an array, got {_json_type(v)}")
        return v

    def string_list(self, obj: dict, path: str, key: str) -> list[str]:
        arr = self.array(obj, path, key)
        for i, v in enumerate(arr):
            if not isinstance(v, str):
                self.fail(f"{self.join(path, key)}[{i}]", "must be a string")
        return arr

    def indexed_object(self, obj, path: str, expected: int, what: str = "an object") -> None:
        """`obj` is `what` (an object) whose 'index' field is `expected` (a segment, its exit)."""
        if not isinstance(obj, dict):
            self.fail(path, f"must be {what}")
        index = self.integer(obj, path, "index")
        if index != expected:
            self.fail(f"{path}.index", f"is {index}, expected {expected}")

    def tensor_spec(self, obj, path: str) -> None:
        if not isinstance(obj, dict):
            self.fail(path, "must be an object")
        self.string(obj, path, "name")
        dtype = self.string(obj, path, "dtype")
        if dtype not in DTYPES:
            self.fail(self.join(path, "dtype"), f"has unsupported dtype '{dtype}'")
        shape = self.array(obj, path, "shape")
        for i, d in enumerate(shape):
            if not ((_is_int(d) and d >= 0) or isinstance(d, str) or d is None):
                self.fail(f"{self.join(path, 'shape')}[{i}]", "must be a non-negative integer, a name or null")
        if len(shape) > MAX_RANK:
            self.fail(self.join(path, "shape"), f"has rank above the supported maximum {MAX_RANK}")
        axis = obj.get("batch_axis", 0)
        if not _is_int(axis):
            self.fail(self.join(path, "batch_axis"), "must be an integer")
        if not 0 <= axis < len(shape):
            self.fail(self.join(path, "batch_axis"), f"is {axis}, outside the tensor's rank {len(shape)}")

    def tensor_specs(self, obj: dict, path: str, key: str) -> list[dict]:
        arr = self.array(obj, path, key)
        for i, spec in enumerate(arr):
            self.tensor_spec(spec, f"{self.join(path, key)}[{i}]")
        return arr


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _json_type(v) -> str:
    """nlohmann::json's type_name() for a parsed value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(v), type(v).__name__)


def _validate_fields(m: dict, origin: str) -> None:
    """The checks of the C++ reader (Manifest::parse) after the root and 'format' (read_manifest
    checks those first: a JSON file that is not an exitc manifest is said to be that), in its
    order, with its messages."""
    r = _Fields(origin)
    version = r.member(m, "", "schema_version")
    if not _is_int(version):
        r.fail("schema_version", f"must be an integer, got {r.describe(version)}")
    if version not in SUPPORTED_VERSIONS:
        raise ExitcError(f"{origin}: schema_version {version!r} is not supported (this exitc reads {list(SUPPORTED_VERSIONS)})")
    r.optional_string(m, "", "exitc_version")
    r.optional_string(m, "", "backend")
    inputs = r.tensor_specs(m, "", "inputs")
    outputs = r.tensor_specs(m, "", "outputs")
    if not inputs:
        r.fail("inputs", "must list at least one input")
    if not outputs:
        r.fail("outputs", "must list at least one output")
    prediction = r.string(m, "", "prediction_output")
    kind = r.optional_string(m, "", "prediction_kind") or LOGITS
    if kind not in KINDS:
        r.fail("prediction_kind", f'must be "logits", "probabilities" or "log_probabilities", got "{kind}"')
    carried = r.tensor_specs(m, "", "carried") if m.get("carried") is not None else []
    graph_inputs: set[str] = set()
    for i, spec in enumerate(inputs):
        if spec["name"] in graph_inputs:
            r.fail(f"inputs[{i}].name", f"repeats the input '{spec['name']}'")
        graph_inputs.add(spec["name"])
    output_names: set[str] = set()
    for i, spec in enumerate(outputs):
        if spec["name"] in output_names:
            r.fail(f"outputs[{i}].name", f"repeats the output '{spec['name']}'")
        output_names.add(spec["name"])
    carried_names: set[str] = set()
    for i, spec in enumerate(carried):
        if spec["name"] in graph_inputs or spec["name"] in carried_names:
            r.fail(f"carried[{i}].name", f"repeats the name '{spec['name']}'")
        carried_names.add(spec["name"])
    if prediction not in output_names:
        r.fail("prediction_output", f"names '{prediction}', which is not among 'outputs'")
    segments = r.array(m, "", "segments")
    if not segments:
        r.fail("segments", "must list at least one segment")
    available = set(graph_inputs)
    exits = 0
    for s, seg in enumerate(segments):
        path = f"segments[{s}]"
        r.indexed_object(seg, path, s)
        if not r.string(seg, path, "file"):
            r.fail(f"{path}.file", "is empty")
        for i, name in enumerate(r.string_list(seg, path, "inputs")):
            if name not in available:
                r.fail(f"{path}.inputs[{i}]",
                       f"names '{name}', which is neither a graph input nor carried by an earlier segment")
        carry = r.string_list(seg, path, "carry_out") if seg.get("carry_out") is not None else []
        for i, name in enumerate(carry):
            if name not in carried_names:
                r.fail(f"{path}.carry_out[{i}]", f"names '{name}', which is not declared in 'carried'")
            available.add(name)
        last = s + 1 == len(segments)
        ex = seg.get("exit")
        if last and ex is not None:
            r.fail(f"{path}.exit", "must be null for the last segment")
        if not last and ex is None:
            r.fail(f"{path}.exit", "is missing; every segment but the last has an exit")
        if ex is not None:
            epath = f"{path}.exit"
            r.indexed_object(ex, epath, s, "an object or null")
            r.string(ex, epath, "logits")
            r.string(ex, epath, "score")
            r.number(ex, epath, "threshold")
            r.optional_string(ex, epath, "candidate")
            exits += 1
        if last and r.string_list(seg, path, "outputs") != [o["name"] for o in outputs]:
            r.fail(f"{path}.outputs", "must list the model's outputs in manifest order")
    cond = m.get("conditional")
    if cond is not None:
        if not isinstance(cond, dict):
            r.fail("conditional", "must be an object or null")
        r.string(cond, "conditional", "file")
        first = cond.get("after_first_exit")
        if first is not None and not isinstance(first, bool):
            r.fail("conditional.after_first_exit", f"must be true or false, got {_json_type(first)}")
        if first and exits == 0:
            r.fail("conditional.after_first_exit", "is true but the model has no exit")
    seq = m.get("sequence")
    if seq is not None:
        if not isinstance(seq, dict):
            r.fail("sequence", "must be an object or null")
        axis = r.integer(seq, "sequence", "axis")
        names = r.string_list(seq, "sequence", "inputs")
        mask = r.string(seq, "sequence", "mask")
        length = r.integer(seq, "sequence", "length")
        call_rows = r.number(seq, "sequence", "call_rows")
        if axis != 1:
            r.fail("sequence.axis", f"is {axis}; this runtime supports 1")
        if length < 1:
            r.fail("sequence.length", "must be >= 1")
        if not call_rows >= 0:
            r.fail("sequence.call_rows", "must be >= 0")
        if mask not in names:
            r.fail("sequence.mask", f"'{mask}' is not one of sequence.inputs")
        by_name = {spec["name"]: spec for spec in inputs}
        for i, name in enumerate(names):
            spec = by_name.get(name)
            if spec is None:
                r.fail(f"sequence.inputs[{i}]", f"'{name}' is not a model input")
            dim = spec["shape"][1] if len(spec["shape"]) >= 2 else None
            if spec.get("batch_axis", 0) != 0 or len(spec["shape"]) < 2 or (_is_int(dim) and dim != length):
                r.fail(f"sequence.inputs[{i}]",
                       f"'{name}' must be batch-major with sequence.length (or an open length) on axis 1")
    cal = m.get("calibration")
    if cal is not None:
        if not isinstance(cal, dict):
            r.fail("calibration", "must be an object or null")
        target = r.number(cal, "calibration", "target_acc") if "target_acc" in cal else 0.0
        confidence = r.number(cal, "calibration", "confidence") if "confidence" in cal else 0.95
        if not 0.0 <= target <= 1.0:
            r.fail("calibration.target_acc", "must be in [0, 1]")
        if not 0.0 < confidence < 1.0:
            r.fail("calibration.confidence", "must be in (0, 1)")


def read_manifest(path: str) -> dict:
    """Read and validate `path/manifest.json` (_validate_fields) and check that the files it
    names exist; errors name the file and the field."""
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
    _validate_fields(m, mpath)
    for i, seg in enumerate(m["segments"]):
        f = os.path.join(path, seg["file"])
        if not os.path.isfile(f):
            raise ExitcError(f"{f}: segment file missing (field 'segments[{i}].file')")
    cond = m.get("conditional")
    if cond is not None and not os.path.isfile(os.path.join(path, cond["file"])):
        raise ExitcError(f"{os.path.join(path, cond['file'])}: conditional model file missing")
    return m
