"""CLI end to end on synthetic models, and every bad input the issue lists: one line, exit != 0,
no traceback, no output directory."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from synthetic import tiny_cnn, tiny_transformer, transformer_feeds


def exitc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "exitc", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("cnn")
    onnx.save(tiny_cnn(blocks=4), d / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "calib.npz", x=rng.standard_normal((1400, 3, 16, 16)).astype(np.float32))
    np.savez(d / "test.npz", x=rng.standard_normal((200, 3, 16, 16)).astype(np.float32),
             labels=rng.integers(0, 5, 200))
    return d


def assert_clean_error(res, *needles, out=None):
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("exitc: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    if out is not None:
        assert not os.path.exists(out)
        assert not [p for p in os.listdir(os.path.dirname(out)) if p.startswith("." + os.path.basename(out))]


def test_compile_bench_run_inspect(cnn, tmp_path):
    out = tmp_path / "m.exitc"
    res = exitc("compile", str(cnn / "model.onnx"), "--calib", str(cnn / "calib.npz"), "--target-acc", "0.95",
                "-o", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "agreement bound" in res.stdout and "report:" in res.stdout
    for f in ("manifest.json", "report.json", "report.html", "plots/exits.png", "segments/seg_0.onnx"):
        assert (out / f).exists(), f
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["schema_version"] == 1 and manifest["calibration"]["agreement_bound"] >= 0.95
    bj = tmp_path / "bench.json"
    res = exitc("bench", str(out), "--data", str(cnn / "test.npz"), "--rounds", "1", "--latency-rows", "20",
                "--json", str(bj), "--quiet", "--engine", "python")
    assert res.returncode == 0, res.stderr
    b = json.load(open(bj))
    for key in ("agreement", "agreement_bound", "accuracy_original", "accuracy_exitc", "exit_fractions",
                "throughput_original", "throughput_exitc", "speedup_throughput", "latency_p50_ms_original",
                "latency_p99_ms_original", "latency_p50_ms_exitc", "latency_p99_ms_exitc", "speedup_latency_p50"):
        assert key in b, key
    assert abs(sum(b["exit_fractions"]) - 1) < 1e-9
    y = tmp_path / "y.npz"
    res = exitc("run", str(out), "--input", str(cnn / "test.npz"), "-o", str(y), "--engine", "python")
    assert res.returncode == 0, res.stderr
    with np.load(y) as z:
        assert z["logits"].shape == (200, 5) and z["exitc_exit_index"].shape == (200,)
    res = exitc("inspect", str(cnn / "model.onnx"))
    assert res.returncode == 0 and "measured share" in res.stdout
    # existing output without --force
    assert_clean_error(exitc("compile", str(cnn / "model.onnx"), "--calib", str(cnn / "calib.npz"), "-o", str(out)),
                       "already exists", "--force")
    # bench: options out of range, and an --original that is another model
    for flag, value in (("--batch-size", "0"), ("--rounds", "0"), ("--latency-rows", "-1")):
        assert_clean_error(exitc("bench", str(out), "--data", str(cnn / "test.npz"), flag, value, "--json",
                                 str(tmp_path / "b2.json")), f"{flag} {value}: must be at least 1",
                           out=str(tmp_path / "b2.json"))
    other = tmp_path / "other.onnx"
    onnx.save(tiny_transformer(), other)
    assert_clean_error(exitc("bench", str(out), "--data", str(cnn / "test.npz"), "--original", str(other)),
                       "other.onnx: takes inputs attention_mask, input_ids", "the compiled model takes x")


def test_transformer_two_tensor_carry_compiles(tmp_path):
    onnx.save(tiny_transformer(carry_mask=True), tmp_path / "t.onnx")
    np.savez(tmp_path / "calib.npz", **transformer_feeds(1400, seed=1))
    out = tmp_path / "t.exitc"
    res = exitc("compile", str(tmp_path / "t.onnx"), "--calib", str(tmp_path / "calib.npz"), "--target-acc", "0.9",
                "-o", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    m = json.load(open(out / "manifest.json"))
    if len(m["segments"]) > 1:
        assert "ext" in [c["name"] for c in m["carried"]]


def test_not_onnx(tmp_path, cnn):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    assert_clean_error(exitc("compile", str(bad), "--calib", str(cnn / "calib.npz"), "-o", str(tmp_path / "o")),
                       str(bad), "not an ONNX model", out=str(tmp_path / "o"))


def test_weights_in_an_external_data_file(tmp_path, cnn):
    """Models saved with their weights beside them (torch.onnx's default `model.onnx.data`) load
    whole; a missing or short weights file is named in one line (it is an ONNX model, so "not an
    ONNX model" would mislead)."""
    from exitc.passes.normalize import load_model

    inline = onnx.load(cnn / "model.onnx")
    want = {t.name: onnx.numpy_helper.to_array(t) for t in inline.graph.initializer}
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(inline, d / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    assert os.path.getsize(d / "model.onnx") < os.path.getsize(cnn / "model.onnx") / 4  # weights are outside
    loaded = load_model(str(d / "model.onnx"))
    got = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    res = exitc("inspect", str(d / "model.onnx"))
    assert res.returncode == 0 and "measured share" in res.stdout, res.stderr
    data = (d / "model.onnx.data").read_bytes()
    (d / "model.onnx.data").write_bytes(data[: len(data) // 2])
    assert_clean_error(exitc("compile", str(d / "model.onnx"), "--calib", str(cnn / "calib.npz"), "-o",
                             str(tmp_path / "o")), "external weights could not be read", out=str(tmp_path / "o"))
    os.remove(d / "model.onnx.data")
    assert_clean_error(exitc("compile", str(d / "model.onnx"), "--calib", str(cnn / "calib.npz"), "-o",
                             str(tmp_path / "o")), str(d / "model.onnx"), "'model.onnx.data'", "not found",
                       out=str(tmp_path / "o"))


def test_no_classification_output(tmp_path, cnn):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    assert_clean_error(exitc("compile", str(tmp_path / "m.onnx"), "--calib", str(cnn / "calib.npz"), "-o",
                             str(tmp_path / "o")), "classification output", out=str(tmp_path / "o"))


@pytest.mark.parametrize("case,needles", [
    ("missing", ["missing input tensor 'x'"]),
    ("dtype", ["'x'", "dtype <U3", "float32"]),
    ("overflow", ["'x'", "dtype float64", "do not all convert"]),
    ("shape", ["'x'", "shape"]),
    ("nan", ["'x'", "NaN or Inf"]),
    ("few", ["needs at least", "certification", "these rows allow --target-acc 0.98 at most"]),
    ("repeated", ["1400 calibration rows but only 200 distinct", "needs at least", "distinct rows",
                  "--target-acc 0.97 at most"]),
])
def test_bad_calibration_data(tmp_path, cnn, case, needles):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1400, 3, 16, 16)).astype(np.float32)
    arrays = {"missing": {"a": x, "b": x}, "dtype": {"x": np.full(x.shape, "abc")},
              "overflow": {"x": np.where(rng.random(x.shape) < 1e-4, 1e300, x.astype(np.float64))},
              "shape": {"x": x[:, :, :8, :8]}, "nan": {"x": np.where(rng.random(x.shape) < 1e-4, np.nan, x)},
              "few": {"x": x[:300]}, "repeated": {"x": np.tile(x[:200], (7, 1, 1, 1))}}[case]
    np.savez(tmp_path / "c.npz", **arrays)
    assert_clean_error(exitc("compile", str(cnn / "model.onnx"), "--calib", str(tmp_path / "c.npz"), "-o",
                             str(tmp_path / "o")), *needles, out=str(tmp_path / "o"))


def test_example_shape_is_for_modules_only(tmp_path, cnn):
    assert_clean_error(exitc("compile", str(cnn / "model.onnx"), "--calib", str(cnn / "calib.npz"),
                             "--example-shape", "3,16,16", "-o", str(tmp_path / "o")),
                       "--example-shape 3,16,16: only for a PyTorch module", out=str(tmp_path / "o"))


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_target_out_of_range(tmp_path, cnn, value):
    assert_clean_error(exitc("compile", str(cnn / "model.onnx"), "--calib", str(cnn / "calib.npz"),
                             f"--target-acc={value}", "-o", str(tmp_path / "o")), "--target-acc", "(0, 1]",
                       out=str(tmp_path / "o"))


def test_negative_seed(tmp_path, cnn):
    assert_clean_error(exitc("compile", str(cnn / "model.onnx"), "--calib", str(cnn / "calib.npz"), "--seed=-1",
                             "-o", str(tmp_path / "o")), "--seed -1", ">= 0", out=str(tmp_path / "o"))


def test_op_onnxruntime_cannot_run(tmp_path, cnn):
    g = helper.make_graph([helper.make_node("FancyOp", ["x"], ["h"], domain="com.example"),
                           helper.make_node("Flatten", ["h"], ["logits"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 768])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(m, tmp_path / "m.onnx")
    assert_clean_error(exitc("compile", str(tmp_path / "m.onnx"), "--calib", str(cnn / "calib.npz"), "-o",
                             str(tmp_path / "o")), "FancyOp", out=str(tmp_path / "o"))


def test_target_one_emits_the_original(tmp_path, cnn):
    out = tmp_path / "one.exitc"
    res = exitc("compile", str(cnn / "model.onnx"), "--calib", str(cnn / "calib.npz"), "--target-acc", "1",
                "-o", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    m = json.load(open(out / "manifest.json"))
    assert len(m["segments"]) == 1 and m["conditional"] is None


def test_version_and_defaults_in_help():
    from exitc import __version__

    res = exitc("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"exitc {__version__}"
    res = exitc("compile", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    for default in ("(default: 0.99)", "(default: 0.95)", "(default: 0.5)", "(default: 4000)", "(default: 0.25)",
                    "(default: linear,mlp)", "(default: 0)"):
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text
    # every subcommand shows its numeric defaults too
    for command, defaults in (("bench", ("(default: 32)", "(default: 3)", "(default: 300)", "(default: auto)")),
                              ("run", ("(default: 32)", "(default: auto)")), ("inspect", ("(default: 32)",))):
        res = exitc(command, "--help")
        text = " ".join(res.stdout.split())
        assert res.returncode == 0 and "(default: None)" not in text, command
        for default in defaults:
            assert default in text, (command, default)


# Each pipeline stage, made to fail with an unexpected error (a bug): one line naming the stage,
# the traceback in a log file, exit status 3, no output directory.
STAGE_FAULTS = {
    "load": "exitc.driver.observe_shapes",
    "candidates": "exitc.driver.find_candidates",
    "features": "exitc.analysis.FeatureProbe",
    "augment": "exitc.augment.make_neighbours",
    "distill": "exitc.analysis.distill_heads",
    "profile": "exitc.analysis.profile_costs",
    "policy": "exitc.analysis.policy_stage",
    "emit": "exitc.emit.stage",
    "verify": "exitc.verify.check_exact",
    "report": "exitc.report.write_reports",
}


@pytest.mark.parametrize("where", list(STAGE_FAULTS))
def test_internal_error_in_each_stage_is_one_line_and_a_log(where, cnn, tmp_path, monkeypatch, capsys):
    from exitc import cli

    def boom(*args, **kwargs):
        raise RuntimeError(f"injected fault\nsecond line of {where}")

    monkeypatch.setattr(STAGE_FAULTS[where], boom)
    monkeypatch.setenv("EXITC_LOG_DIR", str(tmp_path / "logs"))
    out = tmp_path / "o.exitc"
    code = cli.main(["compile", str(cnn / "model.onnx"), "--calib", str(cnn / "calib.npz"), "--target-acc", "0.95",
                     "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 3 and len(lines) == 1, err
    assert lines[0].startswith(f"exitc: internal error in {where}: RuntimeError: injected fault; details in "), lines[0]
    log = lines[0].rsplit("details in ", 1)[1]
    assert log.startswith(str(tmp_path / "logs")) and "Traceback" in open(log).read()
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".o.exitc")]


def test_debug_shows_the_traceback(cnn, tmp_path, monkeypatch):
    from exitc import cli

    monkeypatch.setattr("exitc.driver.find_candidates", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["compile", str(cnn / "model.onnx"), "--calib", str(cnn / "calib.npz"), "-o", str(tmp_path / "o"),
                  "--quiet", "--debug"])


def test_run_and_bench_outputs_are_never_half_written(cnn, tmp_path):
    """A failing `exitc run` leaves no output file (written to a temporary name, renamed at the end)."""
    res = exitc("run", str(tmp_path / "missing.exitc"), "--input", str(cnn / "test.npz"), "-o", str(tmp_path / "y.npz"))
    assert_clean_error(res, "missing.exitc")
    assert not os.listdir(tmp_path)


def test_npy_for_a_one_input_model(tmp_path, cnn):
    """A model with one input takes its rows from an .npy as well as an .npz (exitc run and bench
    read data the same way)."""
    from exitc.data import load_dataset
    from exitc.passes.normalize import load_model, prepare

    x = np.load(cnn / "calib.npz")["x"]
    np.save(tmp_path / "calib.npy", x)
    _, sig = prepare(load_model(str(cnn / "model.onnx")))
    data = load_dataset(str(tmp_path / "calib.npy"), sig.inputs)
    assert np.array_equal(data.feeds["x"], x) and data.labels is None
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    assert_clean_error(exitc("compile", str(cnn / "model.onnx"), "--calib", str(tmp_path / "junk.npy"), "-o",
                             str(tmp_path / "o")), "junk.npy", "not a readable .npz", out=str(tmp_path / "o"))
