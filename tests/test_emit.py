"""The emission stage (exitc.emit) on a small synthetic model: what stage() writes
(segments, the batch-1 form, the manifest), that the written heads are the plan's heads (plain and
chained gates), and the atomic staging (commit, discard, nothing left on failure)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exitc import emit
from exitc.data import Dataset
from exitc.distill import FittedHead
from exitc.errors import ExitcError
from exitc.features import FeatureProbe
from exitc.manifest import FORMAT, MANIFEST, SCHEMA_VERSION, read_manifest
from exitc.passes import find_candidates, normalize
from exitc.passes.heads import head_forward, softmax
from exitc.passes.split import EXIT_INDEX, find_mask_input
from exitc.predictions import LOGITS
from exitc.policy import Plan

from synthetic import tiny_cnn

ROWS = 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A normalised tiny CNN saved to disk, its candidates, random fitted heads at every candidate
    and the probe features of some rows."""
    model, sig = normalize(tiny_cnn())
    path = str(tmp_path_factory.mktemp("src") / "model.onnx")
    onnx.save(model, path)
    cands = find_candidates(model)
    mask = find_mask_input(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((ROWS, 3, 16, 16)).astype(np.float32)}
    cache = FeatureProbe(model, cands, mask).collect(Dataset(feeds, None, "rows"), progress=False)
    rng = np.random.default_rng(1)
    heads = []
    for c, f in zip(cands, cache.features):
        layers = [((0.05 * rng.standard_normal((f.shape[1], sig.num_classes))).astype(np.float32),
                   rng.standard_normal(sig.num_classes).astype(np.float32))]
        heads.append(FittedHead(c, "linear", layers, np.array([4.0, 2.0, -1.0], np.float32), -2.0,
                                np.ones(ROWS, bool), np.zeros(ROWS, np.float32), 1.0))
    return model, sig, path, cands, mask, heads, feeds, cache


def make_plan(exits, thresholds, gates=(), batch1="exits"):
    plan = Plan(list(exits), list(thresholds), 0.1, 0.99, 0.95, 100, 200, 0.995, 0.997, 0.99, [0.3, 0.7],
                1e-3, 2e-4, 2e-3, 3e-4)
    plan.gates, plan.batch1 = list(gates), batch1
    return plan


def spec(setup, plan, **kw):
    model, sig, path, cands, mask, heads, _, _ = setup
    return emit.ArtifactSpec(model, sig, path, heads, plan, None, mask, {}, LOGITS, **kw)


