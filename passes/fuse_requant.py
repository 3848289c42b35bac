"""Compute each quantized weighted op in integers, requantized the way the backend requantizes.

Before: DQ(q_x) -> Conv(., DQ(q_w), b) -> [Relu | Clip] -> Q(s_y, z_y) -> q_y
After:  ConvInteger(q_x, q_w, z_x, z_w) -> acc (int32) -> requant -> q_y
(both operands as uint8, ``q + 128`` for int8 ones: the same values, and the
pair onnxruntime computes exactly and fastest; see SIGNED_TO_UNSIGNED)
with the backend's ``arithmetic`` (BACKENDS.md section 5), per output channel c:
- bias ``int32``: ``acc += sat32(round(b / (s_x s_w[c])))``; a bias past int32
  saturates (counted in the stats, with a warning), never wraps;
  bias ``float``: added in float before rounding (FBGEMM);
- multiplier ``float32``: ``q_y = round(float32(acc) * float32(s_x s_w[c] / s_y))``
  (with a float bias, ``(float32(acc) + b / (s_x s_w[c])) * ...``);
  ``fixed_point``: ``acc * M0 * 2^(shift - 31)`` in int64 (TFLite's
  QuantizeMultiplier); ``shift``: ``acc / 2^n`` for power-of-two scales;
- then ``+ z_y``, saturated to the grid, narrowed by the fused Relu/Clip.
Gemm and MatMul become MatMulInteger (a Gemm's weight transposed, alpha in
the multiplier, beta in the bias). An op whose output is not quantized (a
graph output, TensorRT's Conv before a residual Add) still accumulates in
integers and is dequantized: ``float32(acc) * float32(s_x s_w[c]) (+ b)``.
ConvTranspose (ONNX has no integer form) and ops whose operands are not
both dequantized per tensor stay in float; ``--explain fuse_requant`` says
which and why.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.config.backend import ArithmeticConfig
from qcompiler.graph import ir
from qcompiler.graph.ops import WEIGHTED_OPS
from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult, Property
from qcompiler.pipeline.properties import CALIBRATED, INTEGER_WEIGHTS
from qcompiler.quant.lowering import Lowering, float_multiplier, integer_form, real_multiplier
from qcompiler.quant.regions import (
    Dequantized,
    QuantizedOutput,
    dequantized,
    detach,
    quant_nodes,
    quantized_output,
)
from qcompiler.quant.rounding import saturated_int32

CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@dataclass
class Layer:
    """A weighted op ready to lower: its operands, weight as (K, N) for MatMulInteger, bias and alpha."""

    node: gs.Node
    data: Dequantized
    weight: Dequantized
    bias: np.ndarray | None   # float32, beta applied, shaped per output channel
    alpha: float = 1.0

    @property
    def channel_shape(self) -> tuple[int, ...]:
        """How a per-output-channel vector broadcasts over the op's output."""
        if self.node.op == "Conv":
            return (-1,) + (1,) * (self.weight.integers.values.ndim - 2)
        return (-1,)


def _unexplained_float_layers(graph: gs.Graph, ctx: PassContext) -> str | None:
    """A weighted op that reads two dequantized operands yet stays in float, with no reason given."""
    explained = {e.node for e in ctx.explanations_of(FuseRequant.name) if not e.applied}
    for node in graph.nodes:
        if node.op in WEIGHTED_OPS and len(node.inputs) > 1 and node.name not in explained \
                and dequantized(node.inputs[0]) is not None and dequantized(node.inputs[1]) is not None:
            return f"{node.op} {node.name} reads integers but stays in float, and no reason says why"
    return None


LAYERS_LOWERED = Property("weighted ops in integers", "fuse_requant", _unexplained_float_layers)


class FuseRequant(Pass):
    name = "fuse_requant"
    lowers = True
    requires = (CALIBRATED, INTEGER_WEIGHTS)
    ensures = (CALIBRATED, LAYERS_LOWERED)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        points = quant_nodes(ctx.plan)
        names = ir.GraphNames(graph)
        stats: Counter[str] = Counter()
        saturated: list[str] = []
        unsigned: dict[str, gs.Variable] = {}
        for node in [n for n in graph.nodes if n.op in WEIGHTED_OPS]:
            layer = _layer(node)
            if isinstance(layer, str):
                if len(node.inputs) > 1 and dequantized(node.inputs[1]) is not None:
                    ctx.explain(node.name, False, layer)
                    stats["float"] += 1
                continue
            kind, outcome, clipped = _lower(Lowering(graph, names, node.name), layer,
                                            quantized_output(graph, node, points), ctx.backend.arithmetic, unsigned)
            ctx.explain(node.name, True, outcome)
            stats[kind] += 1
            if clipped:
                saturated.append(f"{node.name} ({clipped})")
                stats["saturated_biases"] += clipped
        if saturated:
            ctx.warn(f"fuse_requant: {stats['saturated_biases']} int32 biases saturate, in "
                     f"{', '.join(saturated[:3])}{' ...' if len(saturated) > 3 else ''}; their layers lose the "
                     "excess (a weight or input scale too small for the bias)")
        return PassResult(changed=bool(stats["requantized"] + stats["dequantized"]), stats=dict(stats))


