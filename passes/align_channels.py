"""Equalize the per-channel weight ranges of consecutive weighted ops (DFQ's cross-layer equalization).

Before: y = W2 . f(W1 x + b1) + b2         f: identity, Relu or LeakyRelu
After:  y = (W2 S) . f(S^-1 W1 x + S^-1 b1) + b2,   S = diag(s), s_i = sqrt(r1_i r2_i) / r2_i
r1_i is the largest |weight| of op 1's output channel i, r2_i that of op 2's
input channel i; after scaling both are sqrt(r1_i r2_i), so a per-tensor
weight grid (snpe, tvm, academic) no longer spends its range on one channel.
f must commute with a positive per-channel scale (f(a x) = a f(x), a > 0),
which holds for identity, Relu and LeakyRelu: the float model is unchanged
(to float rounding). Pairs chain (Conv -> depthwise Conv -> Conv): each
pair is equalized in turn, over and over, until no scale moves by more than
``tolerance`` (or ``iterations`` rounds).
Not equalized, with the reason ``--explain align_channels`` gives:
- a bounded Clip (ReLU6) between them: scaling channel i moves its bound to
  6 / s_i, which one Clip cannot hold. ``bounded: relu`` replaces such a
  Clip(0, b) by Relu first (AIMET's choice; it changes the float model, so
  only on request, and the warning says by how much on the calibration data);
- an intermediate tensor with another reader, or that is a graph output;
- a weight (or bias) that is not a constant read by that op alone;
- grouped Convs other than depthwise ones (a channel of op 2 must be one
  input channel of one group).
Run before insert_quantizers, after fold_bn (BN must be in the weights).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler import runtime
from qcompiler.graph import ir
from qcompiler.measure.report import sqnr_db
from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult

POSITIVE_HOMOGENEOUS = ("Relu", "LeakyRelu")   # f(a x) = a f(x) for a > 0
PAIRED_OPS = ("Conv", "Gemm", "MatMul")
FLOAT_COST_SAMPLES = 8


@dataclass(frozen=True)
class AlignChannelsOptions:
    iterations: int = 20
    tolerance: float = 1e-3
    # a Clip(0, b) between two weighted ops: skip the pair, or make it a Relu first (changes the float model)
    bounded: Literal["skip", "relu"] = "skip"


@dataclass
class Pair:
    first: gs.Node
    second: gs.Node
    activation: gs.Node | None


class AlignChannels(Pass):
    name = "align_channels"
    Options = AlignChannelsOptions

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        swapped = self._swap_bounded(graph, ctx) if self.options.bounded == "relu" else []
        pairs = []
        for node in graph.nodes:
            pair = _pair_after(graph, node, ctx)
            if pair is not None:
                pairs.append(pair)
        if not pairs:
            return PassResult(changed=bool(swapped), stats={"pairs": 0, "relu6_to_relu": len(swapped)})
        before = {id(p): _range_ratios(p) for p in pairs}
        rounds = _equalize(pairs, self.options.iterations, self.options.tolerance)
        for pair in pairs:
            (first_before, second_before), (first_after, second_after) = before[id(pair)], _range_ratios(pair)
            via = f" through {pair.activation.op}" if pair.activation is not None else ""
            ctx.explain(pair.first.name, True, f"equalized with {pair.second.op} {pair.second.name}{via}: channel "
                                               f"range ratio (max/min) {first_before:.1f} -> {first_after:.1f}, "
                                               f"{pair.second.name}'s {second_before:.1f} -> {second_after:.1f}")
        return PassResult(changed=True, stats={"pairs": len(pairs), "rounds": rounds, "relu6_to_relu": len(swapped)})

    def _swap_bounded(self, graph: gs.Graph, ctx: PassContext) -> list[gs.Node]:
        """Each Clip(0, b) between two weighted ops becomes Relu; the float outputs' SQNR against before, warned."""
        clips = [node for node in graph.nodes if node.op == "Clip" and _between_weighted(graph, node)
                 and _clip_low(node) == 0.0]
        if not clips:
            return []
        reference = _float_outputs(graph, ctx)
        for clip in clips:
            while len(clip.inputs) > 1:
                clip.inputs.pop()
            clip.op, clip.attrs = "Relu", {}
            ctx.explain(clip.name, True, "Clip(0, b) became Relu (bounded: relu), so its neighbours can be equalized")
        after = _float_outputs(graph, ctx)
        if reference is not None:
            cost = min(sqnr_db(r, a) for r, a in zip(reference, after))
            ctx.warn(f"align_channels: {len(clips)} ReLU6 became Relu (bounded: relu), which changes the float "
                     f"model: its outputs now {cost:.1f} dB from before on {FLOAT_COST_SAMPLES} calibration samples")
        return clips


