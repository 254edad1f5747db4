"""The profiling stage (exitc.profile): the cost model, given profiles, slice calibration, and a
real (short) measurement of a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exitc.data import Dataset
from exitc.distill import FittedHead
from exitc.errors import ExitcError
from exitc.features import FeatureProbe
from exitc.passes import find_candidates, normalize
from exitc.passes.split import find_mask_input
from exitc.profile import NO_COST, Cost, Profile, calibrate_slices, given_profile, profile_costs

from synthetic import preprocessed_cnn, tiny_transformer, transformer_feeds


def test_cost_from_two_batch_sizes():
    c = Cost.from_two(3e-3, 10e-3, 8)  # 7 ms more for 7 more rows
    assert c.per_row == pytest.approx(1e-3) and c.fixed == pytest.approx(2e-3)
    assert c.at(1) == pytest.approx(3e-3) and c.at(8) == pytest.approx(10e-3) and c.at(0) == c.fixed
    flat = Cost.from_two(5e-3, 4e-3, 8)  # noise: the batch measured faster than one row
    assert flat.per_row == 0.0 and flat.fixed == pytest.approx(5e-3)
    one = Cost.from_two(2e-3, 2e-3, 1)  # a single batch size: all of it per row
    assert one == Cost(0.0, 2e-3)
    assert NO_COST.at(100) == 0.0


def _profile(k: int) -> Profile:
    return Profile(8, Cost(1e-3, 1e-4), [Cost(1e-4, 1e-5)] * (k + 1), [Cost(1e-6, 1e-7)] * k, 5e-5)


def test_given_profile_is_checked_against_the_candidates():
    cands = ["c0", "c1", "c2"]  # given_profile only counts them
    seen = []

    def costs(candidates, batch_size):
        seen.append((list(candidates), batch_size))
        return _profile(len(candidates))

    p = given_profile(costs, cands, 16)
    assert seen == [(cands, 16)] and len(p.heads) == 3 and len(p.slices) == 4
    with pytest.raises(ExitcError, match=r"2 heads and 4 slices; 3 candidates need 3 and 4"):
        given_profile(lambda c, b: Profile(8, Cost(0, 0), [Cost(0, 0)] * 4, [Cost(0, 0)] * 2, 0.0), cands, 16)
    with pytest.raises(ExitcError, match=r"3 heads and 3 slices; 3 candidates need 3 and 4"):
        given_profile(lambda c, b: Profile(8, Cost(0, 0), [Cost(0, 0)] * 3, [Cost(0, 0)] * 3, 0.0), cands, 16)


def test_calibrate_slices_adds_up_to_the_original_and_keeps_proportions():
    slices = [Cost(3e-4, 1e-5), Cost(5e-4, 3e-5), Cost(2e-4, 0.0), Cost(1e-4, 6e-5)]
    original = Cost(6e-4, 5e-5)
    out = calibrate_slices(slices, original, overhead=1e-4)
    assert sum(s.per_row for s in out) == pytest.approx(original.per_row)
    assert sum(s.fixed for s in out) == pytest.approx(original.fixed - 1e-4)
    # relative costs kept: per row 1:3:0:6, fixed work (fixed - overhead) 2:4:1:0
    assert [s.per_row / out[0].per_row for s in out] == pytest.approx([1, 3, 0, 6])
    assert [s.fixed / out[2].fixed for s in out] == pytest.approx([2, 4, 1, 0])
    # nothing to scale: zeros, never a division by zero
    assert calibrate_slices([Cost(0.0, 0.0)] * 2, original, 1e-4) == [Cost(0.0, 0.0)] * 2
    assert all(s.fixed == 0.0 for s in calibrate_slices(slices, Cost(5e-5, 5e-5), overhead=1e-4))


MODELS = {
    "cnn_input_exit": (preprocessed_cnn,
                       lambda n: {"x": np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)}),
    "transformer": (tiny_transformer, transformer_feeds),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_profile_costs_prices_every_slice_and_head(name):
    build, make_feeds = MODELS[name]
    model, _ = normalize(build())
    cands = find_candidates(model)
    mask = find_mask_input(model)
    data = Dataset(make_feeds(24), None, "rows")
    cache = FeatureProbe(model, cands, mask).collect(data, progress=False)
    classes = cache.outputs.shape[1]
    heads = [FittedHead(c, "linear", [(np.zeros((f.shape[1], classes), np.float32), np.zeros(classes, np.float32))],
                        np.zeros(3, np.float32), 0.0, np.ones(24, bool), np.zeros(24, np.float32), 1.0)
             for c, f in zip(cands, cache.features)]
    p = profile_costs(model, heads, mask, data, batch_size=16, elem_types={}, reps_b1=3, reps_bn=2, progress=False)
    assert p.batch_size == 16 and len(p.slices) == len(cands) + 1 and len(p.heads) == len(cands)
    # every head and every slice with work was timed, at both batch sizes, and took time
    timed = [f"head{k}" for k in range(len(cands))] + ["original"]
    timed += [f"slice{k}" for k in range(len(cands) + 1) if f"slice{k}" in p.timings]
    assert len(timed) >= 2 * len(cands) + 1, "at most the slice before an input exit at cut 0 is empty"
    for name_ in timed:
        assert set(p.timings[name_]) == {"batch1", "batch16"} and min(p.timings[name_].values()) > 0, name_
    # the costs: non-negative, finite, and every head and slice costs something once called
    assert p.call_overhead > 0 and p.original.at(16) > 0
    for c in p.slices + p.heads:
        assert c.fixed >= 0 and c.per_row >= 0 and math.isfinite(c.at(16))
    assert all(h.at(1) + p.call_overhead > 0 for h in p.heads)
    if sum(s.per_row for s in p.slices) > 0:  # calibrated: the slices add up to the original per row
        assert sum(s.per_row for s in p.slices) == pytest.approx(p.original.per_row)
    assert p.to_json()["batch_size"] == 16 and len(p.to_json()["heads"]) == len(cands)