def _lower(lowering: Lowering, layer: Layer, output: QuantizedOutput | None, arithmetic: ArithmeticConfig,
           unsigned: dict[str, gs.Variable]) -> tuple[str, str, int]:
    """Lower ``layer``: "requantized" or "dequantized", what it became (for --explain), and how many of its
    int32 biases saturated."""
    node = layer.node
    arithmetic, note = _effective(arithmetic, layer, output)
    acc, clipped = _accumulator(lowering, layer, arithmetic, unsigned)
    if output is None:
        _dequantize(lowering, layer, acc, arithmetic)
        return "dequantized", (f"{node.op} in integers, {arithmetic.bias} bias, dequantized to float (its output "
                               f"is not quantized){note}"), clipped
    _requantize(lowering, layer, acc, output, arithmetic)
    fused = f" and {output.clamp.op} {output.clamp.name}" if output.clamp is not None else ""
    return "requantized", (f"{node.op}{fused} in integers, {arithmetic.bias} bias, {arithmetic.multiplier} "
                           f"multiplier rounding {arithmetic.rounding}, onto {output.point.tensor}'s grid "
                           f"[{output.grid.low}, {output.grid.high}]{note}"), clipped


def _layer(node: gs.Node) -> Layer | str:
    """``node`` as a Layer, or why it stays in float."""
    if node.op == "ConvTranspose":
        return "ONNX has no integer ConvTranspose: it stays DQ -> ConvTranspose -> Q in float"
    if len(node.inputs) < 2:
        return "it has no weight"
    data, weight = dequantized(node.inputs[0]), dequantized(node.inputs[1])
    if data is None or weight is None:
        return "an operand is not dequantized from integers"
    if not data.per_tensor:
        return "its input is quantized per channel; the integer kernels take one input scale"
    if not isinstance(weight.integers, gs.Constant):
        return "its weight is not a constant (run integer_weights first)"
    if np.unique(weight.zero_point).size > 1:
        return "its weight zero points differ across channels; ConvInteger and MatMulInteger take one"
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return "a Gemm with transA: MatMulInteger reads the input as it is"
    bias = _bias(node, weight)
    if isinstance(bias, str):
        return bias
    alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
    return Layer(node, data, weight, bias, alpha)


