"""Weight range estimators: a weight's values are all at hand, so each reads every one of them.

A weight is quantized per tensor, per output channel, or per group of
consecutive output channels (``channel_groups``: the MXNet tool's setting;
one group is per-tensor, as many groups as channels is per-channel). The
estimators work on rows, one per tensor, channel or group:
- minmax: each row's min and max;
- mse: ``[a min, a max]``, with the shrink factor a (a grid of 1/256 steps)
  minimising the squared error of the row quantized on the point's grid;
- norm: LSQ's step ``2 mean|w| / sqrt(P)`` times P, P the grid's positive levels;
- meanstd: ``mean +- k std`` (k = 3).
A range never reaches beyond the row's own min and max. A group's range is
repeated for each of its channels, so the model holds per-channel scales.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from qcompiler.config.backend import QuantizerSpec, WeightEstimatorConfig
from qcompiler.config.validate import refuse_bad_estimator
from qcompiler.quant.qmath import Grid, grid, qparams, resolve_signed

Range = tuple[np.ndarray, np.ndarray]
MSE_STEPS = 256      # shrink factors k / 256, k = 1..256
MSE_COARSE = 16      # every 16th first, then each one near the best


def weight_range(values: np.ndarray, axis: int | None) -> Range:
    """Min and max of a weight, per channel along ``axis`` or over the whole tensor."""
    lo, hi = _extrema(_rows(values, axis))
    return (lo, hi) if axis is not None else (lo.reshape(()), hi.reshape(()))


def estimate_weight(config: WeightEstimatorConfig, spec: QuantizerSpec, values: np.ndarray,
                    axis: int | None) -> Range:
    """The range ``config``'s estimator gives ``values``: per channel along ``axis`` (in groups if the
    spec says so), or per tensor when ``axis`` is None."""
    refuse_bad_estimator(config, WEIGHT_ESTIMATORS, "weight")
    estimator = WEIGHT_ESTIMATORS[config.estimator]
    rows = _rows(values, axis)
    row_lo, row_hi = _extrema(rows)   # read once: a weight may be hundreds of MB
    g = grid(spec, resolve_signed(spec, np.asarray(row_lo.min())))
    if axis is None:
        lo, hi = _bounded(estimator, rows, row_lo, row_hi, config, spec, g)
        return lo.reshape(()), hi.reshape(())
    groups = spec.channel_groups or len(rows)
    if groups >= len(rows):
        return _bounded(estimator, rows, row_lo, row_hi, config, spec, g)
    parts = np.array_split(np.arange(len(rows)), groups)
    ranges = [_bounded(estimator, rows[part].reshape(1, -1), row_lo[part].min(keepdims=True),
                       row_hi[part].max(keepdims=True), config, spec, g) for part in parts]
    sizes = [len(part) for part in parts]
    return (np.repeat([lo[0] for lo, _ in ranges], sizes), np.repeat([hi[0] for _, hi in ranges], sizes))


def _rows(values: np.ndarray, axis: int | None) -> np.ndarray:
    values = np.asarray(values, np.float32)
    if axis is None:
        return values.reshape(1, -1)
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def _extrema(rows: np.ndarray) -> Range:
    return rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)


def _bounded(estimator: Callable, rows: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray,
             config: WeightEstimatorConfig, spec: QuantizerSpec, g: Grid) -> Range:
    """The estimator's range for each row, never beyond the row's own min and max."""
    lo, hi = estimator(rows, row_lo, row_hi, config, spec, g)
    return np.maximum(lo, row_lo), np.minimum(hi, row_hi)


def _minmax(rows: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray, config: WeightEstimatorConfig,
            spec: QuantizerSpec, g: Grid) -> Range:
    return row_lo, row_hi


def _mse(rows: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray, config: WeightEstimatorConfig,
         spec: QuantizerSpec, g: Grid) -> Range:
    lo, hi = np.minimum(row_lo, 0.0), np.maximum(row_hi, 0.0)

    def errors(steps: np.ndarray) -> np.ndarray:   # (len(steps), rows); a step per candidate, or per candidate and row
        return np.stack([_squared_error(rows, lo * step / MSE_STEPS, hi * step / MSE_STEPS, spec, g)
                         for step in steps])

    coarse = np.arange(MSE_COARSE, MSE_STEPS + 1, MSE_COARSE)
    best = coarse[np.argmin(errors(coarse), axis=0)]
    offsets = np.arange(-MSE_COARSE + 1, MSE_COARSE)
    fine = np.clip(best[None, :] + offsets[:, None], 1, MSE_STEPS)          # (offsets, rows)
    chosen = fine[np.argmin(errors(fine), axis=0), np.arange(len(rows))] / MSE_STEPS
    return lo * chosen, hi * chosen


def _squared_error(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, spec: QuantizerSpec, g: Grid) -> np.ndarray:
    """Per row, the squared error of the row quantized on ``g`` for the range ``[lo, hi]`` (one per row)."""
    scale, zero_point = qparams(lo, hi, spec, g)
    scale = scale.astype(np.float32)[:, None]
    zero_point = zero_point.astype(np.float32)[:, None]
    q = np.clip(np.rint(rows / scale) + zero_point, *g.clamp)
    return np.square((q - zero_point) * scale - rows).sum(axis=1, dtype=np.float64)


def _norm(rows: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray, config: WeightEstimatorConfig,
          spec: QuantizerSpec, g: Grid) -> Range:
    levels = g.qmax if spec.symmetric or g.signed else g.qmax - g.qmin
    amax = 2 * np.abs(rows).mean(axis=1, dtype=np.float64) * np.sqrt(levels)
    return -amax, amax


def _meanstd(rows: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray, config: WeightEstimatorConfig,
             spec: QuantizerSpec, g: Grid) -> Range:
    k = config.k if config.k is not None else 3.0
    mean, std = rows.mean(axis=1, dtype=np.float64), rows.std(axis=1, dtype=np.float64)
    return mean - k * std, mean + k * std


# each: (rows, row minima, row maxima, config, spec, grid) -> (lo, hi) per row
WEIGHT_ESTIMATORS: dict[str, Callable[..., Range]] = {
    "minmax": _minmax,
    "mse": _mse,
    "norm": _norm,
    "meanstd": _meanstd,
}
