"""Range estimators: streaming statistics for activations, min/max for weights.

An activation estimator sees one batch at a time (``update``) and answers
the range ``(lo, hi)`` at the end. Memory is a few numbers per tensor,
whatever the number of samples. Names are those of BACKENDS.md section 3;
the schema (``config.backend.ESTIMATOR_PARAMETERS``) lists the ones that
exist here, so a backend file naming another is refused when it is loaded.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qcompiler.config.backend import EstimatorConfig, WeightEstimatorConfig
from qcompiler.config.validate import estimator_problem
from qcompiler.errors import UsageError


class Estimator:
    """Base: ``update(batch)`` with axis 0 the sample axis; ``range()`` at the end.

    An estimator that needs only each sample's min and max sets
    ``uses_sample_extrema`` and implements ``update_extrema``; the calibrator
    then reduces in onnxruntime and never copies the activations out.
    """

    uses_sample_extrema = False
    # below this many samples the estimate is one sample's, not the data's
    min_samples = 1

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
    min_samples = 8

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

    min_samples = 8

    def __init__(self, config: EstimatorConfig):
        self.fraction = config.percentile if config.percentile is not None else 0.9999
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
    """The activation estimator ``config`` names (a config built in code is checked as a file would be)."""
    if config.estimator not in ESTIMATORS:
        raise UsageError(
            f"activation estimator {config.estimator!r} is not implemented yet; available: {', '.join(ESTIMATORS)}"
        )
    problem = estimator_problem(config)
    if problem:
        raise UsageError(problem)
    return ESTIMATORS[config.estimator](config)


def weight_range(values: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of a weight, per channel along ``axis`` or over the whole tensor."""
    if axis is None:
        return np.asarray(values.min(), np.float64), np.asarray(values.max(), np.float64)
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return moved.min(axis=1).astype(np.float64), moved.max(axis=1).astype(np.float64)


WEIGHT_ESTIMATORS: dict[str, Callable[[np.ndarray, int | None], tuple[np.ndarray, np.ndarray]]] = {
    "minmax": weight_range,
}


def estimate_weight(config: WeightEstimatorConfig, values: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The range ``config``'s weight estimator gives ``values``, per channel along ``axis`` or per tensor."""
    if config.estimator not in WEIGHT_ESTIMATORS:
        raise UsageError(f"weight estimator {config.estimator!r} is not implemented yet; "
                         f"available: {', '.join(WEIGHT_ESTIMATORS)}")
    return WEIGHT_ESTIMATORS[config.estimator](values, axis)
