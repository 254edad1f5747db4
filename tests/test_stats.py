"""The guarantee's statistics, tested on simulated data."""

import numpy as np
import pytest

from exitc.stats import binomial_p_value, clopper_pearson_lower, fixed_sequence, max_target_for, min_rows_for


def test_clopper_pearson_known_values():
    # zero failures: the bound is alpha^(1/n)
    assert clopper_pearson_lower(300, 300, 0.95) == pytest.approx(0.05 ** (1 / 300), rel=1e-9)
    assert clopper_pearson_lower(0, 10, 0.95) == 0.0
    assert clopper_pearson_lower(95, 100, 0.95) < 0.95


def test_bound_and_test_agree():
    for n in (50, 300, 1000):
        for s in range(n - 20, n + 1):
            target = 0.97
            assert (clopper_pearson_lower(s, n, 0.9) >= target) == (binomial_p_value(s, n, target) <= 0.1 + 1e-12)


def test_min_rows():
    assert min_rows_for(0.99, 0.95) == 299
    assert clopper_pearson_lower(299, 299, 0.95) >= 0.99 > clopper_pearson_lower(298, 298, 0.95)
    assert min_rows_for(1.0, 0.95) == 0
    for rows in (50, 299, 1000):  # max_target_for inverts it: a perfect score on `rows` certifies it
        t = max_target_for(rows, 0.95)
        assert t == pytest.approx(clopper_pearson_lower(rows, rows, 0.95), rel=1e-9)
        assert min_rows_for(t - 1e-9, 0.95) <= rows < min_rows_for(t + 1e-6, 0.95)


def test_clopper_pearson_coverage_simulated():
    rng = np.random.default_rng(0)
    p, n, conf = 0.985, 800, 0.9
    draws = rng.binomial(n, p, size=4000)
    covered = np.mean([clopper_pearson_lower(int(k), n, conf) <= p for k in draws])
    assert covered >= conf - 0.01  # exact method: coverage at least nominal (minus MC noise)


def test_fixed_sequence_stops_at_first_failure():
    assert fixed_sequence([300, 300, 280, 300], 300, 0.98, 0.95) == 1
    assert fixed_sequence([200], 300, 0.98, 0.95) == -1


def test_fixed_sequence_controls_family_wise_error():
    """Configurations whose true agreement decreases past the target: the chance that any accepted
    configuration is below target must stay under alpha."""
    rng = np.random.default_rng(1)
    target, conf, n = 0.97, 0.9, 600
    true = np.linspace(0.995, 0.95, 25)  # true agreement of each configuration in the sequence
    bad = 0
    trials = 2000
    for _ in range(trials):
        succ = [int(rng.binomial(n, p)) for p in true]
        last = fixed_sequence(succ, n, target, conf)
        if last >= 0 and true[: last + 1].min() < target:
            bad += 1
    assert bad / trials <= (1 - conf) + 0.02
