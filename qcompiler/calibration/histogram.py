"""One streamed histogram per tensor, and the range searches that read it.

``StreamedHistogram`` counts a tensor's values in ``2 * bins`` equal bins
over ``[-limit, limit]``. The limit is the power of two at or above the
largest magnitude seen: it starts at the first batch's and doubles as later
batches outgrow it. Doubling merges pairs of bins, so re-binning is exact,
the counts do not depend on how the data was batched, and the data span
between half and all of each side's bins. One pass over the data builds it.

The searches pick a range for a quantizer grid from the counts. Every
candidate goes through ``qparams``, the same scale and zero-point rules as
the compiled model, so a power-of-two, reduce_range, unsigned or asymmetric
grid is searched as the backend will run it:
- ``ErrorModel`` is the expected squared error of quantizing the histogram
  with a candidate range: rounding noise inside, exact distances beyond;
- ``mse_range`` shrinks both ends together (MQBench's MSE observer) to the
  factor with the least error; ``l2_range`` moves each end alone, in turn,
  until neither moves (PyTorch's HistogramObserver minimises the same L2
  error by a greedy walk that stops at its first increase);
- ``kl_range`` is TensorRT's entropy calibration: the threshold whose
  clipped distribution loses the least information (KL divergence) when
  merged into the grid's levels;
- ``percentile_range`` cuts a fraction of all values seen from each tail.
The error and KL searches are exhaustive at bin resolution: running sums
make each candidate cheap. KL's objective is its own (information lost), on
the grid's number of levels; its threshold then goes through ``qparams``
like any range.
"""
from __future__ import annotations

import math

import numpy as np

from qcompiler.config.backend import QuantizerSpec
from qcompiler.quant.qmath import Grid, qparams

DEFAULT_BINS = 2048


class StreamedHistogram:
    """Counts of one tensor's values in ``2 * bins`` equal bins over ``[-limit, limit]``, and their extrema."""

    def __init__(self, bins: int = DEFAULT_BINS):
        self.bins = bins
        self.counts = np.zeros(2 * bins, np.int64)
        self.limit = 0.0
        self.lo, self.hi = math.inf, -math.inf

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def width(self) -> float:
        return self.limit / self.bins

    def add(self, values: np.ndarray, lo: float, hi: float) -> None:
        """Count ``values``; ``lo`` and ``hi`` are the batch's exact extrema (``values`` may be a subsample)."""
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        magnitude = max(-lo, hi)
        if magnitude > self.limit:
            self._grow(magnitude)
        if self.limit == 0.0:   # only zeros so far: they belong to the first bin above 0
            self.counts[self.bins] += values.size
            return
        index = np.multiply(values, np.float32(self.bins / self.limit), dtype=np.float32)
        index += np.float32(self.bins)
        np.clip(index, 0, 2 * self.bins - 1, out=index)
        # uint16 indices: numpy's bincount reads them about 2x faster than int32
        self.counts += np.bincount(index.astype(np.uint16).ravel(), minlength=2 * self.bins)

    def _grow(self, magnitude: float) -> None:
        if self.limit == 0.0:
            # a power of two: then the final limit is the one above the largest magnitude, however
            # the data was batched, and so are the counts
            self.limit = float(2.0 ** math.ceil(math.log2(magnitude)))
            return
        factor = 1
        while self.limit * factor < magnitude:
            factor *= 2
        self.limit *= factor
        positive, negative = self.counts[self.bins:], self.counts[:self.bins][::-1]
        self.counts = np.concatenate([_merged(negative, factor)[::-1], _merged(positive, factor)])

    def edges(self) -> np.ndarray:
        """The ``2 * bins + 1`` bin edges, from -limit to limit."""
        return np.linspace(-self.limit, self.limit, 2 * self.bins + 1)

    def magnitudes(self) -> np.ndarray:
        """Counts of |x| in ``bins`` bins over ``[0, limit]``."""
        return self.counts[self.bins:] + self.counts[:self.bins][::-1]


def _merged(side: np.ndarray, factor: int) -> np.ndarray:
    """One side's counts (outward from 0) with every ``factor`` neighbours merged, padded with zeros."""
    bins = len(side)
    if factor >= bins:
        merged = np.array([side.sum()])
    else:
        merged = side.reshape(-1, factor).sum(axis=1)
    return np.concatenate([merged, np.zeros(bins - len(merged), side.dtype)])


def percentile_range(hist: StreamedHistogram, fraction: float) -> tuple[float, float]:
    """The ``1 - fraction`` and ``fraction`` quantiles of all values seen, linear within a bin."""
    total = hist.total
    if total == 0 or hist.limit == 0.0:
        return 0.0, 0.0
    tail = (1.0 - fraction) * total
    edges = hist.edges()
    cumulative = np.concatenate([[0], np.cumsum(hist.counts)])
    lo = float(np.interp(tail, cumulative, edges))
    hi = float(np.interp(total - tail, cumulative, edges))
    return max(lo, hist.lo), min(hi, hist.hi)


