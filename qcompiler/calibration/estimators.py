"""Activation range estimators: streaming statistics, a batch at a time, a range at the end.

An estimator sees each batch as ``BatchStatistics``: every sample's exact
min and max, and, if it asks, the batch's moments (sum, sum of squares, sum
of magnitudes) or its values (for a histogram; possibly an even subsample,
see calibration/observer.py). The observer computes these in onnxruntime, so
the estimators that ask for no values never see the activations. Memory is a
few numbers per tensor, or one histogram. Names and parameters are those of
BACKENDS.md section 3 and ``config.backend.ESTIMATOR_PARAMETERS``.

A range is the estimator's, then widened to contain 0 and turned into a
scale by ``qparams``. Estimators that search (mse, kl, histogram_l2) search
on the quantizer grid the point will use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.calibration import histogram
from qcompiler.config.backend import EstimatorConfig, QuantizerSpec
from qcompiler.config.validate import refuse_bad_estimator
from qcompiler.quant.qmath import Grid, grid, resolve_signed

MOMENTS, VALUES = "moments", "values"


@dataclass
class BatchStatistics:
    """What an estimator sees of one batch of one tensor (axis 0 of every array: the samples)."""

    sample_min: np.ndarray
    sample_max: np.ndarray
    size: int = 0                          # values in one sample
    sum: float = 0.0                       # over the batch (moments)
    sum_squares: float = 0.0
    sum_magnitudes: float = 0.0
    values: np.ndarray | None = None       # the batch's values, or an even subsample of them


def statistics_of(batch: np.ndarray, needs: frozenset[str]) -> BatchStatistics:
    """``BatchStatistics`` of a whole batch in numpy: the observer's fallback, and the tests' reference."""
    batch = np.asarray(batch, np.float32)
    flat = batch.reshape(batch.shape[0], -1) if batch.ndim else batch.reshape(1, 1)
    stats = BatchStatistics(flat.min(axis=1), flat.max(axis=1), flat.shape[1])
    if MOMENTS in needs:
        wide = flat.astype(np.float64)
        stats.sum, stats.sum_squares = float(wide.sum()), float(np.square(wide).sum())
        stats.sum_magnitudes = float(np.abs(wide).sum())
    if VALUES in needs:
        stats.values = flat
    return stats


class Estimator:
    """Base: ``update(statistics)`` per batch, ``range()`` at the end, for quantizer ``spec``."""

    needs: ClassVar[frozenset[str]] = frozenset()
    # below this many samples the estimate is one sample's, not the data's
    min_samples: ClassVar[int] = 1

    def __init__(self, config: EstimatorConfig, spec: QuantizerSpec):
        self.config, self.spec = config, spec
        self.lo, self.hi = math.inf, -math.inf
        self.samples = 0

    def update(self, stats: BatchStatistics) -> None:
        self.lo = min(self.lo, float(np.min(stats.sample_min)))
        self.hi = max(self.hi, float(np.max(stats.sample_max)))
        self.samples += len(stats.sample_min)
        self.observe(stats)

    def observe(self, stats: BatchStatistics) -> None:
        """What a subclass keeps of a batch besides the extrema."""

    def range(self) -> tuple[float, float]:
        if self.samples == 0:
            return 0.0, 0.0
        lo, hi = self.estimate()
        return max(lo, self.lo), min(hi, self.hi)   # never beyond what was seen

    def estimate(self) -> tuple[float, float]:
        raise NotImplementedError

    def grid(self) -> Grid:
        """The grid the range will map onto: its signedness follows the data's minimum, as in set_range."""
        return grid(self.spec, resolve_signed(self.spec, np.asarray(min(self.lo, 0.0))))


class MinMax(Estimator):
    """``[min x, max x]`` over every value seen."""

    def estimate(self) -> tuple[float, float]:
        return self.lo, self.hi


class EmaMinMax(Estimator):
    """Each batch's min and max, averaged with momentum m (0.9): ``r <- m r + (1 - m) r_batch`` (MQBench).

    The answer depends on how the data is batched, by design.
    """

    def __init__(self, config: EstimatorConfig, spec: QuantizerSpec):
        super().__init__(config, spec)
        self.momentum = config.momentum if config.momentum is not None else 0.9
        self.running: tuple[float, float] | None = None

    def observe(self, stats: BatchStatistics) -> None:
        batch = float(np.min(stats.sample_min)), float(np.max(stats.sample_max))
        if self.running is None:
            self.running = batch
        else:
            m = self.momentum
            self.running = tuple(m * old + (1 - m) * new for old, new in zip(self.running, batch))

    def estimate(self) -> tuple[float, float]:
        return self.running


