"""ONNX subgraphs of the integer arithmetic in ``rounding``: what the lowering passes build, op by op.

A ``Lowering`` adds nodes to one graph under one base name (``conv1/requant``,
...), so the integer model reads like the fake-quant one it came from. Every
subgraph computes exactly its numpy reference in ``quant.rounding``: integers
are int64 (onnxruntime's Div truncates and Mod with fmod=0 takes the sign
of the divisor, which gives floor division exactly), float multipliers are
float32 Mul and Add, as the kernels they stand for compute them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompiler.config.backend import ArithmeticConfig
from qcompiler.graph import ir
from qcompiler.quant.qmath import Grid
from qcompiler.quant.rounding import INT32_MAX, INT32_MIN, Rounding, quantize_multiplier


@dataclass(frozen=True)
class OutputGrid:
    """Where a requantized value lands: zero point (per tensor) and the integers it saturates at."""

    zero_point: int
    low: int
    high: int
    container: type

    @classmethod
    def of(cls, grid: Grid, zero_point: np.ndarray, low: int | None = None, high: int | None = None) -> "OutputGrid":
        """``grid``'s saturation, narrowed to ``[low, high]`` (a fused Relu/Clip) where given."""
        lo, hi = grid.clamp
        lo = lo if low is None else max(lo, low)
        hi = hi if high is None else min(hi, high)
        return cls(int(zero_point), lo, max(lo, hi), grid.container)


