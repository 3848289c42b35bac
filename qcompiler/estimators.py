"""Activation range estimators: streaming statistics, never all activations.

An estimator sees one batch at a time (``update``) and answers the range
``(lo, hi)`` at the end. Memory is a few numbers per tensor, whatever the
number of samples. Names are those of BACKENDS.md section 3; the ones not
here yet are refused by ``make_estimator`` with the list of those that are.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qcompiler.backend import EstimatorConfig
from qcompiler.errors import UsageError


class Estimator:
    """Base: ``update(batch)`` with axis 0 the sample axis; ``range()`` at the end.

    An estimator that needs only each sample's min and max sets
    ``uses_sample_extrema`` and implements ``update_extrema``; the calibrator
    then reduces in onnxruntime and never copies the activations out.
    """

    uses_sample_extrema = False

    def update(self, batch: np.ndarray) -> None:
        per_sample = batch.reshape(batch.shape[0], -1)
        self.update_extrema(per_sample.min(axis=1), per_sample.max(axis=1))

    def update_extrema(self, sample_min: np.ndarray, sample_max: np.ndarray) -> None:
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        raise NotImplementedError


class MinMax(Estimator):
    """The smallest and largest value seen."""

    uses_sample_extrema = True

    def __init__(self, config: EstimatorConfig):
        self.lo, self.hi = np.inf, -np.inf

    def update_extrema(self, sample_min: np.ndarray, sample_max: np.ndarray) -> None:
        self.lo = min(self.lo, float(np.min(sample_min)))
        self.hi = max(self.hi, float(np.max(sample_max)))

    def range(self) -> tuple[float, float]:
        return (self.lo, self.hi) if self.lo <= self.hi else (0.0, 0.0)


class MeanMax(Estimator):
    """Mean over samples of each sample's min and max (OpenVINO's default)."""

    uses_sample_extrema = True

    def __init__(self, config: EstimatorConfig):
        self.lo_sum = self.hi_sum = 0.0
        self.count = 0

    def update_extrema(self, sample_min: np.ndarray, sample_max: np.ndarray) -> None:
        self.lo_sum += float(np.sum(sample_min, dtype=np.float64))
        self.hi_sum += float(np.sum(sample_max, dtype=np.float64))
        self.count += len(sample_min)

    def range(self) -> tuple[float, float]:
        return (self.lo_sum / self.count, self.hi_sum / self.count) if self.count else (0.0, 0.0)


class Percentile(Estimator):
    """Mean over samples of each sample's (1 - p) and p quantiles (p = 0.9999 by default)."""

    def __init__(self, config: EstimatorConfig):
        self.fraction = config.percentile if config.percentile is not None else 0.9999
        if not 0.5 < self.fraction <= 1.0:
            raise UsageError(f"percentile {self.fraction} must be in (0.5, 1]; e.g. 0.9999")
        self.lo_sum = self.hi_sum = 0.0
        self.count = 0

    def update(self, batch: np.ndarray) -> None:
        for sample in batch.reshape(batch.shape[0], -1):
            n = sample.size
            k_hi = min(n - 1, int(np.ceil(self.fraction * n)) - 1)
            k_lo = max(0, n - 1 - k_hi)
            parted = np.partition(sample, (k_lo, k_hi))
            self.lo_sum += float(parted[k_lo])
            self.hi_sum += float(parted[k_hi])
            self.count += 1

    def range(self) -> tuple[float, float]:
        return (self.lo_sum / self.count, self.hi_sum / self.count) if self.count else (0.0, 0.0)


ESTIMATORS: dict[str, Callable[[EstimatorConfig], Estimator]] = {
    "minmax": MinMax,
    "mean_max": MeanMax,
    "percentile": Percentile,
}


def make_estimator(config: EstimatorConfig) -> Estimator:
    if config.estimator not in ESTIMATORS:
        raise UsageError(
            f"activation estimator {config.estimator!r} is not implemented yet; available: {', '.join(ESTIMATORS)}"
        )
    return ESTIMATORS[config.estimator](config)


def weight_range(values: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of a weight, per channel along ``axis`` or over the whole tensor."""
    if axis is None:
        return np.asarray(values.min(), np.float64), np.asarray(values.max(), np.float64)
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return moved.min(axis=1).astype(np.float64), moved.max(axis=1).astype(np.float64)
