"""Scale and zero-point rules (BACKENDS.md section 3), checked against onnxruntime's Q/DQ."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import runtime
from qcompiler.config.backend import QuantizerSpec
from qcompiler.quant.qmath import fake_quantize, grid, qparams, quantize, resolve_signed

INT8_SYM = QuantizerSpec(bits=8, signedness="signed", symmetric=True)
UINT8_ASYM = QuantizerSpec(bits=8, signedness="unsigned", symmetric=False)


def test_grids():
    assert (grid(INT8_SYM, True).qmin, grid(INT8_SYM, True).qmax) == (-128, 127)
    narrow = QuantizerSpec(narrow_range=True)
    assert (grid(narrow, True).qmin, grid(narrow, True).qmax) == (-127, 127)
    reduced = QuantizerSpec(signedness="unsigned", symmetric=False, reduce_range=True)
    g = grid(reduced, False)
    assert (g.qmin, g.qmax, g.container, g.clamp, g.narrower_than_container) == (0, 127, np.uint8, (0, 255), False)
    signed_reduced = grid(QuantizerSpec(reduce_range=True), True)
    assert (signed_reduced.qmin, signed_reduced.qmax, signed_reduced.clamp) == (-64, 63, (-128, 127))
    four = grid(QuantizerSpec(bits=4), True)
    assert (four.qmin, four.qmax, four.clamp, four.narrower_than_container) == (-8, 7, (-8, 7), True)


def test_symmetric_scale_is_amax_over_127_like_tensorrt():
    scale, zero_point = qparams(np.float64(-0.25), np.float64(0.5), INT8_SYM, grid(INT8_SYM, True))
    assert scale == np.float32(0.5 / 127) and zero_point == 0 and zero_point.dtype == np.int8


def test_asymmetric_zero_point_matches_the_ascend_offset_rule():
    lo, hi = np.float64(-1.3), np.float64(2.9)
    scale, zero_point = qparams(lo, hi, QuantizerSpec(symmetric=False), grid(QuantizerSpec(), True))
    assert np.isclose(scale, (hi - lo) / 255)
    assert zero_point == -np.round(lo / ((hi - lo) / 255)) - 128  # offset_d = -round(min/scale) - 128


def test_range_is_widened_to_contain_zero():
    scale, zero_point = qparams(np.float64(2.0), np.float64(4.0), UINT8_ASYM, grid(UINT8_ASYM, False))
    assert zero_point == 0 and np.isclose(scale, 4.0 / 255)


def test_power_of_two_ceil_never_clips():
    spec = QuantizerSpec(scale="power_of_two")
    for amax in (0.3, 1.0, 5.7, 100.0):
        scale, _ = qparams(np.float64(-amax), np.float64(amax), spec, grid(spec, True))
        assert np.log2(scale) == np.round(np.log2(scale)) and scale * 127 >= amax


def test_degenerate_ranges_give_finite_nonzero_scales():
    spec = QuantizerSpec(granularity="per_channel", narrow_range=True)
    lo, hi = np.array([0.0, -1.0, 0.0]), np.array([0.0, 1.0, 3.0])
    scale, zero_point = qparams(lo, hi, spec, grid(spec, True))
    assert np.all(np.isfinite(scale)) and np.all(scale > 0) and scale[0] == 1.0
    asym_scale, _ = qparams(np.float64(0.0), np.float64(0.0), UINT8_ASYM, grid(UINT8_ASYM, False))
    assert asym_scale == 1.0


def test_adaptive_signedness_is_unsigned_for_non_negative_tensors():
    spec = QuantizerSpec(signedness="adaptive")
    assert resolve_signed(spec, np.float64(0.0)) is False
    assert resolve_signed(spec, np.float64(-0.1)) is True


@pytest.mark.parametrize("container, axis", [(np.int8, None), (np.uint8, None), (np.int8, 0)])
def test_numpy_reference_matches_onnxruntime(container, axis):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (4, 3, 5)).astype(np.float32)
    shape = (4,) if axis is not None else ()
    scale = rng.uniform(0.01, 0.05, shape).astype(np.float32)
    zero_point = rng.integers(0, 20, shape).astype(container)
    attrs = {"axis": axis} if axis is not None else {}
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero_point, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (expected,) = runtime.run(model, {"x": x})
    info = np.iinfo(container)
    from qcompiler.quant.qmath import Grid

    actual = fake_quantize(x, scale, zero_point, Grid(info.min, info.max, container == np.int8, (info.min, info.max)), axis)
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_quantize_in_blocks_gives_what_one_pass_gives(axis, monkeypatch):
    from qcompiler.quant import qmath

    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (12, 5, 3)).astype(np.float32)
    channels = x.shape[axis] if axis is not None else None
    scale = rng.uniform(0.01, 0.02, channels or ()).astype(np.float32)
    zero_point = rng.integers(-3, 3, channels or ()).astype(np.int8)
    g = grid(INT8_SYM, True)
    whole = quantize(x, scale, zero_point, g, axis)
    monkeypatch.setattr(qmath, "QUANTIZE_BLOCK_BYTES", x[:1].nbytes * 5)  # blocks of 5 rows: 5, 5, 2
    np.testing.assert_array_equal(quantize(x, scale, zero_point, g, axis), whole)
    expected = np.clip(np.rint(x / qmath.along_axis(scale, 3, axis)) + qmath.along_axis(zero_point, 3, axis), -128, 127)
    np.testing.assert_array_equal(whole, expected.astype(np.int8))
