"""The verify stage's batch-1 decisions (exitc.verify): where batch-1 requests run the original,
the first-exit form is measured beside it and kept only where it keeps the median request within
the policy's tolerance and lowers the mean; the staged manifest says what was kept."""

from __future__ import annotations

import os

import numpy as np
import pytest

from exitc import emit, verify
from exitc.data import Dataset
from exitc.manifest import read_manifest
from exitc.policy import MEDIAN_TOLERANCE

from test_emit import make_plan, setup, spec  # noqa: F401  (setup: the module fixture)


def _lat(original, conditional, first_exit):
    return {"original": np.asarray(original, float), "conditional": np.asarray(conditional, float),
            "first_exit": np.asarray(first_exit, float)}


def test_first_exit_wins_needs_the_median_within_tolerance_and_a_lower_mean():
    orig = [1.0] * 10
    # 4 of 10 requests leave at exit 0 almost free; the others pay 1% more than the original
    fast = [0.05] * 4 + [1.01] * 6
    assert verify.first_exit_wins(_lat(orig, orig, fast))
    # the same at 5% more: the median request is slower than the tolerance allows
    slow = [0.05] * 4 + [1.0 + 2.5 * MEDIAN_TOLERANCE] * 6
    assert not verify.first_exit_wins(_lat(orig, orig, slow))
    # within tolerance but no gain on average (nothing leaves early)
    assert not verify.first_exit_wins(_lat(orig, orig, [1.01] * 10))
    # most requests leave at exit 0: the median request itself is faster
    assert verify.first_exit_wins(_lat(orig, orig, [0.05] * 6 + [1.5] * 4))


@pytest.mark.parametrize("wins", [True, False])
def test_try_first_exit_writes_the_manifest_only_where_it_wins(setup, tmp_path, monkeypatch, wins):  # noqa: F811
    model, _, _, _, _, _, feeds, _ = setup
    staging, manifest = emit.stage(str(tmp_path / "a.exitc"), spec(setup, make_plan([0, 2], [0.6, 0.7],
                                                                                    batch1="original")))
    seen = {}

    def decide(lat, weights=None):
        seen.update(lat)
        return wins

    monkeypatch.setattr(verify, "first_exit_wins", decide)
    check = verify.Verification()
    holdout = Dataset(feeds, None, "rows")
    assert verify.try_first_exit(staging, manifest, model, holdout, check, log=lambda *_: None) is wins
    assert set(seen) == {"original", "conditional", "first_exit"}
    assert all(len(v) == min(2 * verify.LATENCY_ROWS, holdout.rows) for v in seen.values())
    on_disk = read_manifest(staging)["conditional"]
    assert on_disk == manifest["conditional"] and on_disk["form"] == "original"
    assert on_disk.get("after_first_exit", False) is wins
    assert ("first_exit" in check.latency_ms_b1) is wins and bool(check.notes) is wins
    if wins:
        assert verify.choose_batch1(check, on_disk) == "first_exit"
        assert check.p50_ratio_b1 == pytest.approx(check.latency_ms_b1["original"]["p50_ms"]
                                                   / check.latency_ms_b1["first_exit"]["p50_ms"])


def test_stratified_p50_follows_the_held_out_exit_shares():
    """A timing sample where 40% of the rows took the early exit, from held-out rows where 60% do:
    weighted to the held-out shares the median request is an early one (unweighted it would be a
    full-depth one); the mean moves the same way."""
    groups = np.array([0] * 40 + [1] * 60)
    seconds = np.where(groups == 0, 0.1, 1.0)
    w = verify.stratum_weights(groups, [0.6, 0.4])
    assert w.sum() == pytest.approx(1.0)
    assert w[0] == pytest.approx(0.6 / 40) and w[-1] == pytest.approx(0.4 / 60)
    mean, p50 = verify.stratified_summary(seconds, w)
    assert p50 == 0.1 and mean == pytest.approx(0.6 * 0.1 + 0.4 * 1.0)
    assert verify.stratified_summary(seconds) == (pytest.approx(0.64), 1.0)   # unweighted
    # a group the sample lacks is dropped and the rest renormalised
    w = verify.stratum_weights(np.array([0, 0, 2]), [0.5, 0.2, 0.3])
    assert w == pytest.approx([0.5 / 0.8 / 2, 0.5 / 0.8 / 2, 0.3 / 0.8])