def _bias(node: gs.Node, weight: Dequantized) -> np.ndarray | None | str:
    """The op's bias as float32 per output channel (Gemm's beta applied); None without one; why not, as text."""
    if node.op == "MatMul" or len(node.inputs) < 3 or not node.inputs[2].name:
        return None
    bias = ir.constant_value(node.inputs[2])
    channels = weight.integers.values.shape[0 if node.op == "Conv" or node.attrs.get("transB", 0) else 1]
    if bias is None or bias.size not in (1, channels) or (node.op == "Gemm" and bias.ndim > 1 and bias.shape[0] != 1):
        return "its bias is not a constant vector over the output channels"
    beta = np.float32(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else np.float32(1.0)
    return np.broadcast_to(np.asarray(bias, np.float32).ravel() * beta, (channels,)).astype(np.float32)


def _effective(arithmetic: ArithmeticConfig, layer: Layer, output: QuantizedOutput | None
               ) -> tuple[ArithmeticConfig, str]:
    """The arithmetic this layer runs: shift multipliers need power-of-two ratios, else fixed point; a float
    bias needs a float multiplier. The second value says what changed, for the explanation."""
    note = ""
    effective = integer_form(arithmetic, _real(layer, output)) if output is not None else arithmetic
    if effective != arithmetic:
        arithmetic = effective
        note = "; a scale ratio is not a power of two, so fixed point instead of a shift"
    if arithmetic.bias == "float" and arithmetic.multiplier != "float32":
        arithmetic = replace(arithmetic, bias="int32")
    return arithmetic, note


def _real(layer: Layer, output: QuantizedOutput) -> np.ndarray:
    return real_multiplier(layer.data.scale, layer.weight.scale, np.float32(layer.alpha), divisor=output.scale)


def _bias_scale(layer: Layer) -> np.ndarray:
    """``s_x * s_w[c]`` (times alpha) in float32: the scale of the accumulator."""
    return float_multiplier(layer.data.scale, layer.weight.scale, np.float32(layer.alpha))


def _accumulator(lowering: Lowering, layer: Layer, arithmetic: ArithmeticConfig,
                 unsigned: dict[str, gs.Variable]) -> tuple[gs.Variable, int]:
    """The int32 accumulator (with the int32 bias when the arithmetic adds it there) and how many biases
    saturated. Both operands go in as uint8 (``unsigned`` holds the activations converted so far)."""
    node = layer.node
    data, data_zero_point = _unsigned_data(lowering, layer.data, unsigned)
    values, zero_point = _unsigned_weight(layer.weight)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        values = np.ascontiguousarray(values.T)
    weight = lowering.const("weight", values, np.uint8)
    zero_points = [lowering.const("x_zero_point", data_zero_point, np.uint8),
                   lowering.const("w_zero_point", zero_point, np.uint8)]
    if node.op == "Conv":
        attrs = {key: node.attrs[key] for key in CONV_ATTRIBUTES if key in node.attrs}
        acc = lowering.op("ConvInteger", [data, weight, *zero_points], np.int32, "accumulate", attrs)
    else:
        acc = lowering.op("MatMulInteger", [data, weight, *zero_points], np.int32, "accumulate")
    if layer.bias is None or arithmetic.bias == "float":
        return acc, 0
    integers, clipped = saturated_int32(layer.bias / _bias_scale(layer).astype(np.float64))
    biased = lowering.op("Add", [acc, lowering.const("bias_int32", integers.reshape(layer.channel_shape), np.int32)],
                         np.int32, "biased")
    return biased, clipped


# onnxruntime's x86 ConvInteger and MatMulInteger compute uint8 x uint8 exactly in int32 (widened to int16,
# then VPMADDWD), and about 5x faster than the other pairs (MobileNetV2's depthwise 3x3: 2.8 against 19 ms);
# uint8 x int8 (MatMulInteger) and int8 x uint8 (ConvInteger) sum product pairs in a saturating int16
# (VPMADDUBSW) on CPUs without VNNI. So both operands move to uint8: q + 128 with zero point z + 128 holds
# the same values.
SIGNED_TO_UNSIGNED = 128


def _unsigned_weight(weight: Dequantized) -> tuple[np.ndarray, int]:
    values, zero_point = weight.integers.values, int(weight.zero_point.ravel()[0])
    if values.dtype == np.uint8:
        return values, zero_point
    return (values.astype(np.int16) + SIGNED_TO_UNSIGNED).astype(np.uint8), zero_point + SIGNED_TO_UNSIGNED


def _unsigned_data(lowering: Lowering, data: Dequantized, unsigned: dict[str, gs.Variable]
                   ) -> tuple[gs.Tensor, int]:
    """The activations as uint8 (converted once per tensor) and their zero point."""
    zero_point = int(data.zero_point)
    if data.integers.dtype == np.uint8:
        return data.integers, zero_point
    name = data.integers.name
    if name not in unsigned:
        wide = lowering.cast(data.integers, np.int32, "input/int32")   # int16 Add needs opset 14
        shifted = lowering.op("Add", [wide, lowering.const("input/offset", SIGNED_TO_UNSIGNED, np.int32)], np.int32,
                              "input/offset")
        unsigned[name] = lowering.cast(shifted, np.uint8, "input/uint8")
    return unsigned[name], zero_point + SIGNED_TO_UNSIGNED


def _requantize(lowering: Lowering, layer: Layer, acc: gs.Variable, output: QuantizedOutput,
                arithmetic: ArithmeticConfig) -> None:
    """The accumulator onto the output grid, producing the Q's integer tensor; the op, clamp and Q go."""
    target = output.integers
    detach(layer.node, output.clamp, output.quant)
    shape = layer.channel_shape
    if arithmetic.multiplier == "float32":
        value = lowering.cast(acc, np.float32, "accumulator")
        if layer.bias is not None and arithmetic.bias == "float":
            offset = (layer.bias / _bias_scale(layer)).astype(np.float32)
            value = lowering.op("Add", [value, lowering.const("bias_over_scale", offset.reshape(shape), np.float32)],
                                np.float32, "biased")
        multiplier = float_multiplier(layer.data.scale, layer.weight.scale, np.float32(layer.alpha),
                                      divisor=output.scale)
        scaled = lowering.op("Mul", [value, lowering.const("multiplier", _shaped(multiplier, shape), np.float32)],
                             np.float32, "scaled")
        lowering.to_grid_from_float(scaled, arithmetic.rounding, output.grid, output=target)
        return
    wide = lowering.cast(acc, np.int64, "accumulator")
    scaled = lowering.scale_integers(wide, _shaped(_real(layer, output), shape), arithmetic, "requant")
    lowering.to_grid_from_int(scaled, output.grid, output=target)


def _dequantize(lowering: Lowering, layer: Layer, acc: gs.Variable, arithmetic: ArithmeticConfig) -> None:
    """The accumulator back to float: ``float32(acc) * float32(s_x s_w[c])`` (plus a float bias)."""
    target = layer.node.outputs[0]
    shape = layer.channel_shape
    detach(layer.node)
    value = lowering.cast(acc, np.float32, "accumulator")
    scale = lowering.const("accumulator_scale", _shaped(_bias_scale(layer), shape), np.float32)
    if layer.bias is not None and arithmetic.bias == "float":
        scaled = lowering.op("Mul", [value, scale], np.float32, "dequantized")
        lowering.op("Add", [scaled, lowering.const("bias", layer.bias.reshape(shape), np.float32)], np.float32,
                    "biased_float", output=target)
    else:
        lowering.op("Mul", [value, scale], np.float32, "dequantized", output=target)


def _shaped(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    values = np.asarray(values)
    return values if values.size == 1 else values.reshape(shape)