class MeanMax(Estimator):
    """The mean over samples of each sample's min and max (OpenVINO's default)."""

    min_samples = 8

    def __init__(self, config: EstimatorConfig, spec: QuantizerSpec):
        super().__init__(config, spec)
        self.lo_sum = self.hi_sum = 0.0

    def observe(self, stats: BatchStatistics) -> None:
        self.lo_sum += float(np.sum(stats.sample_min, dtype=np.float64))
        self.hi_sum += float(np.sum(stats.sample_max, dtype=np.float64))

    def estimate(self) -> tuple[float, float]:
        return self.lo_sum / self.samples, self.hi_sum / self.samples


class _Moments(Estimator):
    """Running sums over every value: count, sum, sum of squares, sum of magnitudes."""

    needs = frozenset({MOMENTS})

    def __init__(self, config: EstimatorConfig, spec: QuantizerSpec):
        super().__init__(config, spec)
        self.count = 0
        self.sum = self.sum_squares = self.sum_magnitudes = 0.0

    def observe(self, stats: BatchStatistics) -> None:
        self.count += stats.size * len(stats.sample_min)
        self.sum += stats.sum
        self.sum_squares += stats.sum_squares
        self.sum_magnitudes += stats.sum_magnitudes


class MeanStd(_Moments):
    """``mean +- k std`` over every value (k = 3; LSQ+ uses 3, DSQ 2.6)."""

    def estimate(self) -> tuple[float, float]:
        k = self.config.k if self.config.k is not None else 3.0
        mean = self.sum / self.count
        std = math.sqrt(max(self.sum_squares / self.count - mean * mean, 0.0))
        return mean - k * std, mean + k * std


class Norm(_Moments):
    """LSQ's initial step ``s = 2 mean|x| / sqrt(P)``, P the grid's positive levels; the range is ``+- s P``."""

    def estimate(self) -> tuple[float, float]:
        g = self.grid()
        levels = g.qmax if self.spec.symmetric or g.signed else g.qmax - g.qmin
        amax = 2 * self.sum_magnitudes / self.count * math.sqrt(levels)
        return -amax, amax


class _Histogram(Estimator):
    """One streamed histogram of every value seen (calibration/histogram.py)."""

    needs = frozenset({VALUES})

    def __init__(self, config: EstimatorConfig, spec: QuantizerSpec):
        super().__init__(config, spec)
        self.histogram = histogram.StreamedHistogram(config.bins or histogram.DEFAULT_BINS)

    def observe(self, stats: BatchStatistics) -> None:
        self.histogram.add(stats.values, float(np.min(stats.sample_min)), float(np.max(stats.sample_max)))


class Percentile(_Histogram):
    """The ``1 - p`` and ``p`` quantiles (p = 0.9999) of all values seen, from the histogram."""

    min_samples = 8

    def estimate(self) -> tuple[float, float]:
        fraction = self.config.percentile if self.config.percentile is not None else 0.9999
        return histogram.percentile_range(self.histogram, fraction)


class Mse(_Histogram):
    """``[a min, a max]`` with the shrink factor a minimising the quantization MSE on the point's grid."""

    def estimate(self) -> tuple[float, float]:
        return histogram.mse_range(self.histogram, self.spec, self.grid())


class Kl(_Histogram):
    """TensorRT entropy calibration: the threshold minimising KL(clipped || quantized), on the grid's levels."""

    def estimate(self) -> tuple[float, float]:
        return histogram.kl_range(self.histogram, self.spec, self.grid())


class HistogramL2(_Histogram):
    """PyTorch HistogramObserver's objective: the range (each end free) minimising the L2 quantization error."""

    def estimate(self) -> tuple[float, float]:
        return histogram.l2_range(self.histogram, self.spec, self.grid())


ESTIMATORS: dict[str, type[Estimator]] = {
    "minmax": MinMax,
    "ema_minmax": EmaMinMax,
    "mean_max": MeanMax,
    "meanstd": MeanStd,
    "norm": Norm,
    "percentile": Percentile,
    "mse": Mse,
    "kl": Kl,
    "histogram_l2": HistogramL2,
}


def make_estimator(config: EstimatorConfig, spec: QuantizerSpec) -> Estimator:
    """The activation estimator ``config`` names, for ``spec`` (a config built in code is checked as a file is)."""
    refuse_bad_estimator(config, ESTIMATORS, "activation")
    return ESTIMATORS[config.estimator](config, spec)