def test_first_exit_wins_reads_weights():
    orig = [1.0] * 10
    first = [0.05] * 4 + [1.02] * 6                  # 40% leave in the sample: p50 a full-depth row
    lat = _lat(orig, orig, first)
    weights = {"first_exit": verify.stratum_weights(np.array([0] * 4 + [1] * 6), [0.6, 0.4])}
    assert verify.first_exit_wins(lat, weights)   # 60% of the held-out rows leave: p50 an early row
    assert verify.first_exit_wins(lat)            # unweighted: p50 1.02, within the tolerance
    slow = _lat(orig, orig, [0.05] * 4 + [1.05] * 6)
    assert not verify.first_exit_wins(slow)       # p50 1.05: outside it
    assert verify.first_exit_wins(slow, {"first_exit": verify.stratum_weights(np.array([0] * 4 + [1] * 6),
                                                                              [0.6, 0.4])})


def test_stratified_rows_have_the_held_out_exit_mix():
    """Rows sorted by exit (the first 60 of 100 leave at exit 0): the selection has the held-out
    shares, spread over each group, sorted, without repeats."""
    idx = np.array([0] * 60 + [1] * 10 + [2] * 30)
    sel = verify.stratified_rows(idx, [0.5, 0.1, 0.4], 40)
    assert len(sel) == 40 and np.all(np.diff(sel) > 0)
    assert np.bincount(idx[sel], minlength=3).tolist() == [20, 4, 16]
    assert sel[0] == 0 and sel[19] == 59             # group 0's picks span its rows, not its first 20
    # largest remainder: 7 rows at shares 0.5/0.1/0.4 -> 3.5/0.7/2.8 -> 3 + 1 (largest rests) ...
    assert np.bincount(idx[verify.stratified_rows(idx, [0.5, 0.1, 0.4], 7)], minlength=3).tolist() == [3, 1, 3]
    # a group short of rows is topped up with other rows
    short = verify.stratified_rows(np.array([0] * 95 + [1] * 5), [0.5, 0.5], 20)
    assert len(short) == 20 and len(np.unique(short)) == 20 and np.sum(short >= 95) == 5
    assert verify.stratified_rows(idx, [0.5, 0.1, 0.4], 100).tolist() == list(range(100))


def test_throughput_rows_have_the_held_out_shares():
    class ByRow:  # exit index = column 0 of x (a stand-in for the artifact); column 1: the row
        def run(self, feeds):
            return [feeds["x"]], feeds["x"][:, 0].astype(np.int64)

    exits = np.random.default_rng(0).permutation(np.repeat([0, 1], [300, 700]))
    x = np.stack([exits, np.arange(1000)], axis=1).astype(np.float32)
    data = Dataset({"x": x}, None, "calib.npz")
    shares = [0.5, 0.5]                                                  # other than the pool's 0.3
    idx = verify.exit_indices(ByRow(), data, 300, shares, batch=16)
    assert np.array_equal(idx, exits[:300])                            # batched, in row order
    got = verify.throughput_rows(data, 64, idx, shares).feeds["x"]
    assert len(got) == 64 and int((got[:, 0] == 0).sum()) == 32
    assert got[:, 1].max() < verify.THROUGHPUT_POOL * 64                # from the pool only
    # without indices: the first n rows, as before
    assert np.array_equal(verify.throughput_rows(data, 64, None, shares).feeds["x"], x[:64])


