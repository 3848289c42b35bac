"""The rounding references against known values, and the ONNX subgraphs against the references.

Known values: TFLite's own test vectors (tensorflow/lite/kernels/internal/
quantization_util_test.cc: QuantizeMultiplier*, MultiplyByQuantizedMultiplier),
gemmlowp's definitions (fixedpoint.h: SRDHM is round-half-away of a*b/2^31,
RoundingDivideByPOT equals std::round(x / 2^e), the comparison its own
test_fixedpoint.cc makes), and cases derived by hand.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from qcompiler import runtime
from qcompiler.config.backend import ArithmeticConfig
from qcompiler.graph import ir
from qcompiler.quant import rounding
from qcompiler.quant.lowering import Lowering
from qcompiler.quant.rounding import INT32_MAX, INT32_MIN

HALVES = np.array([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 0.49999997, -0.49999997], np.float32)
ROUNDED = {
    "half_even": [-4, -2, -2, -0, 0, 2, 2, 4, 0, -0],
    "half_away": [-4, -3, -2, -1, 1, 2, 3, 4, 0, -0],
    "half_up": [-3, -2, -1, 0, 1, 2, 3, 4, 0, 0],
    "floor": [-4, -3, -2, -1, 0, 1, 2, 3, 0, -1],
}


@pytest.mark.parametrize("mode", list(ROUNDED))
def test_round_float_at_ties(mode):
    assert rounding.round_float(HALVES, mode).tolist() == ROUNDED[mode]


@pytest.mark.parametrize("mode", list(ROUNDED))
def test_shift_right_at_ties_is_the_float_rounding_of_x_over_2(mode):
    x = (HALVES * 2).astype(np.int64)
    expected = rounding.round_float(HALVES.astype(np.float64).astype(np.float32), mode)[:8]
    assert rounding.shift_right(x[:8], 1, mode).tolist() == expected.tolist()


@pytest.mark.parametrize("mode", list(ROUNDED))
def test_shift_right_matches_exact_rational_rounding(mode):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-2 ** 40, 2 ** 40, 2000), [0, 1, -1, INT32_MIN, INT32_MAX]])
    n = rng.integers(0, 20, x.size)
    got = rounding.shift_right(x, n, mode)
    for value, shift, result in zip(x.tolist(), n.tolist(), got.tolist()):
        assert result == _rational_round(Fraction(value, 2 ** shift), mode), (value, shift)


def _rational_round(value: Fraction, mode: str) -> int:
    floor = math.floor(value)
    fraction = value - floor
    if mode == "floor" or fraction < Fraction(1, 2):
        return floor
    if fraction > Fraction(1, 2):
        return floor + 1
    return {"half_up": floor + 1, "half_even": floor + (floor % 2), "half_away": floor + (value > 0)}[mode]


@pytest.mark.parametrize("multiplier, expected", [
    # QuantizeMultiplierSmallerThanOneExp
    (0.25, (1073741824, -1)), (0.5 - 5e-9, (2147483627, -1)), (0.5 - 1e-10, (1073741824, 0)),
    (0.5, (1073741824, 0)), (0.75, (1610612736, 0)), (1 - 1e-9, (2147483646, 0)),
    # QuantizeMultiplierGreaterThanOne
    (1 + 1e-11, (1073741824, 1)), (1.25, (1342177280, 1)), (1.5, (1610612736, 1)), (1.75, (1879048192, 1)),
    (2 - 1e-9, (2147483647, 1)), (2 - 1e-11, (1073741824, 2)), (2.0, (1073741824, 2)),
    # QuantizeMultiplierUnderflow
    (math.ldexp(1, -31), (1073741824, -30)), (math.ldexp(1, -32), (1073741824, -31)),
    (math.ldexp(float(np.float32(0.99)), -32), (0, 0)), (math.ldexp(1, -33), (0, 0)),
    # QuantizeMultiplierArray (positive half)
    (4.0, (1073741824, 3)), (0.125, (1073741824, -2)), (0.0, (0, 0)),
])
def test_quantize_multiplier_tflite_vectors(multiplier, expected):
    assert rounding.quantize_multiplier(multiplier) == expected


@pytest.mark.parametrize("x, multiplier, expected", [
    (0, 0.1, 0), (1, 0.0, 0), (10000, 0.00097656, 10), (-10000, 0.00097656, -10),
    (INT32_MIN, 1e-5, -21475), (INT32_MAX, 1e-5, 21475),
])
def test_multiply_by_quantized_multiplier_tflite_vectors(x, multiplier, expected):
    m0, shift = rounding.quantize_multiplier(multiplier)
    assert int(rounding.multiply_by_quantized_multiplier(x, m0, shift, "double")) == expected


def test_multiply_by_quantized_multiplier_large_operands():
    """TFLite: x = INT32_MAX, M0 = INT32_MAX, shift = -3 gives round(x * M0 / 2^34), and its negative for -x."""
    expected = _rational_round(Fraction(INT32_MAX * INT32_MAX, 2 ** 34), "half_away")
    assert int(rounding.multiply_by_quantized_multiplier(INT32_MAX, INT32_MAX, -3, "double")) == expected
    assert int(rounding.multiply_by_quantized_multiplier(-INT32_MAX, INT32_MAX, -3, "double")) == -expected


def test_srdhm_by_hand():
    assert int(rounding.srdhm(INT32_MIN, INT32_MIN)) == INT32_MAX          # the one overflow saturates
    assert int(rounding.srdhm(1 << 30, 1 << 30)) == 1 << 29                # 0.5 * 0.5 = 0.25 in Q31
    # 1.5 -> 2 and -1.5 -> -1: the nudge 1 - 2^30 and C's truncation send a negative tie toward zero
    assert int(rounding.srdhm(3, 1 << 30)) == 2 and int(rounding.srdhm(-3, 1 << 30)) == -1
    assert int(rounding.srdhm(-7, 1 << 29)) == -2   # -1.75 -> -2: not a tie, nearest
    assert int(rounding.srdhm(INT32_MAX, INT32_MAX)) == INT32_MAX - 1


def test_rounding_divide_by_pot_is_std_round():
    """gemmlowp's test_fixedpoint.cc: RoundingDivideByPOT(x, e) == std::round(x / 2^e) on +-(2^i) +- {0, 1, 2}."""
    values = sorted({s * (2 ** i) + d for i in range(31) for s in (1, -1) for d in (-2, -1, 0, 1, 2)})
    values = [v for v in values if INT32_MIN <= v <= INT32_MAX]
    for exponent in (0, 1, 2, 5, 13, 30):
        got = rounding.rounding_divide_by_pot(np.array(values), exponent).tolist()
        assert got == [_rational_round(Fraction(v, 2 ** exponent), "half_away") for v in values]


