"""Statistics for the agreement guarantee.

The guarantee (Learn-then-Test with fixed-sequence testing): configurations are ordered from
conservative to aggressive *before* looking at the certification split. For each in turn we test
H0: "true agreement < target" with an exact one-sided binomial test (equivalently: the
Clopper-Pearson lower confidence bound is >= target) at level alpha = 1 - confidence, and stop at
the first configuration that fails. Fixed-sequence testing controls the family-wise error rate at
alpha without any correction, so with probability >= confidence every accepted configuration, and
in particular the chosen one, has true agreement >= target on the calibration distribution.
"""

from __future__ import annotations

import math

from scipy.stats import beta, binom


def clopper_pearson_lower(successes: int, n: int, confidence: float) -> float:
    """One-sided lower confidence bound for a binomial proportion."""
    if n <= 0 or successes <= 0:
        return 0.0
    alpha = 1.0 - confidence
    return float(beta.ppf(alpha, successes, n - successes + 1))


def binomial_p_value(successes: int, n: int, target: float) -> float:
    """P(X >= successes) for X ~ Binomial(n, target): small values reject 'agreement < target'."""
    if successes <= 0:
        return 1.0
    return float(binom.sf(successes - 1, n, target))


def min_rows_for(target: float, confidence: float) -> int:
    """Smallest certification split on which a perfect score can still certify `target`."""
    if target >= 1.0:
        return 0
    return int(math.ceil(math.log(1.0 - confidence) / math.log(target)))


def max_target_for(rows: int, confidence: float) -> float:
    """The inverse of min_rows_for: the highest target a perfect score on `rows` certification
    rows certifies (before rounding; min_rows_for of it is at most `rows`)."""
    return (1.0 - confidence) ** (1.0 / rows)


def fixed_sequence(successes: list[int], n: int, target: float, confidence: float) -> int:
    """Index of the last configuration accepted by fixed-sequence testing, or -1 if none."""
    alpha = 1.0 - confidence
    last = -1
    for i, s in enumerate(successes):
        if binomial_p_value(s, n, target) <= alpha:
            last = i
        else:
            break
    return last
