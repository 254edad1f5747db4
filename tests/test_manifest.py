"""One artifact format, two readers: the Python reader (exitc.manifest, used by the reference
runtime, `exitc run/bench` and the Triton Python backend) and the C++ one (libexitc,
runtime/src/manifest.cpp) refuse the same broken manifests, each naming the file and the field
with the same words (the cases of runtime/tests/test_manifest.cpp and more)."""

import copy
import json
import shutil

import pytest

from exitc.errors import ExitcError
from exitc.manifest import read_manifest


@pytest.fixture(scope="module")
def tiny(tiny_artifacts):
    """The C++ tests' tiny artifact: 3 segments, 2 exits, a conditional form."""
    return tiny_artifacts / "tiny.exitc"


def _set(path, value):
    def edit(m):
        *parents, last = path
        node = m
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


def _drop(key):
    return lambda m: m.pop(key)


def _copy_exit(m):
    m["segments"][2]["exit"] = copy.deepcopy(m["segments"][1]["exit"])


CASES = [
    (_set(["format"], "onnx"), "not an exitc manifest"),  # Python stops here; C++: field 'format' must be "exitc"
    (_set(["schema_version"], "1"), "field 'schema_version' must be an integer, got string \"1\""),
    (_drop("segments"), "field 'segments' is missing"),
    (_set(["segments"], []), "field 'segments' must list at least one segment"),
    (_set(["inputs"], []), "field 'inputs' must list at least one input"),
    (_set(["segments", 0, "exit", "threshold"], "high"),
     "field 'segments[0].exit.threshold' must be a number, got string \"high\""),
    (_set(["segments", 0, "exit", "index"], 1.5), "field 'segments[0].exit.index' must be an integer"),
    (_set(["segments", 0, "exit", "logits"], 3), "field 'segments[0].exit.logits' must be a string, got number"),
    (_set(["inputs", 0, "dtype"], "complex64"), "field 'inputs[0].dtype' has unsupported dtype 'complex64'"),
    (_set(["inputs", 0, "batch_axis"], 5), "field 'inputs[0].batch_axis' is 5"),
    (_set(["inputs", 0, "shape", 1], -3), "field 'inputs[0].shape[1]' must be a non-negative integer"),
    (_set(["outputs", 0, "shape"], ["batch", -3]), "field 'outputs[0].shape[1]'"),
    (_set(["prediction_output"], "probs"), "field 'prediction_output' names 'probs'"),
    (_set(["prediction_kind"], "softmax"), "field 'prediction_kind' must be \"logits\""),
    (_set(["segments", 1, "inputs"], ["nope"]), "field 'segments[1].inputs[0]' names 'nope'"),
    (_set(["segments", 0, "exit"], None), "field 'segments[0].exit' is missing"),
    (_copy_exit, "field 'segments[2].exit' must be null"),
    (_set(["segments", 1, "index"], 7), "field 'segments[1].index' is 7, expected 1"),
    (_set(["segments", 0, "carry_out"], ["undeclared"]), "field 'segments[0].carry_out[0]' names 'undeclared'"),
    (_set(["segments", 2, "outputs"], ["other"]), "field 'segments[2].outputs'"),
    (_set(["conditional", "after_first_exit"], "yes"),
     "field 'conditional.after_first_exit' must be true or false, got string"),
    (_set(["calibration"], {"target_acc": 1.5}), "field 'calibration.target_acc' must be in [0, 1]"),
]


def _broken(tiny, tmp_path, edit):
    path = tmp_path / "broken.exitc"
    shutil.copytree(tiny, path)
    m = json.load(open(path / "manifest.json"))
    edit(m)
    json.dump(m, open(path / "manifest.json", "w"))
    return str(path)


def test_the_unbroken_artifact_reads(tiny):
    read_manifest(str(tiny))


@pytest.mark.parametrize("edit,needle", CASES, ids=[c[1][:48] for c in CASES])
def test_python_reader_names_the_field(tiny, tmp_path, edit, needle):
    path = _broken(tiny, tmp_path, edit)
    with pytest.raises(ExitcError) as info:
        read_manifest(path)
    assert needle in str(info.value) and "manifest.json" in str(info.value), str(info.value)


@pytest.mark.parametrize("edit,needle", CASES[1:], ids=[c[1][:48] for c in CASES[1:]])
def test_cpp_reader_says_the_same(tiny, tmp_path, edit, needle):
    runtime = pytest.importorskip("exitc._exitc_runtime", reason="C++ runtime not built in this installation")
    path = _broken(tiny, tmp_path, edit)
    with pytest.raises((ValueError, RuntimeError)) as info:
        runtime.load(path, 0, True, False)
    assert needle in str(info.value), str(info.value)
