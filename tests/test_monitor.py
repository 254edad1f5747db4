"""exitc.monitor: live agreement from a sample of the early rows, checked at full depth."""

import numpy as np
import onnxruntime as ort
import pytest

import exitc
from exitc.errors import ExitcError
from exitc.monitor import AgreementMonitor, rate_bounds
from exitc.passes import normalize
from exitc.runtime import ExitModel

from synthetic import tiny_cnn
from test_runtime import make_artifact


def _artifact(tmp_path, thresholds, rows=400, seed=0):
    model, sig = normalize(tiny_cnn(blocks=4))
    feeds = {"x": np.random.default_rng(seed).standard_normal((rows, 3, 16, 16)).astype(np.float32)}
    path, _ = make_artifact(tmp_path, model, sig, thresholds, feeds=feeds)
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return path, feeds, original.run(None, feeds)[0]


@pytest.mark.parametrize("engine", ["python", "auto"])
def test_monitor_counts_the_disagreements_of_every_early_row_at_rate_one(tmp_path, engine):
    # Random heads that take most rows: they disagree with the original on many of them.
    path, feeds, want = _artifact(tmp_path, [0.3, 0.3])
    mon = AgreementMonitor(exitc.load(path, engine=engine), sample_rate=1.0, seed=0)
    served, exit_index = [], []
    for part in np.array_split(np.arange(len(want)), 7):  # several calls of different sizes
        (got,), idx = mon.run({"x": feeds["x"][part]})
        served.append(got)
        exit_index.append(idx)
    got, idx = np.concatenate(served), np.concatenate(exit_index)
    wrong = got.argmax(1) != want.argmax(1)
    early = idx < 2
    rep = mon.report()
    assert rep.rows == len(want) and rep.exit_counts == np.bincount(idx, minlength=3).tolist()
    assert rep.sampled[:2] == np.bincount(idx[early], minlength=3)[:2].tolist() and rep.sampled[2] == 0
    assert rep.disagreements == np.bincount(idx[wrong], minlength=3).tolist()
    assert wrong[~early].sum() == 0  # rows that ran to the end are the original's
    assert rep.agreement_estimate == pytest.approx(1.0 - wrong.mean())
    assert rep.agreement_lower <= rep.agreement_estimate <= rep.agreement_upper
    assert wrong.mean() > 0.03 and rep.status == "below target"  # the artifact's certified target is 0.99


def test_monitor_of_an_artifact_no_row_leaves_is_ok(tmp_path):
    path, feeds, _ = _artifact(tmp_path, [2.0, 2.0])  # sigmoid scores never reach 2
    mon = AgreementMonitor(ExitModel(path), sample_rate=1.0, seed=0)
    mon.run(feeds)
    rep = mon.report()
    assert rep.early_fraction == 0.0 and sum(rep.sampled) == 0
    assert rep.agreement_lower == 1.0 and rep.status == "ok"


def test_monitor_samples_the_requested_share_of_early_rows(tmp_path):
    path, feeds, _ = _artifact(tmp_path, [0.3, 0.3], rows=600)
    mon = AgreementMonitor(ExitModel(path), sample_rate=0.25, seed=3)
    _, idx = mon.run(feeds)
    early = int((idx < 2).sum())
    n = sum(mon.report().sampled)
    assert abs(n - 0.25 * early) < 4 * np.sqrt(early * 0.25 * 0.75), (n, early)
    again = AgreementMonitor(ExitModel(path), sample_rate=0.25, seed=3)
    again.run(feeds)
    assert again.report().sampled == mon.report().sampled  # seeded


def test_monitor_few_samples_are_inconclusive_and_bad_rates_refused(tmp_path):
    path, feeds, _ = _artifact(tmp_path, [0.3, 0.3], rows=40)
    mon = AgreementMonitor(ExitModel(path), sample_rate=0.05, seed=1)
    mon.run({"x": feeds["x"][:20]})
    assert mon.report().status in ("inconclusive", "below target")
    with pytest.raises(ExitcError, match="sample_rate"):
        AgreementMonitor(ExitModel(path), sample_rate=0.0)


def test_rate_bounds_are_exact_binomial_bounds():
    low, high = rate_bounds(0, 299, 0.95)
    assert low == 0.0 and 0.0099 < high <= 0.0100   # 299 clean rows: the rate is under 1% at 95%
    low, high = rate_bounds(10, 1000, 0.95)
    assert 0.0050 < low < 0.0100 < high < 0.0170
    assert rate_bounds(0, 0, 0.95) == (0.0, 1.0)
