"""Quantization arithmetic: integer grids and the scale / zero-point rules.

ONNX semantics throughout: ``q = clamp(round_half_even(x / s) + z, qmin, qmax)``
and ``x_hat = (q - z) * s``. Rules (BACKENDS.md section 3):
- ranges are widened to contain 0, so that 0 is exactly representable;
- symmetric: ``s = amax / qmax`` and ``z = 0`` (TensorRT: 127 for int8);
- asymmetric: ``s = (max - min) / (qmax - qmin)``, ``z = qmin - round(min / s)``;
- power of two: ``s = 2 ** ceil(log2(s))`` (ceil never clips) or ``round``;
- reduce_range computes the scale for one bit less (FBGEMM's [0, 127] for
  uint8) while values still saturate at the full range, as FBGEMM's do;
- a degenerate range (all zeros) gets ``s = 1``: valid and finite, and every
  value of such a tensor is 0 anyway.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.config.backend import QuantizerSpec

# Scales below this are treated as a degenerate (zero-width) range.
MIN_SCALE = np.float32(1e-12)
QUANTIZE_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class Grid:
    """The integers a calibrated range maps onto, where values saturate, and the ONNX container type.

    ``qmin..qmax`` is what the scale and zero point are computed for. Values
    saturate at ``clamp``: the same range, except under reduce_range, where
    (as in PyTorch and FBGEMM) the scale is chosen for one bit less but the
    kernels still saturate at the full ``bits``-bit range.
    """

    qmin: int
    qmax: int
    signed: bool
    clamp: tuple[int, int]

    @property
    def container(self) -> type:
        return np.int8 if self.signed else np.uint8

    @property
    def narrower_than_container(self) -> bool:
        """Whether saturating at ``clamp`` takes more than the container's own saturation."""
        info = np.iinfo(self.container)
        return self.clamp[0] > info.min or self.clamp[1] < info.max


def grid(spec: QuantizerSpec, signed: bool) -> Grid:
    """The integer grid of ``spec``; ``signed`` resolves adaptive signedness."""
    if spec.bits > 8:
        raise ValueError(f"{spec.bits}-bit quantizers need 16-bit containers, which are not supported yet")
    full = _integer_range(spec.bits, signed, spec.narrow_range)
    mapped = _integer_range(spec.bits - 1, signed, spec.narrow_range) if spec.reduce_range else full
    return Grid(*mapped, signed, full)


def _integer_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    if signed:
        qmax = 2 ** (bits - 1) - 1
        return (-qmax if narrow else -qmax - 1), qmax
    return 0, 2 ** bits - 1


def resolve_signed(spec: QuantizerSpec, lo: np.ndarray) -> bool:
    """Signedness of the grid: adaptive means unsigned when the tensor is never negative."""
    if spec.signedness == "adaptive":
        return bool(np.min(lo) < 0)
    return spec.signedness == "signed"


def qparams(lo: np.ndarray, hi: np.ndarray, spec: QuantizerSpec, g: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (grid container dtype) for ranges ``[lo, hi]`` (elementwise)."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if spec.symmetric:
        amax = np.maximum(-lo, hi)
        scale = amax / g.qmax
        zero_point = np.zeros_like(scale)
    else:
        scale = (hi - lo) / (g.qmax - g.qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zero_point = np.clip(g.qmin - np.round(lo / safe), g.qmin, g.qmax)
    scale = np.where(scale >= MIN_SCALE, scale, 1.0)
    if spec.scale == "power_of_two":
        exponent = np.log2(scale)
        scale = np.exp2(np.ceil(exponent) if spec.power_of_two_rounding == "ceil" else np.round(exponent))
        if not spec.symmetric:  # the zero point follows the rounded scale
            zero_point = np.clip(g.qmin - np.round(lo / scale), g.qmin, g.qmax)
    # ufuncs turn 0-d arrays into scalars; callers get arrays
    return np.asarray(scale, np.float32), np.asarray(zero_point).astype(g.container)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, g: Grid, axis: int | None = None) -> np.ndarray:
    """Numpy reference of QuantizeLinear on grid ``g``: the integers, in the grid's container type.

    Computed in blocks of at most QUANTIZE_BLOCK_BYTES of float32 along the
    first axis, in place on one temporary: a weight of hundreds of MB is
    never copied whole in float (VGG-19's 411 MB fc6).
    """
    x = np.asarray(x, np.float32)
    scale = along_axis(scale, x.ndim, axis).astype(np.float32)
    zero_point = along_axis(zero_point, x.ndim, axis).astype(np.float32)  # integers: exact in float32
    if x.ndim == 0:
        return _quantized_block(x, scale, zero_point, g)
    out = np.empty(x.shape, g.container)
    rows = max(1, QUANTIZE_BLOCK_BYTES // max(1, x[:1].nbytes))
    for start in range(0, x.shape[0], rows):
        block = slice(start, start + rows)
        out[block] = _quantized_block(x[block], _rows(scale, block), _rows(zero_point, block), g)
    return out


def _quantized_block(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, g: Grid) -> np.ndarray:
    q = np.asarray(np.divide(x, scale))
    np.rint(q, out=q)
    q += zero_point
    np.clip(q, *g.clamp, out=q)
    return q.astype(g.container)


def _rows(values: np.ndarray, block: slice) -> np.ndarray:
    """The rows of ``values`` (broadcast along axis 0 when it has one row) that a block of rows uses."""
    return values[block] if values.ndim and values.shape[0] > 1 else values


def fake_quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, g: Grid, axis: int | None = None) -> np.ndarray:
    """Numpy reference of QuantizeLinear -> DequantizeLinear on grid ``g``."""
    return dequantize(quantize(x, scale, zero_point, g, axis), scale, zero_point, axis)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Numpy reference of DequantizeLinear."""
    scale, zero_point = along_axis(scale, q.ndim, axis), along_axis(zero_point, q.ndim, axis)
    return ((q.astype(np.int32) - zero_point.astype(np.int32)) * scale.astype(np.float32)).astype(np.float32)


def along_axis(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Per-channel ``values`` shaped to broadcast along ``axis`` of an ``ndim``-d tensor (scalars unchanged)."""
    values = np.asarray(values)
    if axis is None or values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)