class ErrorModel:
    """The expected squared error of quantizing the histogram's values with a candidate range, O(log bins) each.

    A value inside the grid's clamp range is off by its rounding error, taken
    as uniform over a step (``s^2 / 12``), except within half a step of 0,
    where it rounds to 0 (a ReLU's zeros are exact); a value beyond the clamp
    range by its distance to the last level. Both exact distances integrate
    over the bin: ``(c - p)^2 + w^2 / 12`` for a bin of centre c and width w.
    The scale, zero point and clamp range of a candidate come from ``qparams``
    on the grid, so power-of-two scales,
    zero-point rounding and reduce_range are what is measured. Running sums
    over the bins make every candidate cost a binary search, so searches can
    be exhaustive.
    """

    def __init__(self, hist: StreamedHistogram, spec: QuantizerSpec, g: Grid):
        self.spec, self.grid = spec, g
        full = np.flatnonzero(hist.counts)
        counts = hist.counts[full].astype(np.float64)
        self.centres = hist.edges()[full] + hist.width / 2
        self.variance = hist.width ** 2 / 12
        self.total = max(counts.sum(), 1.0)
        zero = np.zeros(1)
        self.count = np.concatenate([zero, np.cumsum(counts)])
        self.first = np.concatenate([zero, np.cumsum(counts * self.centres)])
        self.second = np.concatenate([zero, np.cumsum(counts * self.centres ** 2)])

    def __call__(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        scale, zero_point = qparams(np.asarray(lo), np.asarray(hi), self.spec, self.grid)
        scale, zero_point = scale.astype(np.float64), zero_point.astype(np.float64)
        low, high = self.grid.clamp
        x_min, x_max = (low - zero_point) * scale, (high - zero_point) * scale
        below = np.searchsorted(self.centres, x_min, side="left")    # bins [0, below) lie under x_min
        above = np.searchsorted(self.centres, x_max, side="right")   # bins [above, end) lie over x_max
        # bins within half a step of 0 round to 0 (a ReLU's zeros have no rounding error)
        near_lo = np.searchsorted(self.centres, -scale / 2, side="right")
        near_hi = np.searchsorted(self.centres, scale / 2, side="left")
        n_below, n_above = self.count[below], self.count[-1] - self.count[above]
        n_near = self.count[near_hi] - self.count[near_lo]
        rounded = self.count[-1] - n_below - n_above - n_near
        under = _squared_distance(n_below, self.first[below], self.second[below], x_min)
        over = _squared_distance(n_above, self.first[-1] - self.first[above], self.second[-1] - self.second[above],
                                 x_max)
        near = self.second[near_hi] - self.second[near_lo]
        exact = under + over + near + (n_below + n_above + n_near) * self.variance
        return (rounded * scale ** 2 / 12 + exact) / self.total


def _squared_distance(count: np.ndarray, first: np.ndarray, second: np.ndarray, point: np.ndarray) -> np.ndarray:
    """``sum n (c - point)^2`` from the sums of n, n c and n c^2."""
    return second - 2 * point * first + count * point ** 2


def mse_range(hist: StreamedHistogram, spec: QuantizerSpec, g: Grid) -> tuple[float, float]:
    """``[a lo, a hi]`` for the shrink factor ``a`` in (0, 1], one bin a step, with the least error (every one)."""
    lo, hi = min(hist.lo, 0.0), max(hist.hi, 0.0)
    if hist.limit == 0.0:
        return lo, hi
    factors = shrink_factors(hist)
    best = factors[int(np.argmin(ErrorModel(hist, spec, g)(factors * lo, factors * hi)))]
    return float(best * lo), float(best * hi)


def shrink_factors(hist: StreamedHistogram) -> np.ndarray:
    """The factors that move the larger end of the range by one bin each, up to 1."""
    steps = max(1, math.ceil(max(-hist.lo, hist.hi) / hist.width))
    return np.arange(1, steps + 1) / steps


def l2_range(hist: StreamedHistogram, spec: QuantizerSpec, g: Grid) -> tuple[float, float]:
    """The range with the least error with each end free on the bin edges: every edge for one end, then for
    the other, until neither moves. A symmetric grid depends only on the larger end: one search."""
    lo, hi = min(hist.lo, 0.0), max(hist.hi, 0.0)
    if hist.limit == 0.0:
        return lo, hi
    if spec.symmetric:
        return mse_range(hist, spec, g)
    error = ErrorModel(hist, spec, g)
    width = hist.width
    lows = np.append(-np.arange(math.ceil(-lo / width)) * width, lo)    # 0, -w, -2w, ..., lo
    highs = np.append(np.arange(math.ceil(hi / width)) * width, hi)
    i, j = len(lows) - 1, len(highs) - 1
    for _ in range(16):   # alternating sweeps; two or three settle in practice
        j_new = int(np.argmin(error(np.full(len(highs), lows[i]), highs)))
        i_new = int(np.argmin(error(lows, np.full(len(lows), highs[j_new]))))
        if (i_new, j_new) == (i, j):
            break
        i, j = i_new, j_new
    return float(lows[i]), float(highs[j])


def kl_range(hist: StreamedHistogram, spec: QuantizerSpec, g: Grid) -> tuple[float, float]:
    """TensorRT's entropy calibration, on the grid's levels.

    A symmetric or signed grid thresholds |x| (TensorRT: 128 levels for
    int8); an asymmetric grid thresholds each side of zero separately, with
    the levels that side gets of the grid.
    """
    if hist.limit == 0.0:
        return 0.0, 0.0
    levels = g.qmax - g.qmin + 1
    if spec.symmetric or hist.lo >= 0.0 or hist.hi <= 0.0:
        magnitudes = hist.magnitudes() if hist.lo < 0.0 else hist.counts[hist.bins:]
        side_levels = levels // 2 if hist.lo < 0.0 and hist.hi > 0.0 or g.signed else levels
        threshold = kl_threshold(magnitudes, side_levels) * hist.width
        return max(-threshold, hist.lo), min(threshold, hist.hi)
    share = hist.hi / (hist.hi - hist.lo)
    high_levels = max(2, round(levels * share))
    high = kl_threshold(hist.counts[hist.bins:], high_levels) * hist.width
    low = kl_threshold(hist.counts[:hist.bins][::-1], max(2, levels - high_levels)) * hist.width
    return max(-low, hist.lo), min(high, hist.hi)


def kl_threshold(counts: np.ndarray, levels: int) -> int:
    """The number of bins (from the start of ``counts``) whose clipped distribution best survives ``levels`` levels.

    For each candidate ``i >= levels`` (TensorRT, with 2048 bins and 128
    levels): ``p`` is the first ``i`` bins with every count beyond added to
    the last; ``q`` merges those ``i`` bins into ``levels`` groups as even as
    whole bins allow (NVIDIA's pytorch-quantization; onnxruntime and MXNet
    give the remainder to the last group, which makes every candidate below
    ``2 levels`` nearly lossless) and spreads each group's count evenly over
    its non-empty bins. The threshold minimises KL(p || q). The first bin,
    where a ReLU's zeros pile up, counts as much as the second (as
    pytorch-quantization does): otherwise that one spike decides the
    threshold. All candidates at once from running sums, O(levels) each.
    """
    counts = np.array(counts, np.float64)
    if len(counts) > 1:   # the first bin holds every exact zero (a ReLU's half): counted as its neighbour
        counts[0] = counts[1]
    last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    if last <= levels:
        return max(last, 1)
    counts = counts[:last]
    total = counts.sum()
    candidates = np.arange(levels, last + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    nonzero = np.concatenate([[0], np.cumsum(counts > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.concatenate([[0.0], np.cumsum(np.where(counts > 0, counts * np.log(counts), 0.0))])
    # group g of candidate i: bins ceil(g i / levels) up to ceil((g + 1) i / levels), sizes differing by one at most
    starts = (np.arange(levels)[None, :] * candidates[:, None] + levels - 1) // levels
    ends = np.concatenate([starts[:, 1:], candidates[:, None]], axis=1)
    group_sum = cumulative[ends] - cumulative[starts]
    group_nonzero = nonzero[ends] - nonzero[starts]
    with np.errstate(divide="ignore", invalid="ignore"):
        level_value = np.where(group_nonzero > 0, group_sum / group_nonzero, 0.0)   # q in each non-empty bin
        log_level = np.where(level_value > 0, np.log(level_value), 0.0)
    last_bin = counts[candidates - 1]
    outliers = total - cumulative[candidates]
    # sum over bins of p log q, the last bin apart: each group's count times its level's log
    p_log_q = (group_sum * log_level).sum(axis=1) - last_bin * log_level[:, -1]
    p_log_p = plogp[candidates - 1]
    p_last = last_bin + outliers
    # q of the last bin: its group's level, or (an empty bin that took the outliers) a count of 1e-4, as smoothing does
    q_last = np.where(last_bin > 0, level_value[:, -1], 1e-4)
    with np.errstate(divide="ignore", invalid="ignore"):
        last_terms = np.where(p_last > 0, p_last * (np.log(p_last) - np.log(q_last)), 0.0)
    q_total = cumulative[candidates] + np.where(last_bin > 0, 0.0, 1e-4)
    # KL of the normalised distributions: sum p/P log((p/P) / (q/Q)); a q of nothing but smoothing loses all
    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = (p_log_p - p_log_q + last_terms) / total - math.log(total) + np.log(q_total)
    divergence[cumulative[candidates] == 0] = np.inf
    return int(candidates[int(np.argmin(divergence))])
