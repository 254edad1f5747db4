"""The profiling stage (exitc.profile): the cost model, given profiles, slice calibration, and a
real (short) measurement of a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from exitc.data import Dataset
from exitc.distill import FittedHead
from exitc.errors import ExitcError
from exitc.features import FeatureProbe
from exitc.passes import find_candidates, normalize
from exitc.passes.split import find_mask_input
from exitc.policy import CostModel, full_depth_overhead
from exitc.profile import NO_COST, Cost, Profile, calibrate_slices, given_profile, profile_costs, without_call

from synthetic import preprocessed_cnn, tiny_transformer, transformer_feeds, uint8_nhwc_cnn


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
    b = 8
    slices = [Cost(3e-4, 1e-5), Cost(5e-4, 3e-5), Cost(2e-4, 0.0), Cost(1e-4, 6e-5)]
    original = Cost(6e-4, 5e-5)
    out = calibrate_slices(slices, original, overhead=1e-4, batch=b)
    for rows in (1, b):  # the slices and one call add up to the original at both measured sizes
        assert sum(s.at(rows) for s in out) + 1e-4 == pytest.approx(original.at(rows))
        work = [s.at(rows) - 1e-4 for s in slices]  # relative work kept at each size
        assert [s.at(rows) / out[0].at(rows) for s in out] == pytest.approx([w / work[0] for w in work])
    # nothing to scale: zeros, never a division by zero
    assert calibrate_slices([Cost(0.0, 0.0)] * 2, original, 1e-4, b) == [Cost(0.0, 0.0)] * 2
    assert all(s.at(1) == 0.0 for s in calibrate_slices(slices, Cost(5e-5, 5e-6), overhead=1e-4, batch=b))


MODELS = {
    "cnn_input_exit": (preprocessed_cnn,
                       lambda n: {"x": np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)}),
    "transformer": (tiny_transformer, transformer_feeds),
    # its input exit reads a tensor recomputed from the graph input (candidates.Candidate.recomputed)
    "cnn_uint8_nhwc": (uint8_nhwc_cnn,
                       lambda n: {"img": np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3)).astype(np.uint8)}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_profile_costs_prices_every_slice_and_head(name):
    build, make_feeds = MODELS[name]
    model, _ = normalize(build(), feeds=make_feeds(3))
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
    # The call overhead is an estimate from two timings (intercepts, split slices minus the whole):
    # on a loaded machine every intercept can come out <= 0 and it is then 0 (seen once in a full
    # test run beside a compile), so only its sign and finiteness are the contract here.
    assert p.call_overhead >= 0 and math.isfinite(p.call_overhead) and p.original.at(16) > 0
    for c in p.slices + p.heads:  # the line may have a negative intercept (see Cost), never a negative price
        assert c.fixed + c.per_row >= 0 and c.fixed + 16 * c.per_row >= 0 and math.isfinite(c.at(16))
    assert all(h.at(1) + p.call_overhead > 0 for h in p.heads)
    for rows in (1, 16):  # calibrated: the slices and one call add up to the original at both sizes
        if sum(s.at(rows) for s in p.slices) > 0:
            assert sum(s.at(rows) for s in p.slices) + p.call_overhead == pytest.approx(p.original.at(rows))
    assert p.to_json()["batch_size"] == 16 and len(p.to_json()["heads"]) == len(cands)


# -- both measured batch sizes priced as measured (a row can cost more inside a large batch) --

B = 32


def test_line_runs_through_both_measured_points_even_with_a_negative_intercept():
    # cv_native's MobileNetV2: 6.3 ms alone, 16.2 ms a row at batch 32
    c = Cost.from_two(6.3e-3, 32 * 16.2e-3, B)
    assert c.fixed < 0
    assert np.isclose(c.at(1), 6.3e-3) and np.isclose(c.at(B), 32 * 16.2e-3)
    assert c.at(0) == 0.0


def test_a_negative_slope_from_noise_becomes_flat():
    c = Cost.from_two(2e-3, 1e-3, B)
    assert c.per_row == 0 and np.isclose(c.at(1), 2e-3) and np.isclose(c.at(B), 2e-3)


def test_calibrated_slices_add_up_to_the_original_at_both_batch_sizes():
    original = Cost.from_two(6.3e-3, 32 * 16.2e-3, B)
    # timed one by one the slices cost more than the whole model at batch 1
    slices = [NO_COST] + [Cost.from_two(t1, tb, B) for t1, tb in [(2.5e-3, 0.2), (3e-3, 0.25), (1.6e-3, 0.07)]]
    overhead = 0.06e-3
    cal = calibrate_slices(slices, original, overhead, B)
    assert cal[0] is NO_COST
    for rows in (1, B):
        assert np.isclose(sum(s.at(rows) for s in cal) + overhead, original.at(rows))
    # relative costs kept at each batch size
    assert np.isclose(cal[1].at(1) / cal[2].at(1), (2.5e-3 - overhead) / (3e-3 - overhead))
    assert np.isclose(cal[1].at(B) / cal[2].at(B), (0.2 - overhead) / (0.25 - overhead))


def test_full_depth_overhead_at_batch_1_uses_the_batch_1_cost():
    """The bug this replaces: with the intercept clipped at 0 the original cost 16.2 ms at batch 1
    and a 1 ms head looked like +6%; it is +16% of 6.3 ms."""
    original = Cost.from_two(6.3e-3, 32 * 16.2e-3, B)
    slices = calibrate_slices([Cost.from_two(3e-3, 0.25, B), Cost.from_two(3.3e-3, 0.27, B)], original, 0.0, B)
    head = without_call(Cost.from_two(1e-3, 0.01, B), 0.0, B)
    profile = Profile(B, original, slices, [head], 0.0)
    extra = full_depth_overhead(CostModel(profile), [0])
    assert np.isclose(extra["batch1"], 1e-3 / 6.3e-3, rtol=1e-6)
    assert np.isclose(extra[f"batch{B}"], 0.01 / (32 * 16.2e-3), rtol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-5, 1e-2), st.floats(1.0, 60.0)), min_size=1, max_size=6),
       st.floats(0.0, 1.0), st.integers(1, 64))
def test_expected_cost_is_never_negative(points, reach_scale, batch):
    """Negative intercepts must never make a segment that few rows reach look free or profitable."""
    costs = [Cost.from_two(t1, t1 * r, B) for t1, r in points]
    k = len(costs) - 1
    profile = Profile(B, Cost.from_two(1e-2, 0.5, B), costs, [Cost(0.0, 1e-6)] * k, 1e-5)
    cm = CostModel(profile)
    reach = np.array([1.0] + [reach_scale ** (i + 1) for i in range(k)])
    exits = list(range(k))
    total = float(cm.expected(exits, reach, batch))
    assert total >= 0
    # and no segment's share is below zero
    segs = cm.segments(exits)
    p_run = 1.0 - (1.0 - reach) ** batch
    parts = p_run * np.array([s.fixed for s in segs]) + reach * batch * np.array([s.per_row for s in segs])
    assert (parts >= -1e-12).all()


def test_cut_cost_is_the_slope_of_what_slices_cost_beyond_the_whole_model():
    from exitc.profile import cut_cost_per_row

    # 3 slices (2 cuts): beyond the original they cost 2e-4 at batch 1 and 2e-4 + 2 * 31 * 1e-5 at
    # batch 32, i.e. 1e-5 s a row per cut; an empty slice (before an input exit at cut 0) is no call
    original = Cost.from_two(1e-3, 1e-2, 32)
    slices = [NO_COST, Cost.from_two(4e-4, 4e-3, 32), Cost.from_two(4e-4, 4e-3, 32),
              Cost.from_two(4e-4, 2e-3 + 2e-4 + 2 * 31 * 1e-5, 32)]
    assert cut_cost_per_row(slices, original, 32) == pytest.approx(1e-5)
    slices[3] = Cost.from_two(4e-4, 1e-3, 32)  # slices cheaper than the whole at batch 32 (noise): no per-row cost
    assert cut_cost_per_row(slices, original, 32) == 0.0
    assert cut_cost_per_row([NO_COST, slices[1]], original, 32) == 0.0


def test_segments_after_the_first_pay_the_cut_per_row():
    from exitc.policy import CostModel

    p = Profile(32, Cost(1e-3, 1e-3), [Cost(0.0, 1e-4)] * 3, [Cost(0.0, 1e-6)] * 2, 1e-5, cut_per_row=2e-5)
    flat = Profile(32, Cost(1e-3, 1e-3), [Cost(0.0, 1e-4)] * 3, [Cost(0.0, 1e-6)] * 2, 1e-5)
    with_cut, without = CostModel(p).segments([0, 1]), CostModel(flat).segments([0, 1])
    assert with_cut[0] == without[0]
    for a, b in zip(with_cut[1:], without[1:]):
        assert a.per_row == pytest.approx(b.per_row + 2e-5) and a.fixed == b.fixed
    assert p.cut_to_lengths(0.5, 0.25).cut_per_row == pytest.approx(5e-6)
    assert p.to_json()["cut_per_row"] == 2e-5


def test_cut_to_lengths_prices_the_backbone_cut_and_keeps_the_users_original():
    """A token model cut to row lengths: the original and the slices cost the length factors of
    their full-length cost at both batch sizes, heads and the per-call cost stay, speedups stay
    relative to the padded original (user_original), and call_rows comes from the padded line."""
    from exitc.passes.sequence import length_factors
    from exitc.policy import Plan

    p = Profile(8, Cost(0.002, 0.001), [Cost(0.001, 0.0005), NO_COST, Cost(0.001, 0.0005)], [Cost(0.0, 1e-5)] * 2,
                1e-4)
    cut = p.cut_to_lengths(0.5, 0.75)
    assert cut.original.at(1) == pytest.approx(0.5 * p.original.at(1))
    assert cut.original.at(8) == pytest.approx(0.75 * p.original.at(8))
    assert cut.slices[0].at(8) == pytest.approx(0.75 * p.slices[0].at(8)) and cut.slices[1] is NO_COST
    assert cut.heads == p.heads and cut.call_overhead == p.call_overhead
    assert cut.user_original == p.original and p.user_original == p.original
    assert cut.call_rows() == p.call_rows() == pytest.approx(2.0)
    assert cut.to_json()["padded_original"] == {"fixed": 0.002, "per_row": 0.001}
    # The plan without exits runs the model cut: predicted faster than the user's original.
    plain = Plan.without_exits(0.99, 0.95, "none", 0, 0, p.original.at(8), p.original.at(1), None,
                               cut.original.at(8), cut.original.at(1))
    assert plain.predicted_speedup == pytest.approx(1 / 0.75)
    # Rows of one length gain nothing; shorter rows gain, never beyond their share of the length.
    assert length_factors(np.full(100, 16), 2.0, 16, 8) == pytest.approx((1.0, 1.0))
    f1, fb = length_factors(np.full(100, 4), 2.0, 16, 8)
    assert f1 == pytest.approx((2.0 + 0.25) / 3.0) and fb == pytest.approx((2.0 + 8 * 0.25) / 10.0)
    mixed = np.random.default_rng(0).integers(1, 17, size=500)
    f1, fb = length_factors(mixed, 2.0, 16, 8)
    assert 0.25 < f1 < 1.0 and 0.25 < fb < 1.0
