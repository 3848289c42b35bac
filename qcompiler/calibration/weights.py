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
    rows = _rows(values, axis)
    lo, hi = rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)
    return (lo, hi) if axis is not None else (lo.reshape(()), hi.reshape(()))


def estimate_weight(config: WeightEstimatorConfig, spec: QuantizerSpec, values: np.ndarray,
                    axis: int | None) -> Range:
    """The range ``config``'s estimator gives ``values``: per channel along ``axis`` (in groups if the
    spec says so), or per tensor when ``axis`` is None."""
    refuse_bad_estimator(config, WEIGHT_ESTIMATORS, "weight")
    estimator = WEIGHT_ESTIMATORS[config.estimator]
    rows = _rows(values, axis)
    g = grid(spec, resolve_signed(spec, np.asarray(rows.min())))
    if axis is None:
        lo, hi = _bounded(estimator, rows, config, spec, g)
        return lo.reshape(()), hi.reshape(())
    groups = spec.channel_groups or len(rows)
    if groups >= len(rows):
        return _bounded(estimator, rows, config, spec, g)
    ranges = [_bounded(estimator, group.reshape(1, -1), config, spec, g) for group in np.array_split(rows, groups)]
    sizes = [len(group) for group in np.array_split(rows, groups)]
    return (np.repeat([lo[0] for lo, _ in ranges], sizes), np.repeat([hi[0] for _, hi in ranges], sizes))


def _rows(values: np.ndarray, axis: int | None) -> np.ndarray:
    values = np.asarray(values, np.float32)
    if axis is None:
        return values.reshape(1, -1)
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def _bounded(estimator: Callable, rows: np.ndarray, config: WeightEstimatorConfig, spec: QuantizerSpec,
             g: Grid) -> Range:
    lo, hi = estimator(rows, config, spec, g)
    row_lo, row_hi = rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)
    return np.maximum(lo, row_lo), np.minimum(hi, row_hi)


def _minmax(rows: np.ndarray, config: WeightEstimatorConfig, spec: QuantizerSpec, g: Grid) -> Range:
    return rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)


def _mse(rows: np.ndarray, config: WeightEstimatorConfig, spec: QuantizerSpec, g: Grid) -> Range:
    lo, hi = _minmax(rows, config, spec, g)
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)

    def errors(steps: np.ndarray) -> np.ndarray:   # (len(steps), rows)
        return np.stack([_squared_error(rows, lo * step / MSE_STEPS, hi * step / MSE_STEPS, spec, g)
                         for step in steps])

    coarse = np.arange(MSE_COARSE, MSE_STEPS + 1, MSE_COARSE)
    best = coarse[np.argmin(errors(coarse), axis=0)]
    offsets = np.arange(-MSE_COARSE + 1, MSE_COARSE)
    fine = np.clip(best[None, :] + offsets[:, None], 1, MSE_STEPS)          # (offsets, rows)
    fine_errors = np.stack([_squared_error(rows, lo * f / MSE_STEPS, hi * f / MSE_STEPS, spec, g) for f in fine])
    chosen = fine[np.argmin(fine_errors, axis=0), np.arange(len(rows))] / MSE_STEPS
    return lo * chosen, hi * chosen


def _squared_error(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, spec: QuantizerSpec, g: Grid) -> np.ndarray:
    """Per row, the squared error of the row quantized on ``g`` for the range ``[lo, hi]`` (one per row)."""
    scale, zero_point = qparams(lo, hi, spec, g)
    scale = scale.astype(np.float32)[:, None]
    zero_point = zero_point.astype(np.float32)[:, None]
    q = np.clip(np.rint(rows / scale) + zero_point, *g.clamp)
    return np.square((q - zero_point) * scale - rows).sum(axis=1, dtype=np.float64)


def _norm(rows: np.ndarray, config: WeightEstimatorConfig, spec: QuantizerSpec, g: Grid) -> Range:
    levels = g.qmax if spec.symmetric or g.signed else g.qmax - g.qmin
    amax = 2 * np.abs(rows).mean(axis=1, dtype=np.float64) * np.sqrt(levels)
    return -amax, amax


def _meanstd(rows: np.ndarray, config: WeightEstimatorConfig, spec: QuantizerSpec, g: Grid) -> Range:
    k = config.k if config.k is not None else 3.0
    mean, std = rows.mean(axis=1, dtype=np.float64), rows.std(axis=1, dtype=np.float64)
    return mean - k * std, mean + k * std


WEIGHT_ESTIMATORS: dict[str, Callable[[np.ndarray, WeightEstimatorConfig, QuantizerSpec, Grid], Range]] = {
    "minmax": _minmax,
    "mse": _mse,
    "norm": _norm,
    "meanstd": _meanstd,
}
