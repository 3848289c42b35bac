"""align_channels: the float model unchanged wherever it equalizes, the channel ranges met, every skip explained."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from qcompiler import runtime
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.graph import ir
from qcompiler.passes.align_channels import _channel_ranges, _input_axis, _output_axis
from qcompiler.testing.models import TEST_MODELS, ModelBuilder

LIGHT_ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
TOLERANCE = 1e-5


def _aligned(model_path: Path, calib: Path, *overrides: str):
    """The float model after fold_bn and align_channels (tvm's pipeline cut there)."""
    return compile_model(CompileRequest(model=model_path, backend="tvm", out=None, calib=str(calib),
                                        stop_after="align_channels", overrides=list(overrides),
                                        explain=["align_channels"]))


def _relative_error(original: Path, graph: gs.Graph, samples: np.ndarray) -> float:
    reference = runtime.session(original)
    aligned = runtime.graph_session(graph)
    name = graph.inputs[0].name
    worst = 0.0
    for index in range(len(samples)):
        feed = {name: samples[index:index + 1]}
        for expected, actual in zip(reference.run(None, feed), aligned.run(None, feed)):
            worst = max(worst, runtime.relative_error(expected, actual))
    return worst


def _samples(model: onnx.ModelProto, count: int, seed: int = 0) -> np.ndarray:
    weights = {init.name for init in model.graph.initializer}
    data = next(i for i in model.graph.input if i.name not in weights)   # old models list weights as inputs
    dims = data.type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else 1 for d in dims][1:]
    return np.random.default_rng(seed).standard_normal([count, *shape]).astype(np.float32)


@pytest.mark.parametrize("model_name", sorted(TEST_MODELS))
def test_float_outputs_unchanged_on_every_test_model(model_name, model_file, tmp_path):
    model = TEST_MODELS[model_name]()
    path = model_file(model)
    np.save(tmp_path / "calib.npy", _samples(model, 4))
    result = _aligned(path, tmp_path / "calib.npy")
    assert _relative_error(path, result.float_graph, _samples(model, 4, seed=1)) < TOLERANCE


@pytest.mark.parametrize("name, pairs", [("light_resnet50.onnx", 32), ("light_squeezenet.onnx", 0),
                                         ("light_inception_v1.onnx", 19), ("light_zfnet512.onnx", 4)])
def test_float_outputs_unchanged_on_the_light_zoo(name, pairs, tmp_path):
    path = LIGHT_ZOO / name
    model = onnx.load(str(path))
    np.save(tmp_path / "calib.npy", _samples(model, 1))
    result = _aligned(path, tmp_path / "calib.npy")
    assert next(r.stats for r in result.records if r.name == "align_channels")["pairs"] == pairs
    if not pairs:   # SqueezeNet: every squeeze conv forks into two expand convs
        assert all("a fork" in e.reason for e in result.ctx.explanations_of("align_channels"))
    assert _relative_error(path, result.float_graph, _samples(model, 1, seed=1)) < TOLERANCE


@pytest.mark.parametrize("model_name", ["mobilenetv2_bn.onnx", "ppocr_cls_v2.onnx"])
def test_float_outputs_unchanged_on_the_shared_models(model_name, shared, tmp_path):
    path = shared.model(model_name)
    model = onnx.load(str(path))
    np.save(tmp_path / "calib.npy", _samples(model, 2))
    result = _aligned(path, tmp_path / "calib.npy")
    assert _relative_error(path, result.float_graph, _samples(model, 2, seed=1)) < TOLERANCE


