"""FBGEMM's arithmetic against torch's own fbgemm kernels, layer by layer on MobileNetV2 (opt-in: needs torch).

Each Conv of model.int.onnx (backend fbgemm), fed the fake-quant model's
integers, against ``torch.ops.quantized.conv2d`` with the same integer
weights, float bias, scales and zero points on torch's fbgemm engine, then
the fused Relu/Clip as the same integer clamp. Bit-exact, except where
FBGEMM itself leaves exact int32 arithmetic: without VNNI, VPMADDUBSW sums
pairs of u8 x s8 products into a saturating int16, so an input above the
calibrated range (up to 255 under reduce_range) can saturate a pair. Each
differing value must sit where such a pair exists. Skipped where torch is
not installed (it is never a dependency): ``pip install torch==2.13.0``.
"""
from __future__ import annotations

import numpy as np
import pytest

from qcompiler.driver import CompileRequest, compile_model
from qcompiler.graph import ir
from qcompiler.measure.deployment_gap import layer_values
from qcompiler.quant.regions import dequantized, quant_nodes, quantized_output

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def fbgemm_result(shared, mobilenet_photos):
    calib, held_out = mobilenet_photos
    result = compile_model(CompileRequest(model=shared.model("mobilenetv2_bn.onnx"), backend="fbgemm", out=None,
                                          calib=str(calib)))
    return result, held_out


def test_every_conv_matches_torch_fbgemm(fbgemm_result):
    result, held_out = fbgemm_result
    torch.backends.quantized.engine = "fbgemm"
    layers = _conv_layers(result)
    assert len(layers) == 52
    samples = [{"input": held_out[i:i + 1]} for i in range(2)]
    from qcompiler import runtime

    sources = sorted({layer["input"] for layer in layers})
    fake_quant = runtime.graph_session(result.graph, sources, fuse_qdq=False)
    differing, values = 0, 0
    for sample, (_, ours) in zip(samples, layer_values(result.graph, result.integer_graph, samples)):
        inputs = dict(zip(sources, fake_quant.run(sources, sample)))
        for layer in layers:
            integers = inputs[layer["input"]]
            theirs = _torch_conv(layer, integers)
            positions = np.argwhere(ours[layer["output"]] != theirs)
            for position in positions:
                assert _a_pair_can_saturate(layer, integers, position), (layer["name"], position)
            differing += len(positions)
            values += theirs.size
    assert differing <= 1e-4 * values, f"{differing} of {values} values differ from torch"


def _a_pair_can_saturate(layer: dict, integers: np.ndarray, position: np.ndarray) -> bool:
    """Whether two of the u8 x s8 products that make the output at ``position`` sum past int16."""
    _, channel, row, column = (int(v) for v in position)
    weight = layer["weight"].astype(np.int64)
    per_group = weight.shape[0] // layer["groups"]
    inputs = weight.shape[1]
    group = channel // per_group
    top, left = layer["padding"]
    kh, kw = weight.shape[2:]
    padded = np.pad(integers.astype(np.int64), ((0, 0), (0, 0), (top, top), (left, left)))
    r, c = row * layer["stride"][0], column * layer["stride"][1]
    patch = padded[0, group * inputs:(group + 1) * inputs, r:r + kh, c:c + kw]
    products = np.sort((patch * weight[channel]).ravel())
    return bool(products[-2:].sum() > 32767 or products[:2].sum() < -32768)


def _conv_layers(result) -> list[dict]:
    """Every quantized Conv of the fake-quant graph with what torch needs to run it."""
    graph, plan = result.graph, result.ctx.plan
    points = quant_nodes(plan)
    layers = []
    for node in (n for n in graph.nodes if n.op == "Conv"):
        data, weight, output = dequantized(node.inputs[0]), dequantized(node.inputs[1]), \
            quantized_output(graph, node, points)
        if data is None or weight is None or output is None:
            continue
        weight_point = next(p for p in plan.weights() if node.name in p.consumers)
        integers = weight_point.quantized(graph.tensors()[weight_point.tensor].values)
        layers.append({
            "name": node.name, "input": data.integers.name, "output": output.integers.name,
            "x_scale": float(data.scale), "x_zero_point": int(data.zero_point),
            "weight": integers, "w_scales": weight.scale.astype(np.float64),
            "bias": ir.constant_value(node.inputs[2]).astype(np.float32),
            "stride": node.attrs.get("strides", [1, 1]), "padding": node.attrs.get("pads", [0, 0, 0, 0])[:2],
            "dilation": node.attrs.get("dilations", [1, 1]), "groups": int(node.attrs.get("group", 1)),
            "y_scale": float(output.scale), "y_zero_point": output.grid.zero_point,
            "clamp": (output.grid.low, output.grid.high),
        })
    return layers


def _torch_conv(layer: dict, integers: np.ndarray) -> np.ndarray:
    x = torch._make_per_tensor_quantized_tensor(torch.from_numpy(integers), layer["x_scale"], layer["x_zero_point"])
    w = torch._make_per_channel_quantized_tensor(torch.from_numpy(layer["weight"]),
                                                 torch.from_numpy(layer["w_scales"]),
                                                 torch.zeros(len(layer["w_scales"]), dtype=torch.int64), 0)
    packed = torch.ops.quantized.conv2d_prepack(w, torch.from_numpy(layer["bias"]), layer["stride"],
                                                layer["padding"], layer["dilation"], layer["groups"])
    y = torch.ops.quantized.conv2d(x, packed, layer["y_scale"], layer["y_zero_point"])
    return np.clip(y.int_repr().numpy(), *layer["clamp"])
