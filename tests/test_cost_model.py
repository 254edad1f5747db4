"""The profile's cost model (exitc.profile.Cost, calibrate_slices) prices both measured batch sizes
as measured, also where a row costs more inside a large batch than alone (CPU caches)."""

import numpy as np
from hypothesis import given, settings, strategies as st

from exitc.policy import CostModel, full_depth_overhead
from exitc.profile import NO_COST, Cost, Profile, calibrate_slices, without_call

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
