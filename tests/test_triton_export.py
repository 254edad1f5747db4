"""exitc export-triton / backend-dir without a server: the written repository entry and the
one-line errors. (The server side is tests/test_triton.py.)"""

import os
import subprocess
import sys

import pytest

from exitc.errors import ExitcError
from exitc.triton import export_triton

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tiny_artifacts):
    return str(tiny_artifacts / "tiny.exitc"), str(tiny_artifacts / "side.exitc")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "exitc", *args], capture_output=True, text=True, cwd=ROOT)


def test_config_mirrors_the_manifest(tiny, tmp_path):
    d = export_triton(tiny[0], str(tmp_path), name="cls", max_batch_size=16, instances=2, mode="continuous")
    cfg = open(os.path.join(d, "config.pbtxt")).read()
    assert 'name: "cls"' in cfg and 'backend: "exitc"' in cfg and "max_batch_size: 16" in cfg
    assert '{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }' in cfg
    assert '{ name: "logits" data_type: TYPE_FP32 dims: [ 3 ] }' in cfg
    assert '{ name: "exitc_exit_index" data_type: TYPE_INT64 dims: [ 1 ] }' in cfg
    assert "dynamic_batching {" in cfg and "count: 2 kind: KIND_CPU" in cfg
    assert '{ key: "mode" value: { string_value: "continuous" } }' in cfg
    assert os.path.isfile(os.path.join(d, "1", "model.exitc", "manifest.json"))
    assert not os.path.exists(os.path.join(d, "1", "model.py"))


def test_python_backend_writes_model_py(tiny, tmp_path):
    d = export_triton(tiny[0], str(tmp_path), name="py", backend="python")
    cfg = open(os.path.join(d, "config.pbtxt")).read()
    assert 'backend: "python"' in cfg and "exitc_sys_path" in cfg and '"mode"' not in cfg
    src = open(os.path.join(d, "1", "model.py")).read()
    compile(src, "model.py", "exec")
    assert "class TritonPythonModel" in src and "exitc.load" in src


@pytest.mark.parametrize("backend", ["exitc", "python"])
def test_agreement_monitor_parameter_for_both_backends(tiny, tmp_path, backend):
    d = export_triton(tiny[0], str(tmp_path), name="mon", backend=backend, monitor_sample_rate=0.05)
    cfg = open(os.path.join(d, "config.pbtxt")).read()
    assert '{ key: "monitor_sample_rate" value: { string_value: "0.05" } }' in cfg
    d = export_triton(tiny[0], str(tmp_path), name="plain", backend=backend)
    assert "monitor_sample_rate" not in open(os.path.join(d, "config.pbtxt")).read()


@pytest.mark.parametrize("kwargs,needle", [
    ({"mode": "sideways"}, "--mode 'sideways'"),
    ({"backend": "tensorrt"}, "--backend 'tensorrt'"),
    ({"backend": "python", "mode": "continuous"}, "needs --backend exitc"),
    ({"max_batch_size": 0}, "--max-batch-size 0"),
    ({"instances": 0}, "--instances 0"),
    ({"monitor_sample_rate": 1.5, "backend": "python"}, "--monitor-sample-rate 1.5"),
])
def test_bad_options_are_one_line_errors(tiny, tmp_path, kwargs, needle):
    with pytest.raises(ExitcError, match=needle.replace("(", r"\(")):
        export_triton(tiny[0], str(tmp_path), **kwargs)


def test_batch_axis_other_than_0_is_refused(tiny, tmp_path):
    with pytest.raises(ExitcError, match="batched on axis 1; Triton batches on axis 0"):
        export_triton(tiny[1], str(tmp_path))  # side.exitc has input m with batch_axis 1


def test_cli_errors_without_traceback(tiny, tmp_path):
    r = cli("export-triton", str(tmp_path / "nope"), "--repo", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("exitc: error:") and "Traceback" not in r.stderr
    r = cli("export-triton", tiny[0], "--repo", str(tmp_path / "m"), "--name", "t")
    assert r.returncode == 0, r.stderr
    r = cli("export-triton", tiny[0], "--repo", str(tmp_path / "m"), "--name", "t")
    assert r.returncode == 2 and "exists (use --force" in r.stderr and "Traceback" not in r.stderr
    r = cli("backend-dir")
    assert (r.returncode == 0 and os.path.isfile(os.path.join(r.stdout.strip(), "exitc", "libtriton_exitc.so"))) or \
        (r.returncode == 2 and "libtriton_exitc.so not found" in r.stderr and "Traceback" not in r.stderr)