def _chain(activation: str) -> onnx.ModelProto:
    """conv1 -> activation -> depthwise conv -> Relu -> conv3, with channel ranges far apart."""
    builder = ModelBuilder("chain", seed=3)
    x = builder.input("x", ["N", 4, 8, 8])
    scales = np.array([0.01, 1.0, 10.0, 0.1, 3.0, 0.3], np.float32)
    w1 = builder.rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * scales[:, None, None, None]
    y = builder.node("Conv", "conv1", [x, builder.const("w1", w1), builder.const("b1", np.ones(6, np.float32))],
                     pads=[1, 1, 1, 1])
    if activation == "Relu6":
        y = builder.node("Clip", "act1", [y, builder.const("lo", np.float32(0)), builder.const("hi", np.float32(6))])
    else:
        y = builder.node(activation, "act1", [y])
    wd = builder.rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    y = builder.node("Conv", "dw", [y, builder.const("wd", wd)], group=6, pads=[1, 1, 1, 1])
    y = builder.node("Relu", "act2", [y])
    w3 = builder.rng.standard_normal((5, 6, 1, 1)).astype(np.float32)
    y = builder.node("Conv", "conv3", [y, builder.const("w3", w3)])
    return builder.build([(y, ["N", 5, 8, 8])])


@pytest.mark.parametrize("activation", ["Relu", "LeakyRelu"])
def test_a_conv_depthwise_conv_chain_meets_its_channel_ranges(activation, model_file, tmp_path):
    model = _chain(activation)
    path = model_file(model)
    np.save(tmp_path / "calib.npy", _samples(model, 2))
    result = _aligned(path, tmp_path / "calib.npy")
    assert _relative_error(path, result.float_graph, _samples(model, 4, seed=1)) < TOLERANCE
    nodes = {node.name: node for node in result.float_graph.nodes}
    for first, second in (("conv1", "dw"), ("dw", "conv3")):
        r1 = _channel_ranges(nodes[first].inputs[1].values, _output_axis(nodes[first]))
        r2 = _channel_ranges(nodes[second].inputs[1].values, _input_axis(nodes[second]))
        np.testing.assert_allclose(r1, r2, rtol=0.05)   # met, to the iteration's tolerance along the chain
    reasons = [str(e) for e in result.ctx.explanations_of("align_channels")]
    assert any("conv1: applied: equalized with Conv dw" in r and "range ratio" in r for r in reasons)


def test_a_relu6_pair_is_skipped_with_its_reason_or_swapped_on_request(model_file, tmp_path):
    model = _chain("Relu6")
    path = model_file(model)
    np.save(tmp_path / "calib.npy", _samples(model, 8))
    kept = _aligned(path, tmp_path / "calib.npy")
    reasons = [str(e) for e in kept.ctx.explanations_of("align_channels")]
    assert any("conv1: skipped" in r and "has a bound" in r for r in reasons)
    assert _relative_error(path, kept.float_graph, _samples(model, 2, seed=1)) < TOLERANCE
    swapped = _aligned(path, tmp_path / "calib.npy", "pipeline[1].options.bounded=relu")
    assert "Clip" not in {node.op for node in swapped.float_graph.nodes}
    assert any("ReLU6 became Relu" in w and "changes the float model" in w for w in swapped.ctx.warnings)


def test_a_shared_intermediate_tensor_is_skipped(model_file, tmp_path):
    builder = ModelBuilder("fork", seed=4)
    x = builder.input("x", ["N", 4, 6, 6])
    y = builder.node("Conv", "conv1", [x, builder.const("w1", builder.rng.standard_normal((6, 4, 1, 1)).astype(
        np.float32))])
    a = builder.node("Conv", "conv2", [y, builder.const("w2", builder.rng.standard_normal((3, 6, 1, 1)).astype(
        np.float32))])
    b = builder.node("Relu", "side", [y])
    model = builder.build([(a, ["N", 3, 6, 6]), (b, ["N", 6, 6, 6])])
    path = model_file(model)
    np.save(tmp_path / "calib.npy", _samples(model, 2))
    result = _aligned(path, tmp_path / "calib.npy")
    assert next(r.stats for r in result.records if r.name == "align_channels")["pairs"] == 0
    assert ir.to_model(result.float_graph) is not None