def _pair_after(graph: gs.Graph, node: gs.Node, ctx: PassContext) -> Pair | None:
    """The pair that ``node`` starts, if its output reaches one weighted op, through at most one activation."""
    if node.op not in PAIRED_OPS or _weight(node) is None:
        return None
    tensor, activation = node.outputs[0], None
    readers = tensor.outputs
    if len(readers) == 1 and readers[0].op in (*POSITIVE_HOMOGENEOUS, "Clip") and not ir.is_graph_output(graph, tensor):
        activation, tensor = readers[0], readers[0].outputs[0]
        readers = tensor.outputs
    if len(readers) > 1 and any(reader.op in PAIRED_OPS for reader in readers):
        ctx.explain(node.name, False, f"not equalized: its output has {len(readers)} readers (a fork), and one "
                                      "scale cannot suit them all")
        return None
    if len(readers) != 1 or readers[0].op not in PAIRED_OPS or readers[0].inputs[0] is not tensor:
        return None
    second = readers[0]
    reason = _problem(graph, node, activation, second)
    if reason:
        ctx.explain(node.name, False, f"not equalized with {second.op} {second.name}: {reason}")
        return None
    return Pair(node, second, activation)


def _problem(graph: gs.Graph, first: gs.Node, activation: gs.Node | None, second: gs.Node) -> str | None:
    if ir.is_graph_output(graph, first.outputs[0]) or len(first.outputs[0].outputs) != 1:
        return "its output has another reader"
    if activation is not None and activation.op == "Clip":
        return (f"Clip {activation.name} has a bound: scaling a channel by s moves it to b / s, which one Clip "
                "cannot hold (bounded: relu makes it a Relu, changing the float model)")
    if activation is not None and ir.is_graph_output(graph, activation.outputs[0]):
        return "the activation's output is a graph output"
    for node in (first, second):
        if _weight(node) is None:
            return f"{node.name}'s weight is not a constant it alone reads"
        if len(node.inputs) > 2 and node.inputs[2].name and not _unshared_constant(node.inputs[2]):
            return f"{node.name}'s bias is not a constant it alone reads"
    if _output_axis(first) is None:
        return f"{first.name} is a Conv with groups that are not depthwise"
    if _input_axis(second) is None:
        return f"{second.name} is a Conv with groups that are not depthwise"
    if first.inputs[1].values.shape[_output_axis(first)] != second.inputs[1].values.shape[_input_axis(second)]:
        return "their channel counts differ"
    return None


def _weight(node: gs.Node) -> gs.Constant | None:
    if len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    return weight if _unshared_constant(weight) and weight.values.ndim >= 2 else None


def _unshared_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) and len(tensor.outputs) == 1


def _depthwise(node: gs.Node) -> bool:
    group = int(node.attrs.get("group", 1))
    return node.op == "Conv" and group > 1 and node.inputs[1].values.shape[1] == 1


def _output_axis(node: gs.Node) -> int | None:
    """The weight axis of ``node``'s output channels; None for grouped Convs that are not depthwise."""
    if node.op == "Conv":
        return 0 if int(node.attrs.get("group", 1)) == 1 or _depthwise(node) else None
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return 1


def _input_axis(node: gs.Node) -> int | None:
    """The weight axis that meets ``node``'s input channels (a depthwise Conv's channels are its outputs)."""
    if node.op == "Conv":
        if _depthwise(node):
            return 0
        return 1 if int(node.attrs.get("group", 1)) == 1 else None
    if node.op == "Gemm":
        return 1 if node.attrs.get("transB", 0) else 0
    return 0