def test_single_rounding_is_half_up_in_int64():
    """TFLITE_SINGLE_ROUNDING: (x * M0 + 2^(30 - shift)) >> (31 - shift)."""
    x = np.array([-7, -5, -3, -1, 1, 3, 5, 7, 12345, -12345], np.int64)
    m0, shift = 1 << 30, 0          # 0.5: every odd x is a tie
    expected = (x * m0 + (1 << (30 - shift))) >> (31 - shift)
    assert rounding.multiply_by_quantized_multiplier(x, m0, shift, "half_up").tolist() == expected.tolist()


def test_saturated_int32_never_wraps():
    """The old bug: float32 2^31 - 1 rounds to 2^31, which a float-to-int32 cast turns into -2^31."""
    values, saturated = rounding.saturated_int32(np.array([np.float32(2 ** 31 - 1), 3e9, -3e9, 5.5, -2.5]))
    assert values.tolist() == [INT32_MAX, INT32_MAX, INT32_MIN, 6, -2] and saturated == 3


# --- the ONNX subgraphs compute their references bit for bit ------------------------

def _run(build, x: np.ndarray) -> np.ndarray:
    graph = gs.Graph(opset=17)
    graph.inputs = [gs.Variable("x", dtype=x.dtype, shape=list(x.shape))]
    graph.outputs = [build(Lowering(graph, ir.GraphNames(graph), "t"), graph.inputs[0])]
    return runtime.graph_session(graph).run(None, {"x": x})[0]


@pytest.mark.parametrize("mode", ["half_even", "half_away", "half_up", "floor"])
def test_onnx_shift_right(mode):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.integers(-2 ** 45, 2 ** 45, (1, 999)), [[0, 1, -1] * 1]], axis=1)[:, :1000]
    x = x.reshape(10, 100).astype(np.int64)
    shifts = rng.integers(0, 24, (10, 1))
    got = _run(lambda lw, t: lw.shift_right(t, shifts, mode, "s"), x)
    np.testing.assert_array_equal(got, rounding.shift_right(x, shifts, mode))


@pytest.mark.parametrize("mode", ["double", "half_up", "half_away", "half_even"])
def test_onnx_fixed_point(mode):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.integers(-2 ** 24, 2 ** 24, 990), [INT32_MIN, INT32_MAX, 0, 1, -1, 3, -3, 5, -5, 7]])
    x = x.reshape(10, 100).astype(np.int64)
    multipliers = np.concatenate([rng.uniform(1e-6, 1.9, 8), [0.5, 2.0 ** -20]]).reshape(10, 1)
    got = _run(lambda lw, t: lw.fixed_point(t, multipliers, mode, "f"), x)
    pairs = [rounding.quantize_multiplier(float(m)) for m in multipliers.ravel()]
    m0 = np.array([p[0] for p in pairs]).reshape(10, 1)
    shift = np.array([p[1] for p in pairs]).reshape(10, 1)
    np.testing.assert_array_equal(got, rounding.multiply_by_quantized_multiplier(x, m0, shift, mode))


@pytest.mark.parametrize("mode", ["half_even", "half_away", "half_up", "floor"])
def test_onnx_round_float(mode):
    rng = np.random.default_rng(3)
    x = np.concatenate([HALVES, rng.uniform(-300, 300, 990).astype(np.float32)]).astype(np.float32)
    np.testing.assert_array_equal(_run(lambda lw, t: lw.round_float(t, mode, "r"), x), rounding.round_float(x, mode))


def test_onnx_shift_multiplier_is_a_rounded_shift():
    x = np.arange(-64, 64, dtype=np.int64)
    arithmetic = ArithmeticConfig(multiplier="shift", rounding="half_up")
    got = _run(lambda lw, t: lw.scale_integers(t, np.float64(2.0 ** -3), arithmetic, "p"), x)
    np.testing.assert_array_equal(got, (x + 4) >> 3)
