"""Numpy references of the integer arithmetic backends requantize with (BACKENDS.md section 5).

Each function is the definition the lowering passes' ONNX subgraphs must
match bit for bit (tests run both). Integers are int64 throughout, so no
intermediate wraps; where a backend's own int32 would overflow, the function
says what it does instead.

Rounding modes, for a value exactly halfway between two integers:
- ``half_even``: to the even one (IEEE, ``nearbyint``, ONNX Round, MLAS);
- ``half_away``: away from zero (``std::round``, gemmlowp's RoundingDivideByPOT,
  TVM's TONEAREST);
- ``half_up``: toward +inf (``(x + 2^(n-1)) >> n``: TFLite's single rounding,
  TVM's UPWARD, relay.quantize's shifts);
- ``floor``: toward -inf (a bare arithmetic shift);
- ``double``: gemmlowp's two roundings, SaturatingRoundingDoublingHighMul
  (ties toward +inf) then RoundingDivideByPOT (ties away from zero), for
  fixed-point multipliers only.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

Rounding = Literal["half_even", "half_away", "half_up", "floor", "double"]
SIMPLE_ROUNDINGS = ("half_even", "half_away", "half_up", "floor")
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def round_float(x: np.ndarray, mode: Rounding) -> np.ndarray:
    """``x`` (float32) rounded to integers in float32, the way a float-multiplier kernel rounds."""
    x = np.asarray(x, np.float32)
    if mode == "half_even":
        return np.rint(x)
    if mode == "half_away":
        return (np.sign(x) * _half_up(np.abs(x))).astype(np.float32)
    if mode == "half_up":
        return _half_up(x)
    if mode == "floor":
        return np.floor(x)
    raise ValueError(f"rounding {mode!r} has no float form")


def _half_up(x: np.ndarray) -> np.ndarray:
    """``floor(x) + (frac(x) >= 0.5)``: exact, where ``floor(x + 0.5)`` turns 0.49999997 into 1 (the fraction of
    a float32 is itself a float32, so ``x - floor(x)`` never rounds)."""
    floor = np.floor(x)
    return (floor + (x - floor >= np.float32(0.5))).astype(np.float32)


def shift_right(x: np.ndarray, n: np.ndarray | int, mode: Rounding) -> np.ndarray:
    """``x / 2^n`` rounded by ``mode``, for integer ``x`` and ``n >= 0`` (elementwise, broadcast)."""
    x = np.asarray(x, np.int64)
    n = np.asarray(n, np.int64)
    if np.any(n < 0) or np.any(n > 62):
        raise ValueError(f"shift {n} is outside 0..62")
    divisor = np.left_shift(np.int64(1), n)
    quotient, remainder = np.floor_divide(x, divisor), np.mod(x, divisor)  # remainder in [0, divisor)
    if mode == "floor":
        return quotient
    if mode == "half_up":
        return np.floor_divide(x + divisor // 2, divisor)
    if mode == "half_away":  # gemmlowp's RoundingDivideByPOT
        threshold = ((divisor - 1) >> 1) + (x < 0)
        return quotient + (remainder > threshold)
    if mode == "half_even":
        half = np.where(divisor > 1, divisor // 2, divisor)  # n = 0: no remainder, nothing to round
        odd = np.mod(quotient, 2) == 1
        return quotient + ((remainder > half) | ((remainder == half) & odd))
    raise ValueError(f"rounding {mode!r} is not a shift rounding")


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """``(M0, shift)`` with ``multiplier = M0 * 2^(shift - 31)``, M0 in [2^30, 2^31): TFLite's QuantizeMultiplier.

    ``frexp`` gives the significand in [0.5, 1); ``M0 = round(m * 2^31)``
    rounds half away (``std::round``); a significand that rounds up to 2^31
    halves and bumps the shift; below 2^-31 the multiplier is 0.
    """
    if multiplier == 0.0:
        return 0, 0
    if multiplier < 0:
        raise ValueError(f"multiplier {multiplier} is negative")
    significand, shift = math.frexp(multiplier)
    fixed = math.floor(significand * 2 ** 31 + 0.5)  # positive: floor(x + 0.5) is std::round
    if fixed == 2 ** 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul: ``a * b / 2^31`` rounded to nearest, for int32 a, b.

    Its nudge (``2^30``, or ``1 - 2^30`` for a negative product) and C's
    truncating division send a tie toward +inf: 1.5 -> 2 but -1.5 -> -1.
    The one overflow, ``INT32_MIN * INT32_MIN``, saturates to INT32_MAX.
    """
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    product = a * b
    nudge = np.where(product >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    high = _truncating_divide(product + nudge, np.int64(1 << 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), np.int64(INT32_MAX), high)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: ``x / 2^exponent``, ties away from zero."""
    return shift_right(x, exponent, "half_away")


def multiply_by_quantized_multiplier(x: np.ndarray, m0: np.ndarray | int, shift: np.ndarray | int,
                                     mode: Rounding) -> np.ndarray:
    """``x * M0 * 2^(shift - 31)`` rounded by ``mode``: the fixed-point requantization.

    ``double`` is TFLite's default MultiplyByQuantizedMultiplier:
    ``RoundingDivideByPOT(SRDHM(x * 2^max(shift, 0), M0), max(-shift, 0))``;
    there ``x * 2^left`` is an int32 product, which this saturates rather
    than wraps. Every other mode rounds once, in int64:
    ``(x * M0) / 2^(31 - shift)`` (``half_up`` is TFLite's single rounding and
    TVM's UPWARD, ``half_away`` TVM's TONEAREST).
    """
    x, m0, shift = np.asarray(x, np.int64), np.asarray(m0, np.int64), np.asarray(shift, np.int64)
    if mode == "double":
        left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
        shifted = np.clip(x * np.left_shift(np.int64(1), left), INT32_MIN, INT32_MAX)
        return rounding_divide_by_pot(srdhm(shifted, m0), right)
    return shift_right(x * m0, 31 - shift, mode)


def saturated_int32(values: np.ndarray) -> tuple[np.ndarray, int]:
    """``round(values)`` (half to even) saturated to int32, and how many saturated; in float64, so a value past
    int32 never wraps (a float32 ``2^31`` cast to int32 is ``-2^31``)."""
    rounded = np.rint(np.asarray(values, np.float64))
    saturated = int(np.count_nonzero((rounded < INT32_MIN) | (rounded > INT32_MAX)))
    return np.clip(rounded, INT32_MIN, INT32_MAX).astype(np.int32), saturated


def _truncating_divide(x: np.ndarray, divisor: np.int64) -> np.ndarray:
    """C's integer division: the quotient rounded toward zero."""
    quotient = np.floor_divide(np.abs(x), divisor)
    return np.where(x < 0, -quotient, quotient)