def _channel_ranges(weight: np.ndarray, axis: int) -> np.ndarray:
    """max |w| per channel along ``axis``, without a copy of the weight (VGG-19's fc6 is 411 MB)."""
    others = tuple(a for a in range(weight.ndim) if a != axis)
    return np.maximum(weight.max(axis=others), -weight.min(axis=others)).astype(np.float64)


def _equalize(pairs: list[Pair], iterations: int, tolerance: float) -> int:
    """Scale each pair in turn until no scale moves by more than ``tolerance``; the rounds it took."""
    for round_ in range(1, iterations + 1):
        largest = 0.0
        for pair in pairs:
            largest = max(largest, _equalize_pair(pair))
        if largest <= tolerance:
            return round_
    return iterations


def _equalize_pair(pair: Pair) -> float:
    """One DFQ step on ``pair``; how far its scales were from 1."""
    first_axis, second_axis = _output_axis(pair.first), _input_axis(pair.second)
    first_weight, second_weight = pair.first.inputs[1], pair.second.inputs[1]
    r1 = _channel_ranges(first_weight.values, first_axis)
    r2 = _channel_ranges(second_weight.values, second_axis)
    usable = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[usable] = np.sqrt(r1[usable] * r2[usable]) / r2[usable]
    _scale_along(first_weight, 1.0 / scale, first_axis)
    if len(pair.first.inputs) > 2 and pair.first.inputs[2].name:
        _scale_bias(pair.first.inputs[2], 1.0 / scale)
    _scale_along(second_weight, scale, second_axis)
    return float(np.max(np.abs(scale - 1.0)))


def _scale_along(constant: gs.Constant, factors: np.ndarray, axis: int) -> None:
    values = np.asarray(constant.values)
    shape = [1] * values.ndim
    shape[axis] = -1
    constant.values = values * factors.reshape(shape).astype(values.dtype)


def _scale_bias(constant: gs.Constant, factors: np.ndarray) -> None:
    """A bias per output channel ([C], or Gemm's [1, N] or a scalar broadcast to every channel) times ``factors``."""
    values = np.asarray(constant.values)
    if values.size == factors.size:
        constant.values = (values.astype(np.float64).ravel() * factors).reshape(values.shape).astype(values.dtype)
    else:
        constant.values = (np.broadcast_to(values.astype(np.float64).ravel(), factors.shape) * factors
                           ).astype(values.dtype)


def _range_ratios(pair: Pair) -> tuple[float, float]:
    """max/min over channels of each weight's channel ranges (the min over nonzero channels)."""
    ratios = []
    for node, axis in ((pair.first, _output_axis(pair.first)), (pair.second, _input_axis(pair.second))):
        ranges = _channel_ranges(node.inputs[1].values, axis)
        nonzero = ranges[ranges > 0]
        ratios.append(float(nonzero.max() / nonzero.min()) if nonzero.size else 1.0)
    return ratios[0], ratios[1]


def _between_weighted(graph: gs.Graph, clip: gs.Node) -> bool:
    producer = ir.producer(clip.inputs[0])
    readers = clip.outputs[0].outputs
    return (producer is not None and producer.op in PAIRED_OPS and len(readers) == 1
            and readers[0].op in PAIRED_OPS and not ir.is_graph_output(graph, clip.outputs[0]))


def _clip_low(clip: gs.Node) -> float | None:
    if len(clip.inputs) > 1 and clip.inputs[1].name:
        value = ir.constant_value(clip.inputs[1])
        return float(value) if value is not None else None
    return clip.attrs.get("min")


def _float_outputs(graph: gs.Graph, ctx: PassContext) -> list[np.ndarray] | None:
    """The float graph's outputs on the first calibration samples (None without calibration data)."""
    if ctx.calibration_data is None:
        return None
    feed = ctx.calibration_data.head(FLOAT_COST_SAMPLES)
    session = runtime.graph_session(graph)
    count = len(next(iter(feed.values())))
    runs = [session.run(None, {name: values[i:i + 1] for name, values in feed.items()}) for i in range(count)]
    return [np.concatenate(outputs) for outputs in zip(*runs)]
