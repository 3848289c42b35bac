"""Estimators stream: the same answer however the data is batched, and bounded state."""
from __future__ import annotations

import numpy as np
import pytest

from qcompiler.calibration.estimators import make_estimator, weight_range
from qcompiler.config.backend import EstimatorConfig
from qcompiler.errors import UsageError

DATA = np.random.default_rng(0).normal(0, 1, (12, 3, 8, 8)).astype(np.float32)


def run(name: str, batch: int, **params) -> tuple[float, float]:
    estimator = make_estimator(EstimatorConfig(estimator=name, **params))
    for start in range(0, len(DATA), batch):
        estimator.update(DATA[start: start + batch])
    return estimator.range()


@pytest.mark.parametrize("name", ["minmax", "mean_max", "percentile"])
def test_batching_does_not_change_the_range(name):
    np.testing.assert_allclose(run(name, 1), run(name, 5), rtol=1e-12)


def test_values():
    assert run("minmax", 4) == (float(DATA.min()), float(DATA.max()))
    per_sample = DATA.reshape(12, -1)
    np.testing.assert_allclose(run("mean_max", 4), (per_sample.min(1).mean(), per_sample.max(1).mean()), rtol=1e-6)
    lo, hi = run("percentile", 4, percentile=0.99)
    assert per_sample.min(1).mean() < lo < 0 < hi < per_sample.max(1).mean()
    assert run("percentile", 4, percentile=1.0) == pytest.approx(run("mean_max", 4))


def test_unknown_and_invalid_estimators_are_usage_errors():
    with pytest.raises(UsageError, match="'kl' is not implemented yet; available: minmax, mean_max, percentile"):
        make_estimator(EstimatorConfig(estimator="kl"))
    with pytest.raises(UsageError, match="percentile 0.2 must be in"):
        make_estimator(EstimatorConfig(estimator="percentile", percentile=0.2))


def test_weight_range_per_channel():
    weight = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10
    lo, hi = weight_range(weight, 1)
    np.testing.assert_array_equal(lo, weight.transpose(1, 0, 2).reshape(3, -1).min(1))
    np.testing.assert_array_equal(hi, weight.transpose(1, 0, 2).reshape(3, -1).max(1))
    assert weight_range(weight, None) == (-10, 13)