def test_verify_stage_reads_the_held_out_rows_in_random_order(monkeypatch):
    """A calibration file sorted by class: the rows every check reads first must not all be one
    class (verify_stage shuffles the held-out rows, with the compile's seed)."""
    from exitc.options import CompileOptions
    from exitc.policy import Plan

    seen = {}
    monkeypatch.setattr(verify, "check_exact", lambda path, model, sig, data, b, check: seen.update(x=data.feeds["x"]))
    x = np.arange(400, dtype=np.float32).reshape(-1, 1)
    plan = Plan.without_exits(0.99, 0.95, "none", 0, 400, 1.0, 1.0)
    verify.verify_stage("staging", {}, None, None, Dataset({"x": x}, None, "c.npz"), plan, CompileOptions())
    got = seen["x"][:, 0]
    assert sorted(got.tolist()) == x[:, 0].tolist()          # every row, once
    assert got[:100].max() > 200                              # the first hundred are not the file's first


def test_full_depth_tolerance_of_reduced_precision_models():
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from synthetic import tiny_cnn

    assert verify.reduced_precision_eps(tiny_cnn()) == 0.0
    assert verify.reduced_precision_eps(convert_float_to_float16(tiny_cnn(), keep_io_types=True)) == 2.0 ** -10
    ref = np.array([[10.0, 2.0, -3.0], [0.5, 0.25, 0.1]], np.float32)
    near = ref + np.array([[0.028, -0.02, 0.0], [0.0, 0.003, 0.0]], np.float32)  # float16 rounding at scale 10
    assert not np.isfinite(verify._within(near, ref))  # float32 models: exact to 1e-4
    assert verify._within(near, ref, 2.0 ** -10) == pytest.approx(0.028, abs=1e-6)
    swapped = ref.copy()
    swapped[1] = [0.25, 0.2505, 0.1]  # within the rounding, but the top-1 class changes
    assert not np.isfinite(verify._within(swapped, ref, 2.0 ** -10))
    far = ref + np.array([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)  # 51 ulps at scale 10
    assert not np.isfinite(verify._within(far, ref, 2.0 ** -10))


def test_a_conditional_form_that_deviates_is_dropped_not_fatal(setup, tmp_path):  # noqa: F811
    """Where only the single-graph batch-1 form deviates at full depth (ONNX Runtime runs a
    quantized transformer's QDQ ops differently inside If branches), check_exact says so and
    verify_stage drops that form: batch-1 requests run the segments, which are exact."""
    import onnx
    from onnx import helper, numpy_helper

    from exitc.options import CompileOptions

    model, sig = setup[0], setup[1]
    plan = make_plan([1], [2.0])  # a threshold no score reaches: every row runs to the end
    staging, manifest = emit.stage(str(tmp_path / "m.exitc"), spec(setup, plan))
    cond_path = f"{staging}/{manifest['conditional']['file']}"
    cond = onnx.load(cond_path)
    out = cond.graph.output[0].name
    for n in cond.graph.node:  # the form's answer, moved by 0.5
        n.output[:] = [o + "_pre" if o == out else o for o in n.output]
    cond.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "shift"))
    cond.graph.node.append(helper.make_node("Add", [out + "_pre", "shift"], [out]))
    onnx.save(cond, cond_path)
    rows = Dataset({"x": np.random.default_rng(3).standard_normal((40, 3, 16, 16)).astype(np.float32)}, None, "h")
    with pytest.raises(verify.ConditionalDeviates):
        verify.check_exact(staging, model, sig, rows, 8, verify.Verification())
    logs = []
    check = verify.verify_stage(staging, manifest, model, sig, rows, plan,
                                CompileOptions(never_slower=False), log=logs.append)
    assert manifest["conditional"] is None and not os.path.exists(cond_path)
    assert "batch 1" in check.checked and any("batch-1 requests run the segments" in line for line in logs)
