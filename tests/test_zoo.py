"""The zoo (bench/zoo/): exitc on real third-party classifiers it was not developed on.

For every fast zoo model: `exitc compile` (the CLI, as a subprocess) on 140 rows of inputs that
resemble its domain, with `--target-acc 0.9` (the fewest rows exitc accepts at 95% confidence is
129). A batch-major classifier must compile to an artifact whose full-depth rows equal the
original's outputs within 1e-4 on both runtimes (also with every exit disabled, so that every
test row runs the whole segment chain); a model that is not a classifier may instead be refused
with exactly one line on stderr and no output directory. Never a traceback.

The zoo is fetched by scripts/setup_zoo.sh into .cache/zoo/; without it the tests skip.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.zoo import check, fetch  # noqa: E402
from bench.zoo.models import ZOO  # noqa: E402

FAST = [m for m in ZOO if m.fast]


@pytest.mark.parametrize("entry", FAST, ids=[m.name for m in FAST])
def test_zoo_model_compiles_exactly_or_is_refused_in_one_line(entry, tmp_path):
    status = fetch.read_status().get(entry.name)
    if status is None:
        pytest.skip(f"zoo not fetched ({fetch.CACHE}): run scripts/setup_zoo.sh")
    if status != "ok" or not fetch.data_path(entry.name, "small").is_file():
        pytest.skip(f"{entry.name} not fetched: {status}")
    if not os.access(check.EXITC, os.X_OK):
        pytest.skip(f"no exitc CLI at {check.EXITC}")
    calib, test = fetch.split_npz(fetch.data_path(entry.name, "small"), tmp_path)
    extra = ["--heads", "linear"] + (["--output", entry.prediction_output] if entry.prediction_output else [])
    out = tmp_path / "model.exitc"
    outcome = check.judge(fetch.model_path(entry.name), calib, test, out, 0.9, extra, timeout=300)
    ok, why = check.verdict(entry.classifier, outcome, entry.refusal)
    print(f"{entry.name}: {outcome.kind} in {outcome.seconds:.0f} s: {why}")  # shown with -rP
    assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
    assert ok, f"{entry.name} ({entry.exporter}, opset {entry.opset}): {why}"
    if outcome.kind == "refused":
        assert not out.exists()
    else:
        assert outcome.diffs.keys() == {"python", "cpp"}