def run_segments(staging, manifest, feeds):
    """Every segment in order, all rows (no compaction): the union of their outputs."""
    state = dict(feeds)
    for entry in manifest["segments"]:
        sess = ort.InferenceSession(os.path.join(staging, entry["file"]), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        state.update(zip(names, sess.run(names, {k: state[k] for k in entry["inputs"]})))
    return state


def test_stage_writes_segments_conditional_and_manifest(setup, tmp_path):
    model, sig, path, cands, _, heads, feeds, cache = setup
    assert len(cands) >= 3
    plan = make_plan([0, 2], [0.6, 0.7])
    staging, manifest = emit.stage(str(tmp_path / "out.exitc"), spec(setup, plan))
    assert os.path.dirname(staging) == str(tmp_path) and os.path.basename(staging).startswith(".out.exitc.tmp-")
    assert not os.path.exists(tmp_path / "out.exitc"), "staging must not touch the destination"
    # the manifest on disk is the one returned, and it validates
    with open(os.path.join(staging, MANIFEST)) as f:
        assert json.load(f) == manifest
    assert read_manifest(staging)["segments"] == manifest["segments"]
    assert manifest["format"] == FORMAT and manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["prediction_output"] == sig.output.name and manifest["num_classes"] == sig.num_classes
    assert manifest["prediction_kind"] == "logits" and manifest["inputs"][0]["name"] == "x"
    with open(path, "rb") as f:
        assert manifest["source"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert manifest["source"]["file"] == "model.onnx" and manifest["source"]["path"] == os.path.abspath(path)
    assert manifest["calibration"]["target_acc"] == 0.99 and manifest["calibration"]["n_certify"] == 200
    # one segment per exit plus the rest; exit entries name the plan's candidates and thresholds
    segs = manifest["segments"]
    assert [s["index"] for s in segs] == [0, 1, 2]
    for i, (c, t) in enumerate(zip(plan.exits, plan.thresholds)):
        assert segs[i]["exit"] == {"index": i, "logits": f"exitc_exit{i}_logits", "score": f"exitc_exit{i}_score",
                                   "threshold": t, "candidate": cands[c].tensor, "head": "linear"}
    assert segs[-1]["exit"] is None and segs[-1]["outputs"] == [sig.output.name]
    assert sorted(os.listdir(os.path.join(staging, "segments"))) == ["seg_0.onnx", "seg_1.onnx", "seg_2.onnx"]
    for s in segs:
        onnx.checker.check_model(onnx.load(os.path.join(staging, s["file"])))
    carried = {e["name"] for e in manifest["carried"]}
    assert carried == {n for s in segs for n in s["carry_out"]} and carried
    # the written heads compute the head definition on the probe's features; the last segment
    # computes the original
    state = run_segments(staging, manifest, feeds)
    for i, c in enumerate(plan.exits):
        out, score = head_forward(heads[c].exit_head(i, onnx.TensorProto.FLOAT, None, LOGITS), cache.features[c])
        np.testing.assert_allclose(state[f"exitc_exit{i}_logits"], out, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state[f"exitc_exit{i}_score"], score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state[sig.output.name], cache.outputs, rtol=1e-5, atol=1e-5)
    # the batch-1 form: the conditional graph, with the exit index
    assert manifest["conditional"] == {"file": "conditional.onnx", "form": "if",
                                       "outputs": [sig.output.name, EXIT_INDEX]}
    sess = ort.InferenceSession(os.path.join(staging, "conditional.onnx"), providers=["CPUExecutionProvider"])
    _, idx = sess.run(None, {"x": feeds["x"][:1]})
    assert idx.shape == (1,) and 0 <= idx[0] <= 2
    emit.discard(staging)
    assert not os.path.exists(staging)


def test_chained_gates_are_wired_from_the_plan(setup, tmp_path):
    """plan.gates with 6 weights: exit 1 reads exit 0's probabilities, which exit 0 exports and
    the manifest lists as carried; the written score is head_forward's with `prev`."""
    _, sig, _, _, _, heads, feeds, cache = setup
    w1 = np.array([1.0, 0.5, -0.3, 2.0, 0.7, -1.0], np.float32)
    plan = make_plan([0, 1], [0.6, 0.7], gates=[(heads[0].gate_w, heads[0].gate_b), (w1, 0.25)])
    sp = spec(setup, plan)
    exit_heads = sp.exit_heads()
    assert exit_heads[0].export_probs and exit_heads[0].prev_probs is None
    assert exit_heads[1].prev_probs == "exitc_exit0_probs" and not exit_heads[1].export_probs
    assert exit_heads[1].gate_b == 0.25 and exit_heads[1].meta == {"threshold": 0.7}
    staging, manifest = emit.stage(str(tmp_path / "chained"), sp)
    assert "exitc_exit0_probs" in manifest["segments"][0]["carry_out"]
    assert {"name": "exitc_exit0_probs", "dtype": "float32", "shape": ["batch", sig.num_classes],
            "batch_axis": 0} in manifest["carried"]
    state = run_segments(staging, manifest, feeds)
    prev = softmax(state["exitc_exit0_logits"])
    np.testing.assert_allclose(state["exitc_exit0_probs"], prev, rtol=1e-4, atol=1e-6)
    _, want = head_forward(exit_heads[1], cache.features[1], prev)
    np.testing.assert_allclose(state["exitc_exit1_score"], want, rtol=1e-4, atol=1e-5)
    _, plain = head_forward(heads[1].exit_head(1, onnx.TensorProto.FLOAT, None, LOGITS), cache.features[1])
    assert not np.allclose(state["exitc_exit1_score"], plain, atol=1e-3), "the chained gate must matter"
    emit.discard(staging)


def test_plan_exit_heads_are_the_heads_the_artifact_fuses(setup, tmp_path):
    """Other runtimes (the torch front end's) build their heads with emit.plan_exit_heads: they
    must be the heads stage() writes into the segments."""
    model, sig, path, cands, mask, heads, _, _ = setup
    plan = make_plan([0, 1], [0.8, 0.7])
    staging, manifest = emit.stage(str(tmp_path / "a"), spec(setup, plan))
    built = emit.plan_exit_heads(plan, heads, {}, mask, LOGITS)
    exits = [s["exit"] for s in manifest["segments"] if s["exit"]]
    assert [(e["candidate"], e["logits"], e["score"], e["threshold"]) for e in exits] == \
        [(h.tensor, h.logits_name, h.score_name, h.meta["threshold"]) for h in built]
    for h, want in zip(built, spec(setup, plan).exit_heads()):
        np.testing.assert_array_equal(h.gate_w, want.gate_w)
        assert (h.gate_b, h.prev_probs, h.export_probs) == (want.gate_b, want.prev_probs, want.export_probs)
    emit.discard(staging)


def test_plan_without_exits_writes_the_original_as_one_segment(setup, tmp_path):
    _, sig, _, _, _, _, feeds, cache = setup
    plan = Plan.without_exits(0.99, 0.95, "nothing to gain")
    staging, manifest = emit.stage(str(tmp_path / "none"), spec(setup, plan))
    assert len(manifest["segments"]) == 1 and manifest["conditional"] is None
    assert manifest["calibration"]["reason"] == "nothing to gain"
    assert not os.path.exists(os.path.join(staging, emit.COND_FILE))
    np.testing.assert_allclose(run_segments(staging, manifest, feeds)[sig.output.name], cache.outputs,
                               rtol=1e-5, atol=1e-5)


def test_batch1_form_original_and_drop_conditional(setup, tmp_path):
    model, sig, _, _, _, _, feeds, cache = setup
    staging, manifest = emit.stage(str(tmp_path / "b1"), spec(setup, make_plan([0, 2], [0.6, 0.7])))
    emit.write_batch1_form(staging, manifest, "original", model)
    assert manifest["conditional"]["form"] == "original" and read_manifest(staging)["conditional"]["form"] == "original"
    sess = ort.InferenceSession(os.path.join(staging, emit.COND_FILE), providers=["CPUExecutionProvider"])
    out, idx = sess.run(None, feeds)
    np.testing.assert_allclose(out, cache.outputs, rtol=1e-5, atol=1e-5)
    assert (idx == 2).all(), "the original form reports 'ran to the end' (= number of exits)"
    emit.drop_conditional(staging, manifest)
    assert manifest["conditional"] is None and read_manifest(staging)["conditional"] is None
    assert not os.path.exists(os.path.join(staging, emit.COND_FILE))
    emit.drop_conditional(staging, manifest)  # a second drop is a no-op


def test_failed_staging_leaves_nothing(setup, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(emit, "build_manifest", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        emit.stage(str(tmp_path / "out"), spec(setup, make_plan([0], [0.5])))
    assert os.listdir(tmp_path) == []


def test_commit_check_destination_and_discard(setup, tmp_path):
    out = str(tmp_path / "out.exitc")
    emit.check_destination(out, force=False)
    staging, _ = emit.stage(out, spec(setup, make_plan([0], [0.5])))
    emit.commit(staging, out, force=False)
    assert not os.path.exists(staging) and read_manifest(out)["segments"][0]["exit"]["threshold"] == 0.5
    with pytest.raises(ExitcError, match="already exists"):
        emit.check_destination(out, force=False)
    emit.check_destination(out, force=True)
    staging, _ = emit.stage(out, spec(setup, make_plan([1], [0.9])))
    with pytest.raises(ExitcError, match="already exists"):
        emit.commit(staging, out, force=False)
    assert read_manifest(out)["segments"][0]["exit"]["threshold"] == 0.5, "a refused commit changes nothing"
    emit.commit(staging, out, force=True)
    assert read_manifest(out)["segments"][0]["exit"]["threshold"] == 0.9
    assert sorted(os.listdir(tmp_path)) == ["out.exitc"]
    with pytest.raises(ExitcError, match="parent directory"):
        emit.check_destination(str(tmp_path / "missing" / "out"), force=False)
    emit.discard(None)  # nothing staged: nothing to do


def test_emit_does_not_import_the_runtime_or_the_profiler():
    code = ("import sys, exitc.emit; bad = [m for m in ('exitc.runtime', 'exitc.profile', 'exitc.verify', "
            "'exitc.backends', 'exitc.cpp_runtime', 'onnxruntime', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_first_exit_batch1_form_in_both_runtimes(setup, tmp_path):
    """The first-exit batch-1 form (policy.batch1_forms "first_exit"): a batch-1 request that exit
    0 takes gets exit 0's logits and index 0, every other request the original's outputs and
    index len(exits); at larger batches the plan's exits run as before. Thresholds put rows on
    both sides of exit 0; the Python reference and libexitc (where built) agree row by row."""
    from exitc.runtime import ExitModel

    model, sig, _, _, _, _, feeds, cache = setup
    probe = emit.stage(str(tmp_path / "probe"), spec(setup, make_plan([0, 2], [0.6, 0.7])))[0]
    score0 = run_segments(probe, read_manifest(probe), feeds)["exitc_exit0_score"]
    t0 = float(np.median(score0))
    out = str(tmp_path / "first.exitc")
    staging, manifest = emit.stage(out, spec(setup, make_plan([0, 2], [t0, 2.0], batch1="first_exit")))
    emit.commit(staging, out, force=False)
    cond = read_manifest(out)["conditional"]
    assert cond["form"] == "original" and cond["after_first_exit"] is True
    takes = score0 >= np.float32(t0)
    assert 0 < takes.sum() < ROWS, "rows on both sides of exit 0"
    state = run_segments(out, manifest, feeds)
    runtimes = [ExitModel(out)]
    try:
        from exitc.cpp_runtime import CppExitModel
        runtimes.append(CppExitModel(out))
    except ImportError:
        pass  # libexitc not built here: the reference alone
    for rt in runtimes:
        for i in range(ROWS):
            (got,), idx = rt.run({k: v[i:i + 1] for k, v in feeds.items()})
            if takes[i]:
                assert idx[0] == 0
                np.testing.assert_allclose(got[0], state["exitc_exit0_logits"][i], rtol=1e-5, atol=1e-5)
            else:
                assert idx[0] == 2, "a request exit 0 does not take runs the original to the end"
                np.testing.assert_allclose(got[0], cache.outputs[i], rtol=1e-5, atol=1e-5)
        (batch,), idx = rt.run(feeds)
        assert ((idx == 0) == takes).all(), "batches keep the plan's exits"
    # A reader that ignores after_first_exit runs the original for every batch-1 request: exact.
    plain = ExitModel(out)
    plain._after_first_exit = False
    (got,), idx = plain.run({k: v[:1] for k, v in feeds.items()})
    np.testing.assert_allclose(got, cache.outputs[:1], rtol=1e-5, atol=1e-5)
    assert idx[0] == 2
