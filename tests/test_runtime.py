"""Reference runtime: compaction/scatter properties and exactness for any exit pattern."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exitc.compaction import compact_rows, scatter_rows
from exitc.emit import build_manifest
from exitc.errors import ExitcError
from exitc.passes import ExitHead, build_segments, conditional_model, find_candidates, normalize, probe_model
from exitc.passes.split import find_mask_input, probe_name
from exitc.policy import Plan
from exitc.predictions import LOGITS
from exitc.runtime import ExitModel

from synthetic import tiny_cnn, tiny_transformer, transformer_feeds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@given(st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_compact_then_scatter_roundtrip(n, seed):
    rng = np.random.default_rng(seed)
    keep = rng.random(n) < rng.random()
    a = rng.standard_normal((n, 3)).astype(np.float32)
    b = rng.standard_normal((2, n)).astype(np.float32)  # batch on axis 1
    out = compact_rows({"a": a, "b": b}, keep, {"b": 1})
    assert out["a"].shape == (keep.sum(), 3) and out["b"].shape == (2, keep.sum())
    np.testing.assert_array_equal(out["a"], a[keep])
    np.testing.assert_array_equal(out["b"], b[:, keep])
    dest = np.zeros_like(a)
    scatter_rows(dest, np.flatnonzero(keep), out["a"])
    np.testing.assert_array_equal(dest[keep], a[keep])
    assert not dest[~keep].any()


def make_artifact(tmp, model, sig, thresholds, seed=0, feeds=None):
    """Write an artifact with random linear heads at the first len(thresholds) candidates."""
    cands = find_candidates(model)[: len(thresholds)]
    mask = find_mask_input(model)
    probed = onnx.load_from_string(probe_model(model, cands, mask).SerializeToString())
    sess = ort.InferenceSession(probed.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    rng = np.random.default_rng(seed)
    heads = []
    for k, (c, t) in enumerate(zip(cands, thresholds)):
        d = outs[probe_name(k)].shape[1]
        heads.append(ExitHead(k, c.tensor, c.layout, onnx.TensorProto.FLOAT, mask if c.layout == "btc" else None,
                              [((0.05 * rng.standard_normal((d, sig.num_classes))).astype(np.float32),
                                np.zeros(sig.num_classes, np.float32))],
                              np.array([4.0, 2.0, -1.0], np.float32), -2.0, meta={"threshold": float(t)},
                              pooling=c.pooling))
    segs = build_segments(model, cands, heads, mask)
    os.makedirs(tmp, exist_ok=True)
    path = str(tmp / "m.exitc")
    os.makedirs(os.path.join(path, "segments"), exist_ok=True)
    src = str(tmp / "model.onnx")
    onnx.save(model, src)
    for s in segs:
        onnx.save(s.model, os.path.join(path, "segments", f"seg_{s.index}.onnx"))
    onnx.save(conditional_model(segs, model), os.path.join(path, "conditional.onnx"))
    plan = Plan(list(range(len(heads))), list(thresholds), 0.0, 0.99, 0.95, 0, 0, 1, 1, 1, [], 1, 1, 1, 1)
    manifest = build_manifest(model, sig, src, segs, "conditional.onnx", plan, None, LOGITS)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return path, segs


def reference_no_compaction(segs, feeds, output):
    state = dict(feeds)
    for s in segs:
        sess = ort.InferenceSession(s.model.SerializeToString(), providers=["CPUExecutionProvider"])
        state.update(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: state[k] for k in s.inputs})))
    heads = [s.head for s in segs if s.head is not None]
    want = state[output].copy()
    idx = np.full(len(want), len(heads))
    for h in reversed(heads):
        hit = state[h.score_name] >= np.float32(h.meta["threshold"])
        want[hit] = state[h.logits_name][hit]
        idx[hit] = h.index
    return want, idx, state


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_any_exit_pattern_matches_original_on_full_depth_rows(tmp_path_factory, kind, data):
    tmp = tmp_path_factory.mktemp("art")
    if kind == "cnn":
        model, sig = normalize(tiny_cnn(blocks=4))
        n = data.draw(st.integers(1, 33))
        feeds = {"x": np.random.default_rng(data.draw(st.integers(0, 999))).standard_normal((n, 3, 16, 16)).astype(np.float32)}
    else:
        model, sig = normalize(tiny_transformer(carry_mask=True))
        n = data.draw(st.integers(1, 33))
        feeds = transformer_feeds(n, seed=data.draw(st.integers(0, 999)))
    # thresholds drawn anywhere in the score range: from "everyone exits" to "nobody exits"
    thresholds = [data.draw(st.floats(0.0, 1.0)) for _ in range(3)]
    path, segs = make_artifact(tmp, model, sig, thresholds, feeds=feeds)
    rt = ExitModel(path, use_conditional=data.draw(st.booleans()))
    (got,), idx = rt.run(feeds)
    want, want_idx, state = reference_no_compaction(segs, feeds, sig.output.name)
    np.testing.assert_array_equal(idx, want_idx)
    full = idx == len(thresholds)
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got[full], original[full], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_runtime_rejects_bad_inputs(tmp_path):
    model, sig = normalize(tiny_cnn())
    feeds = {"x": np.zeros((4, 3, 16, 16), np.float32)}
    path, _ = make_artifact(tmp_path, model, sig, [0.5], feeds=feeds)
    rt = ExitModel(path)
    with pytest.raises(ExitcError, match="missing input 'x'"):
        rt.run({})
    with pytest.raises(ExitcError, match=r"unknown input 'y' \(model inputs: x\)"):  # as libexitc
        rt.run({"y": feeds["x"]})
    with pytest.raises(ExitcError, match="unknown input 'y'"):
        rt.run({"x": feeds["x"], "y": feeds["x"]})
    with pytest.raises(ExitcError, match="dtype float64"):
        rt.run({"x": feeds["x"].astype(np.float64)})
    with pytest.raises(ExitcError, match="shape"):
        rt.run({"x": np.zeros((4, 3, 8, 8), np.float32)})


def test_manifest_errors(tmp_path):
    model, sig = normalize(tiny_cnn())
    path, _ = make_artifact(tmp_path, model, sig, [0.5], feeds={"x": np.zeros((2, 3, 16, 16), np.float32)})
    m = json.load(open(os.path.join(path, "manifest.json")))
    m["schema_version"] = 99
    json.dump(m, open(os.path.join(path, "manifest.json"), "w"))
    with pytest.raises(ExitcError, match="schema_version 99 is not supported"):
        ExitModel(path)
    m["schema_version"] = 1
    m["prediction_kind"] = "softmax"
    json.dump(m, open(os.path.join(path, "manifest.json"), "w"))
    with pytest.raises(ExitcError, match='field .prediction_kind. must be "logits", "probabilities" or "log_probabilities"'):
        ExitModel(path)
    m["prediction_kind"] = "log_probabilities"
    json.dump(m, open(os.path.join(path, "manifest.json"), "w"))
    ExitModel(path)
    os.remove(os.path.join(path, "segments", "seg_1.onnx"))
    with pytest.raises(ExitcError, match="seg_1.onnx: segment file missing"):
        ExitModel(path)


def test_reference_runtime_on_runtime_test_vectors(tmp_path):
    """The C++ runtime's synthetic artifacts (batch axes 1, side inputs, two outputs) and their
    numpy-computed expectations also hold for the Python reference runtime."""
    script = os.path.join(ROOT, "runtime", "tests", "make_tiny_artifact.py")
    subprocess.run([sys.executable, script, "--out", str(tmp_path)], check=True, capture_output=True)
    for name in ("tiny", "side"):
        cases = json.load(open(tmp_path / f"{name}.cases" / "cases.json"))
        rt = ExitModel(str(tmp_path / cases["artifact"]))

        def read(spec):
            return np.fromfile(tmp_path / f"{name}.cases" / spec["file"], dtype=spec["dtype"]).reshape(spec["shape"])

        for case in cases["cases"]:
            outs, idx = rt.run({s["name"]: read(s) for s in case["inputs"]})
            np.testing.assert_array_equal(idx, read(case["exit_index"]), err_msg=case["name"])
            for got, spec in zip(outs, case["outputs"]):
                np.testing.assert_allclose(got, read(spec), rtol=1e-5, atol=1e-6, err_msg=case["name"])


def test_chained_gate_artifact_matches_numpy_and_cpp(tmp_path):
    """Exit 1's gate reads exit 0's probabilities (carried between segments): ONNX gate == numpy
    gate, runtimes agree with the uncompacted reference, and the C++ runtime with the Python one."""
    from exitc.passes.heads import head_forward

    model, sig = normalize(tiny_cnn(blocks=4))
    feeds = {"x": np.random.default_rng(9).standard_normal((48, 3, 16, 16)).astype(np.float32)}
    cands = find_candidates(model)[:2]
    probed = ort.InferenceSession(probe_model(model, cands, None).SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(None, feeds)
    rng = np.random.default_rng(2)
    heads = []
    for k, c in enumerate(cands):
        d = probed[1 + k].shape[1]
        heads.append(ExitHead(k, c.tensor, c.layout, onnx.TensorProto.FLOAT, None,
                              [((0.05 * rng.standard_normal((d, sig.num_classes))).astype(np.float32),
                                np.zeros(sig.num_classes, np.float32))],
                              np.array([3.0, 1.0, -1.0] + ([2.0, 1.0, 2.0] if k else []), np.float32), -3.0,
                              meta={"threshold": 2.0}, pooling=c.pooling))
    heads[0].export_probs = True
    heads[1].prev_probs = heads[0].probs_name
    # numpy reference scores
    logits0, _ = head_forward(heads[0], probed[1])
    from exitc.passes.heads import softmax
    _, score1 = head_forward(heads[1], probed[2], prev=softmax(logits0))
    heads[0].meta["threshold"] = float(np.quantile(head_forward(heads[0], probed[1])[1], 0.75))
    heads[1].meta["threshold"] = float(np.quantile(score1, 0.5))
    segs = build_segments(model, cands, heads, None)
    assert heads[0].probs_name in segs[0].carry_out and heads[0].probs_name in segs[1].inputs
    state = dict(feeds)
    for s in segs:
        sess = ort.InferenceSession(s.model.SerializeToString(), providers=["CPUExecutionProvider"])
        state.update(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: state[k] for k in s.inputs})))
    np.testing.assert_allclose(state[heads[1].score_name], score1, rtol=1e-4, atol=1e-5)
    # write the artifact and compare runtimes
    path = str(tmp_path / "c.exitc")
    os.makedirs(os.path.join(path, "segments"))
    onnx.save(model, str(tmp_path / "model.onnx"))
    for s in segs:
        onnx.save(s.model, os.path.join(path, "segments", f"seg_{s.index}.onnx"))
    onnx.save(conditional_model(segs, model), os.path.join(path, "conditional.onnx"))
    plan = Plan([0, 1], [h.meta["threshold"] for h in heads], 0.0, 0.99, 0.95, 0, 0, 1, 1, 1, [], 1, 1, 1, 1)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(build_manifest(model, sig, str(tmp_path / "model.onnx"), segs, "conditional.onnx", plan, None,
                                 LOGITS), f)
    want, want_idx, _ = reference_no_compaction(segs, feeds, sig.output.name)
    assert len(set(want_idx.tolist())) == 3
    ref = ExitModel(path)
    (got,), idx = ref.run(feeds)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for i in range(6):  # batch 1 through the conditional form
        (one,), one_idx = ref.run({"x": feeds["x"][i:i + 1]})
        assert one_idx[0] == want_idx[i]
    try:
        from exitc.cpp_runtime import CppExitModel
    except ImportError:
        return
    (got_cpp,), idx_cpp = CppExitModel(path).run(feeds)
    np.testing.assert_array_equal(idx_cpp, want_idx)
    np.testing.assert_allclose(got_cpp, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_exit_loop_semantics_on_numpy(n, seed):
    """exitc.exit_loop (the loop of the reference and the torch runtime): per segment, rows whose
    score reaches the threshold leave with their exit's logits, the rest are compacted and carry
    on; tensors no later segment reads are dropped; the last segment writes the remaining rows."""
    from exitc.exit_loop import NUMPY, ExitSpec, Step, run_exits

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2)).astype(np.float32)
    scores = rng.random((2, n)).astype(np.float32)  # per row, by request order
    thresholds = [0.7, 0.4]
    steps = [Step(("x", "row"), ("h", "t"), ExitSpec(0, "l0", "s0", thresholds[0])),
             Step(("h", "t", "row"), (), ExitSpec(1, "l1", "s1", thresholds[1])),
             Step(("h", "x", "row"), (), None, ("y",))]
    seen = []

    def run_segment(i, state):
        seen.append(set(state))
        rows = state["row"]
        if i == 0:
            return {"h": state["x"] * 2, "t": state["x"], "l0": np.full((len(rows), 2), 10.0, np.float32), "s0": scores[0][rows]}
        if i == 1:
            return {"l1": np.full((len(rows), 2), 11.0, np.float32), "s1": scores[1][rows]}
        return {"y": state["h"] + state["x"]}

    state = {"x": x, "row": np.arange(n)}
    results = {"y": np.zeros((n, 2), np.float32)}
    loop = run_exits(steps, run_segment, state, n, results, "y", NUMPY)
    want = np.where(scores[0] >= np.float32(0.7), 0, np.where(scores[1] >= np.float32(0.4), 1, 2))
    np.testing.assert_array_equal(loop.exit_index, want)
    np.testing.assert_array_equal(results["y"][want == 0], np.full(((want == 0).sum(), 2), 10.0))
    np.testing.assert_array_equal(results["y"][want == 1], np.full(((want == 1).sum(), 2), 11.0))
    np.testing.assert_array_equal(results["y"][want == 2], 3 * x[want == 2])
    if len(seen) > 1:
        assert {"h", "t", "x"} <= seen[1], "x is still read by the last segment"
    if len(seen) > 2:
        assert "t" not in seen[2] and {"h", "x"} <= seen[2], "t is read by no later segment: dropped"
