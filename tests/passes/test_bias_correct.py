"""bias_correct: the analytic shift is what onnxruntime measures; both forms keep the model valid and closer."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import runtime
from qcompiler.data.sources import InputSpec, open_data
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.measure.evaluate import evaluate, mean_output_shifts
from qcompiler.passes.bias_correct import _weight_error_shift
from qcompiler.testing.models import TEST_MODELS

RNG = np.random.default_rng(0)


def _single_op(op: str, x_shape: list[int], weight: np.ndarray, **attrs) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)], op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _mean_over_all_but_channels(y: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(y, axis, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1).mean(axis=(0, 2))


@pytest.mark.parametrize("op, x_shape, w_shape, attrs, axis", [
    ("Conv", [64, 6, 5, 5], (4, 6, 1, 1), {}, 1),
    ("Conv", [64, 6, 5, 5], (6, 1, 1, 1), {"group": 6}, 1),                   # depthwise
    ("Conv", [64, 6, 5, 5], (4, 3, 1, 1), {"group": 2}, 1),                   # grouped
    ("Gemm", [256, 6], (6, 5), {}, 1),
    ("Gemm", [256, 6], (5, 6), {"transB": 1, "alpha": 0.5}, 1),
    ("MatMul", [32, 8, 6], (6, 5), {}, -1),
])
def test_the_analytic_shift_is_the_mean_change_onnxruntime_measures(op, x_shape, w_shape, attrs, axis):
    """``(W_q - W) E[x]``: with x's channel means far from zero, as after a ReLU, and no padding."""
    weight = RNG.normal(0, 1, w_shape).astype(np.float32)
    error = RNG.normal(0, 0.05, w_shape).astype(np.float32)
    channels = x_shape[1] if axis == 1 else x_shape[-1]
    shape = [1] * len(x_shape)
    shape[axis] = channels
    x = (RNG.normal(0, 1, x_shape) + RNG.uniform(1, 3, channels).reshape(shape)).astype(np.float32)
    (exact,) = runtime.run(_single_op(op, x_shape, weight, **attrs), {"x": x})
    (perturbed,) = runtime.run(_single_op(op, x_shape, weight + error, **attrs), {"x": x})
    measured = _mean_over_all_but_channels(perturbed, axis) - _mean_over_all_but_channels(exact, axis)
    node = gs.Node(op, op, attrs=dict(attrs))
    predicted = _weight_error_shift(node, error.astype(np.float64), _mean_over_all_but_channels(x, axis))
    np.testing.assert_allclose(predicted, measured, rtol=1e-4, atol=1e-5)


def _compile(model, backend, tmp_path, *overrides, with_correction=True, form="analytic"):
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    dims = [d.dim_value or 24 for d in model.graph.input[0].type.tensor_type.shape.dim]
    # inputs with channel means away from zero: what a ReLU before them would give
    data = np.abs(np.random.default_rng(1).normal(0.5, 1, dims)).astype(np.float32)
    np.save(tmp_path / "calib.npy", data)
    entry = "bias_correct" if form == "analytic" else "{name: bias_correct, options: {form: empirical}}"
    pipeline = ["fold_bn", "insert_quantizers", "calibrate", "share_scales"] + ([entry] if with_correction else [])
    out = tmp_path / ("corrected" if with_correction else "plain")
    result = compile_model(CompileRequest(model=path, backend=backend, out=out, calib=str(tmp_path / "calib.npy"),
                                          overrides=[f"pipeline=[{', '.join(pipeline)}]", *overrides],
                                          explain=("bias_correct",) if with_correction else ()))
    return result, out


@pytest.mark.parametrize("form", ["analytic", "empirical"])
@pytest.mark.parametrize("backend", ["tensorrt", "snpe", "fbgemm", "tvm", "acl", "academic"])
@pytest.mark.parametrize("model_name", ["mobilenetv2_inverted_residual", "resnet_basic_block", "gemm_head"])
def test_bias_correction_brings_every_layer_closer_to_float(model_name, backend, form, tmp_path):
    model = TEST_MODELS[model_name]()
    _, plain_out = _compile(model, backend, tmp_path, with_correction=False)
    corrected, out = _compile(model, backend, tmp_path, form=form)
    # the float model is not touched; every layer is explained; the emitters and checkers still accept it
    assert (out / "model.onnx").read_bytes() == (plain_out / "model.onnx").read_bytes()
    explained = corrected.ctx.explanations_of("bias_correct")
    layers = sorted({n for p in corrected.ctx.plan.weights() for n in p.consumers})
    assert sorted(e.node for e in explained) == layers
    assert all(e.applied and "removed a mean output shift" in e.reason for e in explained)
    float_model, inputs = onnx.load(out / "model.onnx"), InputSpec.of_model(model)
    data = open_data(str(tmp_path / "calib.npy"), inputs)
    ordered = [n for n in corrected.graph.nodes if n.name in layers]   # in graph order
    tensors = [n.outputs[0].name for n in ordered]
    before = mean_output_shifts(float_model, onnx.load(plain_out / "model.qdq.onnx"), tensors, data)
    after = mean_output_shifts(float_model, onnx.load(out / "model.qdq.onnx"), tensors, data)
    # the layers' mean shifts shrink: the median over layers, and (empirical, on the data it measured) the
    # first layer's all but vanishes where it reads the model's input, so that no upstream error feeds it
    ratios = [np.abs(after[t]).mean() / max(np.abs(before[t]).mean(), 1e-12) for t in tensors]
    assert np.median(ratios) < 1.0
    reads_input = corrected.ctx.plan.float_input(ordered[0].inputs[0]) in {t.name for t in corrected.graph.inputs}
    if form == "empirical" and reads_input:
        assert ratios[0] < 0.05
    # and the model as a whole is closer to float
    sqnr = [evaluate(float_model, out_dir / "model.qdq.onnx", data).outputs[0].sqnr_db for out_dir in (plain_out, out)]
    assert sqnr[1] > sqnr[0] - 0.5


def test_a_layer_without_bias_gets_one_and_conv_transpose_is_left_alone(tmp_path):
    corrected, out = _compile(TEST_MODELS["conv_transpose_block"](), "tensorrt", tmp_path)
    explained = {e.node: e for e in corrected.ctx.explanations_of("bias_correct")}
    skipped = [e for e in explained.values() if not e.applied]
    assert skipped and all("ConvTranspose" in e.reason for e in skipped)
    qdq = onnx.load(out / "model.qdq.onnx")
    for node in qdq.graph.node:
        if node.op_type == "Conv" and explained.get(node.name, None) and explained[node.name].applied:
            assert len(node.input) == 3 and node.input[2]


def test_calibrate_takes_input_means_only_for_a_pass_that_asks(tmp_path):
    model = TEST_MODELS["resnet_basic_block"]()
    corrected, _ = _compile(model, "tensorrt", tmp_path)
    plain, _ = _compile(model, "tensorrt", tmp_path, with_correction=False)
    empirical, _ = _compile(model, "tensorrt", tmp_path, form="empirical")
    means = corrected.ctx.input_means
    assert sorted(means) == ["relu1", "x"] and means["relu1"].shape == (32,) and means["x"].shape == (16,)
    assert plain.ctx.input_means == {} and empirical.ctx.input_means == {}
