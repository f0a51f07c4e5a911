"""The conformal spread pilot (tools/spread_pilot.py): its spread factor and one split's coverage and width."""

import numpy as np

from tools.spread_pilot import MIN_FACTOR, one_split, spread_factor


def _cases(n: int, spread_matters: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    true = rng.uniform(10, 220, n)
    sd = rng.gamma(2.0, 2.0, n)
    noise = sd if spread_matters else np.full(n, sd.mean())
    return true + rng.normal(0, 1, n) * noise, true, sd


def test_spread_factor_is_one_without_spread_and_floored_with_it():
    sd = np.array([0.0, 1.0, 4.0, 9.0])
    fit = np.arange(4)
    assert np.array_equal(spread_factor(sd, np.ones(4), fit, 0.0), np.ones(4))
    ratio = np.array([4.0, 3.0, 2.0, 0.0])
    b, a = np.polyfit(sd, ratio, 1)
    raw = a + b * sd
    assert raw[-1] < 0  # the line fitted to these cases goes below zero at the largest spread
    falling = spread_factor(sd, ratio, fit, 1.0)
    assert np.allclose(falling[:-1], raw[:-1]) and np.isclose(falling[-1], MIN_FACTOR * raw.mean())


def test_the_spread_narrows_the_interval_only_when_the_errors_follow_it():
    for matters in (True, False):
        pred, true, sd = _cases(3000, matters)
        result = one_split(pred, true, sd, np.random.default_rng(1), 0.9)
        for coverage, _ in result.values():
            assert 0.86 <= coverage <= 0.94
        if matters:
            assert result[1.0][1] < 0.9 * result[0.0][1]
        else:
            assert result[1.0][1] > 0.97 * result[0.0][1]
