"""Small seeded models built with onnx.helper, one per block shape that matters.

Each builder returns a checked ``onnx.ModelProto`` (opset 17, batch dim
``N``) whose BatchNormalization layers have non-trivial statistics, so that
folding them is a real test. ``TEST_MODELS`` maps a stable name to its
builder; goldens are stored under these names.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class ModelBuilder:
    """Accumulates nodes and seeded weights; every name is given by the caller."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []

    def input(self, name: str, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(self, name: str, values: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def node(self, op: str, name: str, inputs: Sequence[str], outputs: Sequence[str] | None = None, **attrs) -> str:
        outputs = list(outputs or [name])
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=name, **attrs))
        return outputs[0]

    def conv(self, name: str, x: str, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
             group: int = 1, bias: bool = False) -> str:
        fan_in = c_in // group * kernel * kernel
        weight = self.rng.normal(0, np.sqrt(2.0 / fan_in), (c_out, c_in // group, kernel, kernel))
        inputs = [x, self.const(f"{name}.weight", weight.astype(np.float32))]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.rng.normal(0, 0.1, c_out).astype(np.float32)))
        pad = kernel // 2
        return self.node("Conv", name, inputs, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[pad] * 4, group=group)

    def conv_transpose(self, name: str, x: str, c_in: int, c_out: int, kernel: int = 3, stride: int = 2,
                       group: int = 1, bias: bool = True) -> str:
        weight = self.rng.normal(0, np.sqrt(1.0 / (c_in * kernel * kernel)), (c_in, c_out // group, kernel, kernel))
        inputs = [x, self.const(f"{name}.weight", weight.astype(np.float32))]
        if bias:
            inputs.append(self.const(f"{name}.bias", self.rng.normal(0, 0.1, c_out).astype(np.float32)))
        return self.node("ConvTranspose", name, inputs, kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[1, 1, 1, 1], output_padding=[1, 1], group=group)

    def bn(self, name: str, x: str, channels: int) -> str:
        params = [
            self.rng.uniform(0.5, 1.5, channels),   # gamma
            self.rng.normal(0, 0.2, channels),      # beta
            self.rng.normal(0, 0.2, channels),      # running mean
            self.rng.uniform(0.5, 2.0, channels),   # running var
        ]
        names = [self.const(f"{name}.{p}", v.astype(np.float32))
                 for p, v in zip(("weight", "bias", "running_mean", "running_var"), params)]
        return self.node("BatchNormalization", name, [x, *names], epsilon=1e-5)

    def relu(self, name: str, x: str) -> str:
        return self.node("Relu", name, [x])

    def relu6(self, name: str, x: str) -> str:
        low = self.const(f"{name}.min", np.array(0.0, np.float32))
        high = self.const(f"{name}.max", np.array(6.0, np.float32))
        return self.node("Clip", name, [x, low, high])

    def gemm(self, name: str, x: str, k: int, n: int, trans_b: bool = True) -> str:
        weight = self.rng.normal(0, np.sqrt(1.0 / k), (n, k) if trans_b else (k, n)).astype(np.float32)
        bias = self.rng.normal(0, 0.1, n).astype(np.float32)
        return self.node("Gemm", name, [x, self.const(f"{name}.weight", weight), self.const(f"{name}.bias", bias)],
                         transB=int(trans_b))

    def matmul(self, name: str, x: str, k: int, n: int) -> str:
        weight = self.rng.normal(0, np.sqrt(1.0 / k), (k, n)).astype(np.float32)
        return self.node("MatMul", name, [x, self.const(f"{name}.weight", weight)])

    def build(self, outputs: Sequence[tuple[str, Sequence[int | str]]]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="qcompiler.testing")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def resnet_basic_block(seed: int = 0) -> onnx.ModelProto:
    """ResNet basic block with a strided 1x1 downsample on the skip path."""
    b = ModelBuilder("resnet_basic_block", seed)
    x = b.input("x", ["N", 16, 16, 16])
    y = b.relu("relu1", b.bn("bn1", b.conv("conv1", x, 16, 32, stride=2), 32))
    y = b.bn("bn2", b.conv("conv2", y, 32, 32), 32)
    skip = b.bn("downsample.bn", b.conv("downsample.conv", x, 16, 32, kernel=1, stride=2), 32)
    out = b.relu("relu_out", b.node("Add", "add", [y, skip]))
    return b.build([(out, ["N", 32, 8, 8])])


def resnet_bottleneck(seed: int = 1) -> onnx.ModelProto:
    """ResNet bottleneck (1x1 reduce, 3x3, 1x1 expand) with an identity skip."""
    b = ModelBuilder("resnet_bottleneck", seed)
    x = b.input("x", ["N", 64, 8, 8])
    y = b.relu("relu1", b.bn("bn1", b.conv("conv1", x, 64, 16, kernel=1), 16))
    y = b.relu("relu2", b.bn("bn2", b.conv("conv2", y, 16, 16), 16))
    y = b.bn("bn3", b.conv("conv3", y, 16, 64, kernel=1), 64)
    out = b.relu("relu_out", b.node("Add", "add", [y, x]))
    return b.build([(out, ["N", 64, 8, 8])])


def mobilenetv2_inverted_residual(seed: int = 2) -> onnx.ModelProto:
    """MobileNetV2 block: 1x1 expand, depthwise 3x3, ReLU6 as Clip, linear 1x1, skip Add."""
    b = ModelBuilder("mobilenetv2_inverted_residual", seed)
    x = b.input("x", ["N", 16, 8, 8])
    y = b.relu6("expand.relu6", b.bn("expand.bn", b.conv("expand.conv", x, 16, 96, kernel=1), 96))
    y = b.relu6("dw.relu6", b.bn("dw.bn", b.conv("dw.conv", y, 96, 96, group=96), 96))
    y = b.bn("project.bn", b.conv("project.conv", y, 96, 16, kernel=1), 16)
    out = b.node("Add", "add", [y, x])
    return b.build([(out, ["N", 16, 8, 8])])


def inception_concat_block(seed: int = 3) -> onnx.ModelProto:
    """Four Inception-style branches (1x1, 1x1-3x3, 1x1-5x5 as 3x3s, pool-1x1) joined by Concat."""
    b = ModelBuilder("inception_concat_block", seed)
    x = b.input("x", ["N", 16, 8, 8])

    def unit(name: str, inp: str, c_in: int, c_out: int, kernel: int) -> str:
        return b.relu(f"{name}.relu", b.bn(f"{name}.bn", b.conv(f"{name}.conv", inp, c_in, c_out, kernel), c_out))

    branch1 = unit("b1", x, 16, 8, 1)
    branch2 = unit("b2.3x3", unit("b2.reduce", x, 16, 8, 1), 8, 12, 3)
    branch3 = unit("b3.3x3b", unit("b3.3x3a", unit("b3.reduce", x, 16, 4, 1), 4, 6, 3), 6, 6, 3)
    pooled = b.node("MaxPool", "b4.pool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    branch4 = unit("b4.proj", pooled, 16, 6, 1)
    out = b.node("Concat", "concat", [branch1, branch2, branch3, branch4], axis=1)
    return b.build([(out, ["N", 32, 8, 8])])


def gemm_head(seed: int = 4) -> onnx.ModelProto:
    """Classifier head: pool, flatten, MatMul + BN1d, Gemm(transB=1) + BN1d, Gemm(transB=0)."""
    b = ModelBuilder("gemm_head", seed)
    x = b.input("x", ["N", 32, 4, 4])
    y = b.node("Flatten", "flatten", [b.node("GlobalAveragePool", "pool", [x])], axis=1)
    y = b.relu("fc1.relu", b.bn("fc1.bn", b.matmul("fc1", y, 32, 24), 24))
    y = b.relu("fc2.relu", b.bn("fc2.bn", b.gemm("fc2", y, 24, 16, trans_b=True), 16))
    out = b.gemm("fc3", y, 16, 10, trans_b=False)
    return b.build([(out, ["N", 10])])


def conv_transpose_block(seed: int = 5) -> onnx.ModelProto:
    """Decoder upsampling: grouped ConvTranspose + BN + ReLU, then ConvTranspose + BN."""
    b = ModelBuilder("conv_transpose_block", seed)
    x = b.input("x", ["N", 8, 4, 4])
    y = b.relu("up1.relu", b.bn("up1.bn", b.conv_transpose("up1", x, 8, 12, group=2), 12))
    out = b.bn("up2.bn", b.conv_transpose("up2", y, 12, 6, bias=False), 6)
    return b.build([(out, ["N", 6, 16, 16])])


def single_node_model(op: str) -> onnx.ModelProto:
    """One ``op`` node from a uint8 input to a uint8 output, attributes and other inputs left out:
    for checkers that judge a graph by its op types. Not a model to run."""
    node = helper.make_node(op, ["x"], ["y"], name=f"stray_{op}")
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


TEST_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet_basic_block": resnet_basic_block,
    "resnet_bottleneck": resnet_bottleneck,
    "mobilenetv2_inverted_residual": mobilenetv2_inverted_residual,
    "inception_concat_block": inception_concat_block,
    "gemm_head": gemm_head,
    "conv_transpose_block": conv_transpose_block,
}
