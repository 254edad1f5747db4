"""exitc on a real Triton Inference Server (the tritonserver 2.51 bundled in nvidia-pytriton, CPU).

One server on 127.0.0.1 (free ports, temp model repository) serves the same artifacts through the
C++ backend in plain and continuous mode and through the Python backend; tritonclient (HTTP and
gRPC) talks to it. Checked: READY, outputs equal to exitc.load's (exit index exactly, logits within
float tolerance: rows share batches of other compositions), batch sizes 1..max, concurrent clients,
malformed requests each answered with a clear error while the server keeps serving, the metrics
endpoint's exit counters, config validation at load, clean shutdown.

Skips (with the reason) when scripts/setup_triton.sh has not run, when tritonclient is missing, or
when libtriton_exitc.so is not built. The CV part uses the reduced CV sample (samples/build_cv.py,
compiled once into samples/.cache/cv-small/triton-model.exitc) or EXITC_TRITON_CV_ARTIFACT.

What the server does not let through cannot be tested here: Triton itself rejects requests with
a wrong shape, datatype, missing input or batch over max_batch_size before they reach a backend,
so those errors come from Triton; the backend's own checks of the same (runtime/triton/request.cpp)
are defence in depth that no request from this client can reach.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from triton_server import TritonServer, metric_value, triton_paths  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if triton_paths() is None:
    pytest.skip("Triton is not set up: run scripts/setup_triton.sh", allow_module_level=True)
http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] missing: run scripts/setup_triton.sh")
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] missing: run scripts/setup_triton.sh")
from tritonclient.utils import InferenceServerException  # noqa: E402

import exitc  # noqa: E402
from exitc.errors import ExitcError  # noqa: E402
from exitc.triton import backend_dir, export_triton  # noqa: E402
from synthetic import tiny_transformer, transformer_feeds  # noqa: E402

try:
    BACKEND_DIR = backend_dir()
except ExitcError as exc:
    pytest.skip(f"libtriton_exitc.so not built: {exc}", allow_module_level=True)

MAX_BATCH = 8


def tiny_artifact(tmp):
    out = tmp / "tiny_artifacts"
    if not (out / "tiny.exitc" / "manifest.json").is_file():
        subprocess.run([sys.executable, os.path.join(ROOT, "runtime", "tests", "make_tiny_artifact.py"),
                        "--out", str(out)], check=True, capture_output=True)
    return str(out / "tiny.exitc")


def token_artifact(tmp):
    """A token model: two int64 inputs [batch, 8] (ids, attention mask), cut to row lengths by the
    runtimes (manifest `sequence`), compiled from synthetic rows."""
    import onnx

    from exitc.driver import CompileOptions, compile_model

    onnx.save(tiny_transformer(), tmp / "tok.onnx")
    np.savez(tmp / "tok_calib.npz", **transformer_feeds(1400, seed=1))
    art = tmp / "tok.exitc"
    compile_model(str(tmp / "tok.onnx"), str(tmp / "tok_calib.npz"), str(art),
                  CompileOptions(target_acc=0.9, progress=False, trim_padding="always"), log=lambda *a: None)
    return str(art)


def cv_artifact():
    """(artifact dir, test pixels) of the reduced CV sample, or None when it cannot be built here."""
    env = os.environ.get("EXITC_TRITON_CV_ARTIFACT")
    if env:
        test = os.path.join(os.path.dirname(os.path.abspath(env)), "test.npz")
        return env, np.load(test)["pixels"][:200]
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    d = os.path.join(ROOT, "samples", ".cache", "cv-small")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "samples", "build_cv.py"), "--out", d, "--head-rows", "2000",
                          "--calib-rows", "3000", "--test-rows", "500"], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    art = os.path.join(d, "triton-model.exitc")
    if not os.path.isfile(os.path.join(art, "manifest.json")):
        from exitc.driver import CompileOptions, compile_model

        compile_model(os.path.join(d, "model.onnx"), os.path.join(d, "calib.npz"), art,
                      CompileOptions(target_acc=0.97, progress=False, force=True), log=lambda *a: None)
    return art, np.load(os.path.join(d, "test.npz"))["pixels"][:200]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton")
    repo = tmp / "models"
    backends = tmp / "backends"
    backends.mkdir()
    # One backend directory holding both backends (Triton takes a single --backend-directory).
    os.symlink(os.path.join(triton_paths()["server"], "backends", "python"), backends / "python")
    os.symlink(os.path.join(BACKEND_DIR, "exitc"), backends / "exitc")
    arts = {"tiny": (tiny_artifact(tmp), None), "tok": (token_artifact(tmp), None)}
    cv = cv_artifact()
    if cv is not None:
        arts["cv"] = cv
    params = {"intra_op_threads": "1"}
    for key, (art, _) in arts.items():
        export_triton(art, str(repo), name=f"{key}_plain", max_batch_size=MAX_BATCH, mode="plain", extra_parameters=params)
        export_triton(art, str(repo), name=f"{key}_cont", max_batch_size=MAX_BATCH, mode="continuous",
                      extra_parameters={**params, "continuous_max_wait_us": "2000"})
        export_triton(art, str(repo), name=f"{key}_py", max_batch_size=MAX_BATCH, backend="python",
                      extra_parameters={"engine": "cpp"})
    export_triton(arts["tiny"][0], str(repo), name="tiny_pymon", max_batch_size=MAX_BATCH, backend="python",
                  extra_parameters={"engine": "python"}, monitor_sample_rate=1.0)
    for mode in ("plain", "continuous"):
        export_triton(arts["tiny"][0], str(repo), name=f"tiny_cppmon_{mode}", max_batch_size=MAX_BATCH, mode=mode,
                      extra_parameters=params, monitor_sample_rate=1.0)
    server = TritonServer(repo, backend_dir=backends, log_path=tmp / "tritonserver.log")
    server.start()
    models = {key: exitc.load(art, threads=1) for key, (art, _) in arts.items()}
    yield server, arts, models
    server.stop()


def infer(client, mod, model, x, outputs=("logits", "exitc_exit_index")):
    inp = mod.InferInput("x" if model.startswith("tiny") else "pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(x))
    outs = [mod.InferRequestedOutput(o) for o in outputs]
    r = client.infer(model, [inp], outputs=outs)
    return {o: r.as_numpy(o) for o in outputs}


def inputs_for(key, arts, rows, seed=0):
    _, test = arts[key]
    if test is not None:
        return test[:rows]
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, 4)) * 2).astype(np.float32)


def check_equal(model, x, got, what):
    logits, exit_index = model.run({model.manifest["inputs"][0]["name"]: x})
    np.testing.assert_array_equal(got["exitc_exit_index"].reshape(-1), exit_index, err_msg=f"{what}: exit index")
    np.testing.assert_allclose(got["logits"], logits[0], rtol=1e-4, atol=1e-4, err_msg=f"{what}: logits")


VARIANTS = ["plain", "cont", "py"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_model_with_two_int64_inputs(setup, variant):
    """Several inputs per request, int64, rows of different lengths (the runtimes cut each segment
    run to its longest row): every batch size answers what exitc.load answers."""
    server, _, models = setup
    feeds = transformer_feeds(60, seed=7)
    logits, exit_index = models["tok"].run(feeds)
    c = http.InferenceServerClient(server.http_url)
    try:
        start = 0
        for b in range(1, MAX_BATCH + 1):
            inputs = []
            for name in ("input_ids", "attention_mask"):
                inp = http.InferInput(name, [b, 8], "INT64")
                inp.set_data_from_numpy(np.ascontiguousarray(feeds[name][start:start + b]))
                inputs.append(inp)
            r = c.infer(f"tok_{variant}", inputs, outputs=[http.InferRequestedOutput("logits"),
                                                           http.InferRequestedOutput("exitc_exit_index")])
            np.testing.assert_array_equal(r.as_numpy("exitc_exit_index").reshape(-1), exit_index[start:start + b])
            np.testing.assert_allclose(r.as_numpy("logits"), logits[0][start:start + b], rtol=1e-4, atol=1e-4)
            start += b
    finally:
        c.close()


def test_server_ready_and_models_ready(setup):
    server, arts, _ = setup
    c = http.InferenceServerClient(server.http_url)
    try:
        assert c.is_server_ready()
        for key in arts:
            for v in VARIANTS:
                assert c.is_model_ready(f"{key}_{v}"), f"{key}_{v} not ready"
        meta = c.get_model_metadata("tiny_plain")
        assert [i["name"] for i in meta["inputs"]] == ["x"]
        assert {o["name"] for o in meta["outputs"]} == {"logits", "exitc_exit_index"}
    finally:
        c.close()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("key", ["tiny", "cv"])
def test_outputs_equal_exitc_load_for_batch_sizes_1_to_max(setup, key, variant):
    server, arts, models = setup
    if key not in arts:
        pytest.skip("the CV sample cannot be built here (needs torch and the sample data: scripts/setup_samples.sh)")
    x_all = inputs_for(key, arts, 200)
    c = http.InferenceServerClient(server.http_url)
    try:
        start = 0
        for b in list(range(1, MAX_BATCH + 1)) * 3:
            if start + b > len(x_all):
                start = 0
            x = x_all[start:start + b]
            start += b
            got = infer(c, http, f"{key}_{variant}", x)
            assert got["logits"].shape[0] == b and got["exitc_exit_index"].shape == (b, 1)
            check_equal(models[key], x, got, f"{key}_{variant} batch {b}")
    finally:
        c.close()


@pytest.mark.parametrize("variant", ["plain", "cont"])
def test_concurrent_clients_http_and_grpc(setup, variant):
    server, arts, models = setup
    key = "cv" if "cv" in arts else "tiny"
    x_all = inputs_for(key, arts, 200, seed=1)
    failures, done = [], []

    def client_thread(t):
        mod = grpc if t % 2 else http
        c = mod.InferenceServerClient(server.grpc_url if t % 2 else server.http_url)
        try:
            rng = np.random.default_rng(t)
            for _ in range(12):  # bounded: 12 requests per thread
                b = int(rng.integers(1, MAX_BATCH + 1))
                s = int(rng.integers(0, len(x_all) - b))
                x = x_all[s:s + b]
                try:
                    check_equal(models[key], x, infer(c, mod, f"{key}_{variant}", x), f"thread {t}")
                    done.append(b)
                except Exception as exc:  # collected, asserted below
                    failures.append(f"thread {t}: {exc}")
        finally:
            c.close()

    threads = [threading.Thread(target=client_thread, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "client threads hung"
    assert not failures, failures[:3]
    assert len(done) == 6 * 12


MALFORMED = {
    "wrong shape": (lambda: [("x", np.zeros((2, 5), np.float32), "FP32")], r"unexpected shape|shape"),
    "wrong dtype": (lambda: [("x", np.zeros((2, 4), np.float64), "FP64")], r"data-type|datatype|dtype|FP64"),
    "missing input": (lambda: [], r"expected 1 inputs but got 0|missing|input"),
    "batch over the limit": (lambda: [("x", np.zeros((MAX_BATCH + 1, 4), np.float32), "FP32")],
                             r"batch.size|max_batch_size|exceeds"),
    "unknown input": (lambda: [("x", np.zeros((1, 4), np.float32), "FP32"), ("y", np.zeros((1, 4), np.float32), "FP32")],
                      r"unexpected inference input|unexpected input|'y'"),
}


@pytest.mark.parametrize("variant", ["plain", "cont", "py"])
def test_each_malformed_request_gets_its_error_and_server_keeps_serving(setup, variant):
    server, arts, models = setup
    model = f"tiny_{variant}"
    good = inputs_for("tiny", arts, 5, seed=3)
    errors, goods = {}, []

    def bad_request(name):
        build, _ = MALFORMED[name]
        c = http.InferenceServerClient(server.http_url)
        try:
            ins = []
            for n, arr, dt in build():
                i = http.InferInput(n, list(arr.shape), dt)
                i.set_data_from_numpy(arr)
                ins.append(i)
            try:
                c.infer(model, ins)
                errors[name] = None
            except InferenceServerException as exc:
                errors[name] = str(exc)
        finally:
            c.close()

    def good_request():
        c = http.InferenceServerClient(server.http_url)
        try:
            for _ in range(5):
                goods.append(infer(c, http, model, good))
        finally:
            c.close()

    threads = [threading.Thread(target=bad_request, args=(n,)) for n in MALFORMED]
    threads += [threading.Thread(target=good_request) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    for name, (_, pattern) in MALFORMED.items():
        assert errors.get(name) is not None, f"{name}: the server accepted it"
        assert re.search(pattern, errors[name], re.I), f"{name}: unclear error: {errors[name]}"
    assert len(goods) == 10
    for g in goods:
        check_equal(models["tiny"], good, g, "good request next to malformed ones")
    assert server.is_ready()
    c = http.InferenceServerClient(server.http_url)
    try:  # unknown requested output
        with pytest.raises(InferenceServerException, match=r"nope|output"):
            infer(c, http, model, good, outputs=("nope",))
        check_equal(models["tiny"], good, infer(c, http, model, good), "after malformed requests")
    finally:
        c.close()


@pytest.mark.parametrize("variant", ["plain", "cont"])
def test_metrics_endpoint_counts_rows_per_exit(setup, variant):
    server, arts, models = setup
    model = f"tiny_{variant}"
    before = metric_value(server.metrics(), "exitc_rows_total", model=model) or 0.0
    x = inputs_for("tiny", arts, 7, seed=4)
    c = http.InferenceServerClient(server.http_url)
    try:
        infer(c, http, model, x)
        infer(c, http, model, x[:3])
    finally:
        c.close()
    text = server.metrics()
    assert metric_value(text, "exitc_rows_total", model=model) - before == 10
    _, exit_index = models["tiny"].run({"x": x})
    assert metric_value(text, "exitc_rows_total", model=model, exit="0") is not None
    assert metric_value(text, "exitc_engine_seconds_total", model=model) > 0
    assert metric_value(text, "exitc_overhead_seconds_total", model=model) is not None
    if variant == "cont":
        assert metric_value(text, "exitc_queue_rows", model=model, segment="0") == 0
        runs = metric_value(text, "exitc_segment_runs_total", model=model, segment="0")
        rows = metric_value(text, "exitc_segment_rows_total", model=model, segment="0")
        assert runs >= 1 and rows >= runs
    # Triton's own per-model counters see the same model.
    assert metric_value(text, "nv_inference_request_success", model=model) >= 2


def test_bad_config_is_refused_at_load_with_a_clear_message(tmp_path):
    art = tiny_artifact(tmp_path)
    repo = tmp_path / "models"
    export_triton(art, str(repo), name="broken", max_batch_size=4)
    cfg = repo / "broken" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }',
                                           '{ name: "x" data_type: TYPE_FP32 dims: [ 5 ] }'))
    backends = tmp_path / "backends"
    backends.mkdir()
    os.symlink(os.path.join(BACKEND_DIR, "exitc"), backends / "exitc")
    server = TritonServer(repo, backend_dir=backends, log_path=tmp_path / "log.txt", ready_timeout=60)
    with pytest.raises(RuntimeError) as info:
        server.start()
    assert "before READY" in str(info.value)
    assert "model 'broken': input 'x' has dims [5], the artifact declares [4]" in server.log_text()


def test_clean_shutdown(tmp_path):
    art = tiny_artifact(tmp_path)
    repo = tmp_path / "models"
    export_triton(art, str(repo), name="tiny_cont", max_batch_size=4, mode="continuous")
    backends = tmp_path / "backends"
    backends.mkdir()
    os.symlink(os.path.join(BACKEND_DIR, "exitc"), backends / "exitc")
    server = TritonServer(repo, backend_dir=backends, log_path=tmp_path / "log.txt")
    server.start()
    c = grpc.InferenceServerClient(server.grpc_url)
    x = np.ones((3, 4), np.float32)
    infer(c, grpc, "tiny_cont", x)
    c.close()
    assert server.stop() == 0
    log = server.log_text()
    assert "successfully unloaded 'tiny_cont' version 1" in log
    assert "exitc backend: " in log and "refusing" not in log


@pytest.mark.parametrize("model,metric_prefix", [("tiny_pymon", "exitc_python_"), ("tiny_cppmon_plain", "exitc_"),
                                                  ("tiny_cppmon_continuous", "exitc_")])
def test_agreement_monitor_reports_live_agreement(setup, model, metric_prefix):
    """--monitor-sample-rate 1: every early row is also run at full depth; the metrics show the
    rows checked, the disagreements and the live agreement, as exitc.monitor computes them, in the
    Python backend and in the C++ one (exitc::AgreementMonitor, plain and continuous mode)."""
    from exitc.monitor import AgreementMonitor

    server, arts, models = setup
    x = inputs_for("tiny", arts, 5 * MAX_BATCH, seed=7)
    parts = np.array_split(x, 5)
    c = http.InferenceServerClient(server.http_url)
    try:
        for part in parts:
            infer(c, http, model, part)
    finally:
        c.close()
    local = AgreementMonitor(exitc.load(arts["tiny"][0], engine="python"), sample_rate=1.0, seed=0)
    for part in parts:
        local.run({"x": part})
    want = local.report()
    text = server.metrics()
    rows, agreement = metric_prefix + "monitor_rows", metric_prefix + "agreement"
    assert sum(want.sampled) > 0, "the tiny artifact's exits take some of these rows"
    assert metric_value(text, rows, model=model, rows="sampled") == sum(want.sampled)
    assert metric_value(text, rows, model=model, rows="disagreements") == sum(want.disagreements)
    for value in ("estimate", "lower", "upper"):
        got = metric_value(text, agreement, model=model, value=value)
        assert got == pytest.approx(getattr(want, f"agreement_{value}"), abs=1e-6), value
    assert metric_value(text, agreement, model=model, value="target") == pytest.approx(want.target)

def test_load_bench_serves_every_model_and_prices_the_monitor(tmp_path):
    """bench/triton_load.py end to end on a small run: all four models (original, plain,
    continuous, and plain with the agreement monitor) answer every request without an error, the
    report has their throughput and latencies, and the monitored model's metrics show the early
    rows it checked at full depth (sample rate 1: all of them)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import triton_load

    art = tiny_artifact(tmp_path)
    data = tmp_path / "rows.npz"
    np.savez(data, x=(np.random.default_rng(3).standard_normal((64, 4)) * 2).astype(np.float32))
    out = tmp_path / "load.json"
    rc = triton_load.main(["--artifact", art, "--original", art, "--data", str(data), "--requests", "40",
                           "--rounds", "2", "--threads", "4", "--max-batch-size", str(MAX_BATCH),
                           "--monitor-sample-rate", "1", "--max-seconds", "60", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())["models"]
    assert set(report) == {"original", "plain", "continuous", "monitored"}
    for name, entry in report.items():
        assert entry["requests"] == 40 and entry["errors"] == 0, name
        assert entry["throughput_rows_s"] > 0 and entry["p99_ms"] >= entry["p50_ms"] > 0, name
    early = sum(report["monitored"]["rows_per_exit"][:-1])
    assert early > 0, "the tiny artifact's exits take some of these rows"
    assert report["monitored"]["monitor_rows"]["sampled"] == early