class Lowering:
    """Builds integer subgraphs into ``graph``; names derive from ``base``."""

    def __init__(self, graph: gs.Graph, names: ir.GraphNames, base: str):
        self.graph, self.names, self.base = graph, names, base

    # --- primitives -------------------------------------------------------

    def const(self, label: str, value: np.ndarray | int | float, dtype: type) -> gs.Constant:
        return gs.Constant(self.names.tensors.fresh(f"{self.base}/{label}"), np.asarray(value, dtype))

    def op(self, op: str, inputs: Sequence[gs.Tensor], dtype: type, label: str, attrs: dict | None = None,
           output: gs.Variable | None = None) -> gs.Variable:
        """One node; its output is ``output`` when given (a tensor whose readers stay), else a fresh tensor."""
        if output is None:
            output = gs.Variable(self.names.tensors.fresh(f"{self.base}/{label}"), dtype=dtype)
        else:
            output.dtype = dtype
        self.graph.nodes.append(gs.Node(op, self.names.nodes.fresh(f"{self.base}/{label}"), attrs or {},
                                        list(inputs), [output]))
        return output

    def cast(self, x: gs.Tensor, dtype: type, label: str, output: gs.Variable | None = None) -> gs.Variable:
        return self.op("Cast", [x], dtype, label, {"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))}, output)

    # --- integer rounding --------------------------------------------------

    def shift_right(self, x: gs.Tensor, shift: np.ndarray, mode: Rounding, label: str) -> gs.Variable:
        """int64 ``x / 2^shift`` rounded by ``mode`` (``rounding.shift_right``); ``shift`` broadcasts over x."""
        shift = np.asarray(shift, np.int64)
        divisor = np.left_shift(np.int64(1), shift)
        d = self.const(f"{label}/divisor", divisor, np.int64)
        if mode == "half_up":
            nudged = self.op("Add", [x, self.const(f"{label}/half", divisor // 2, np.int64)], np.int64,
                             f"{label}/nudged")
            return self._divmod(nudged, d, label)[0]
        quotient, remainder = self._divmod(x, d, label)
        if mode == "floor":
            return quotient
        if mode == "half_away":
            negative = self.cast(self.op("Less", [x, self.const(f"{label}/zero", 0, np.int64)], np.bool_,
                                         f"{label}/negative"), np.int64, f"{label}/negative/int")
            threshold = self.op("Add", [self.const(f"{label}/half_mask", (divisor - 1) >> 1, np.int64), negative],
                                np.int64, f"{label}/threshold")
            up = self.op("Greater", [remainder, threshold], np.bool_, f"{label}/up")
        elif mode == "half_even":
            half = self.const(f"{label}/half", np.where(divisor > 1, divisor // 2, divisor), np.int64)
            above = self.op("Greater", [remainder, half], np.bool_, f"{label}/above")
            tie = self.op("Equal", [remainder, half], np.bool_, f"{label}/tie")
            odd = self.op("Equal", [self.op("Mod", [quotient, self.const(f"{label}/two", 2, np.int64)], np.int64,
                                            f"{label}/parity", {"fmod": 0}),
                                    self.const(f"{label}/one", 1, np.int64)], np.bool_, f"{label}/odd")
            up = self.op("Or", [above, self.op("And", [tie, odd], np.bool_, f"{label}/tie_odd")], np.bool_,
                         f"{label}/up")
        else:
            raise ValueError(f"rounding {mode!r} is not a shift rounding")
        return self.op("Add", [quotient, self.cast(up, np.int64, f"{label}/up/int")], np.int64, f"{label}/rounded")

    def _divmod(self, x: gs.Tensor, divisor: gs.Constant, label: str) -> tuple[gs.Variable, gs.Variable]:
        """Floor division of int64 ``x``: Mod with fmod=0 takes the divisor's sign, so ``x - r`` divides exactly."""
        remainder = self.op("Mod", [x, divisor], np.int64, f"{label}/remainder", {"fmod": 0})
        quotient = self.op("Div", [self.op("Sub", [x, remainder], np.int64, f"{label}/floored"), divisor], np.int64,
                           f"{label}/quotient")
        return quotient, remainder

    def fixed_point(self, x: gs.Tensor, multiplier: np.ndarray, mode: Rounding, label: str) -> gs.Variable:
        """int64 ``x`` times real ``multiplier`` (per element of a broadcast shape) in fixed point
        (``rounding.multiply_by_quantized_multiplier``)."""
        multiplier = np.asarray(multiplier, np.float64)
        pairs = [quantize_multiplier(float(m)) for m in multiplier.ravel()]
        m0 = np.array([p[0] for p in pairs], np.int64).reshape(multiplier.shape)
        shift = np.array([p[1] for p in pairs], np.int64).reshape(multiplier.shape)
        if mode != "double":
            product = self.op("Mul", [x, self.const(f"{label}/m0", m0, np.int64)], np.int64, f"{label}/product")
            return self.shift_right(product, 31 - shift, mode, f"{label}/shift")
        left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
        if np.any(left):
            x = self.op("Mul", [x, self.const(f"{label}/left", np.left_shift(np.int64(1), left), np.int64)], np.int64,
                        f"{label}/left_shifted")
        x = self.op("Clip", [x, self.const(f"{label}/int32_min", INT32_MIN, np.int64),
                             self.const(f"{label}/int32_max", INT32_MAX, np.int64)], np.int64, f"{label}/saturated")
        product = self.op("Mul", [x, self.const(f"{label}/m0", m0, np.int64)], np.int64, f"{label}/product")
        nudge = self.op("Where", [
            self.op("GreaterOrEqual", [product, self.const(f"{label}/zero", 0, np.int64)], np.bool_,
                    f"{label}/nonnegative"),
            self.const(f"{label}/nudge_up", 1 << 30, np.int64), self.const(f"{label}/nudge_down", 1 - (1 << 30),
                                                                          np.int64)], np.int64, f"{label}/nudge")
        high = self.op("Div", [self.op("Add", [product, nudge], np.int64, f"{label}/nudged"),
                               self.const(f"{label}/two_31", 1 << 31, np.int64)], np.int64, f"{label}/high")
        return self.shift_right(high, right, "half_away", f"{label}/divide")

    def scale_integers(self, x: gs.Tensor, multiplier: np.ndarray, arithmetic: ArithmeticConfig, label: str,
                       rounding: Rounding | None = None) -> gs.Variable:
        """int64 ``x`` times ``multiplier`` in ``arithmetic``'s integer form (shift or fixed point), as int64.

        A shift needs every multiplier to be a power of two; callers check
        with ``is_power_of_two`` and choose fixed point otherwise.
        """
        mode = rounding or arithmetic.rounding
        if arithmetic.multiplier == "shift":
            exponent = np.rint(np.log2(np.asarray(multiplier, np.float64))).astype(np.int64)
            if np.all(exponent >= 0):
                return self.op("Mul", [x, self.const(f"{label}/pow2", np.left_shift(np.int64(1), exponent),
                                                     np.int64)], np.int64, f"{label}/scaled")
            if np.any(exponent > 0):
                raise ValueError("a shift multiplier mixes left and right shifts across channels")
            return self.shift_right(x, -exponent, mode, label)
        return self.fixed_point(x, multiplier, mode, label)

    # --- requantization -----------------------------------------------------

    def to_grid_from_int(self, x: gs.Tensor, grid: OutputGrid, output: gs.Variable | None = None) -> gs.Variable:
        """int64 ``x`` plus the zero point, saturated, in the grid's container."""
        shifted = self.op("Add", [x, self.const("zero_point", grid.zero_point, np.int64)], np.int64, "shifted")
        clamped = self.op("Clip", [shifted, self.const("low", grid.low, np.int64),
                                   self.const("high", grid.high, np.int64)], np.int64, "clamped")
        return self.cast(clamped, grid.container, "quantized", output)

    def to_grid_from_float(self, x: gs.Tensor, mode: Rounding, grid: OutputGrid,
                           output: gs.Variable | None = None) -> gs.Variable:
        """float32 ``x`` rounded by ``mode``, plus the zero point, saturated (in float, as MLAS clamps), cast."""
        rounded = self.round_float(x, mode, "rounded")
        shifted = self.op("Add", [rounded, self.const("zero_point", grid.zero_point, np.float32)], np.float32,
                          "shifted")
        clamped = self.op("Clip", [shifted, self.const("low", grid.low, np.float32),
                                   self.const("high", grid.high, np.float32)], np.float32, "clamped")
        return self.cast(clamped, grid.container, "quantized", output)

    def round_float(self, x: gs.Tensor, mode: Rounding, label: str) -> gs.Variable:
        """float32 ``x`` rounded by ``mode`` (``rounding.round_float``)."""
        if mode == "half_even":
            return self.op("Round", [x], np.float32, label)
        if mode == "floor":
            return self.op("Floor", [x], np.float32, label)
        if mode == "half_up":
            return self._half_up(x, label)
        if mode == "half_away":
            magnitude = self._half_up(self.op("Abs", [x], np.float32, f"{label}/abs"), f"{label}/magnitude")
            return self.op("Mul", [self.op("Sign", [x], np.float32, f"{label}/sign"), magnitude], np.float32, label)
        raise ValueError(f"rounding {mode!r} has no float form")

    def _half_up(self, x: gs.Tensor, label: str) -> gs.Variable:
        """``floor(x) + (x - floor(x) >= 0.5)`` (``rounding._half_up``)."""
        floor = self.op("Floor", [x], np.float32, f"{label}/floor")
        fraction = self.op("Sub", [x, floor], np.float32, f"{label}/fraction")
        up = self.op("GreaterOrEqual", [fraction, self.const(f"{label}/half", 0.5, np.float32)], np.bool_,
                     f"{label}/up")
        return self.op("Add", [floor, self.cast(up, np.float32, f"{label}/up/float")], np.float32, label)

    def widened(self, x: gs.Tensor, zero_point: int, label: str) -> gs.Variable:
        """An integer tensor minus its zero point, as int64."""
        wide = self.cast(x, np.int64, f"{label}/int64")
        if zero_point == 0:
            return wide
        return self.op("Sub", [wide, self.const(f"{label}/zero_point", zero_point, np.int64)], np.int64,
                       f"{label}/centered")


def integer_form(arithmetic: ArithmeticConfig, multiplier: np.ndarray) -> ArithmeticConfig:
    """``arithmetic``, with fixed point for a shift whose ``multiplier`` is not a power of two (same rounding)."""
    if arithmetic.multiplier == "shift" and not is_power_of_two(multiplier):
        return replace(arithmetic, multiplier="fixed_point")
    return arithmetic


def is_power_of_two(values: np.ndarray) -> bool:
    values = np.asarray(values, np.float64)
    if np.any(values <= 0):
        return False
    exponent = np.log2(values)
    return bool(np.all(exponent == np.rint(exponent)))


def float_multiplier(*factors: np.ndarray, divisor: np.ndarray | float = 1.0) -> np.ndarray:
    """``prod(factors) / divisor`` in float32, left to right, as a float-multiplier kernel computes it."""
    value = np.float32(1.0)
    for index, factor in enumerate(factors):
        value = np.asarray(factor, np.float32) if index == 0 else value * np.asarray(factor, np.float32)
    return np.asarray(value / np.asarray(divisor, np.float32), np.float32)


def real_multiplier(*factors: np.ndarray, divisor: np.ndarray | float = 1.0) -> np.ndarray:
    """``prod(factors) / divisor`` in float64 from float32 scales, as fixed-point converters compute it (TFLite)."""
    value = np.float64(1.0)
    for factor in factors:
        value = value * np.asarray(factor, np.float32).astype(np.float64)
    return np.asarray(value / np.asarray(divisor, np.float32).astype(np.float64), np.float64)
