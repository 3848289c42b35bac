"""The quantized regions of a Q/DQ graph, as lowering passes and integer emitters find them.

A region is ``DQ -> op -> [Relu | Clip] -> Q``: the integers it reads (each
DequantizeLinear's input, scale and zero point), the op, the clamp fused with
it, and the QuantizeLinear that puts its result on the next grid. Q is
monotone, so ``Q(clamp(x, a, b)) = clamp(Q(x), Q(a), Q(b))``: a fused clamp is
a narrower saturation of the output integers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.graph import ir
from qcompiler.graph.ops import CLAMP_OPS
from qcompiler.quant.lowering import OutputGrid
from qcompiler.quant.plan import QuantPlan, QuantPoint
from qcompiler.quant.qmath import quantize


@dataclass(frozen=True)
class Dequantized:
    """An operand that is ``DequantizeLinear(integers, scale, zero_point)``."""

    node: gs.Node
    integers: gs.Tensor
    scale: np.ndarray
    zero_point: np.ndarray

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    @property
    def zero_point_tensor(self) -> gs.Tensor | None:
        return self.node.inputs[2] if len(self.node.inputs) > 2 and self.node.inputs[2].name else None


@dataclass(frozen=True)
class QuantizedOutput:
    """Where a region's result goes: the clamp fused with the op (if any), the Q, its point and grid."""

    clamp: gs.Node | None
    quant: gs.Node
    point: QuantPoint
    grid: OutputGrid

    @property
    def scale(self) -> np.ndarray:
        return self.point.scale

    @property
    def integers(self) -> gs.Variable:
        """The Q's output: the integer tensor the region's lowering produces."""
        return self.quant.outputs[0]


def dequantized(tensor: gs.Tensor) -> Dequantized | None:
    """``tensor`` as the output of a DequantizeLinear with constant scale and zero point; None otherwise."""
    node = ir.producer(tensor)
    if node is None or node.op != "DequantizeLinear":
        return None
    scale = ir.constant_value(node.inputs[1])
    zero_point = ir.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else \
        np.zeros((), node.inputs[0].dtype or np.uint8)
    if scale is None or zero_point is None:
        return None
    return Dequantized(node, node.inputs[0], np.asarray(scale, np.float32), np.asarray(zero_point))


def quant_nodes(plan: QuantPlan) -> dict[str, QuantPoint]:
    """The activation points by the name of their QuantizeLinear."""
    return {point.nodes[0]: point for point in plan.activations() if point.nodes}


def quantized_output(graph: gs.Graph, node: gs.Node, points: dict[str, QuantPoint]) -> QuantizedOutput | None:
    """``node``'s output as one per-tensor Q reads it, through at most one clamp with constant bounds.

    None when the output (or the clamp's) has another reader or is a graph
    output: then the float value is needed, and the region ends in float.
    """
    output = node.outputs[0]
    readers = output.outputs
    if len(readers) != 1 or ir.is_graph_output(graph, output):
        return None
    clamp = readers[0] if readers[0].op in CLAMP_OPS else None
    if clamp is not None:
        bounds = clamp_bounds(clamp)
        clamped = clamp.outputs[0]
        if bounds is None or len(clamped.outputs) != 1 or ir.is_graph_output(graph, clamped):
            return None
        quant = clamped.outputs[0]
    else:
        bounds, quant = (None, None), readers[0]
    point = points.get(quant.name)
    if quant.op != "QuantizeLinear" or point is None or point.axis is not None:
        return None
    return QuantizedOutput(clamp, quant, point, clamped_grid(point, bounds))


def clamped_grid(point: QuantPoint, bounds: tuple[float | None, float | None] = (None, None)) -> OutputGrid:
    """``point``'s output grid, its saturation narrowed to the quantized ``bounds`` of a fused clamp."""
    low, high = (None if bound is None else int(quantize(np.float32(bound), point.scale, point.zero_point,
                                                         point.grid)) for bound in bounds)
    return OutputGrid.of(point.grid, point.zero_point, low, high)


def sink_dequantize(graph: gs.Graph, node: gs.Node, names: ir.GraphNames) -> bool:
    """``DQ(q) -> node`` (a data-movement op) becomes ``node(q) -> DQ``: the op moves integers and its reader
    sees a DQ. False (and nothing changed) unless ``node`` reads a per-tensor DQ."""
    source = dequantized(node.inputs[0]) if node.inputs else None
    if source is None or not source.per_tensor:
        return False
    result = node.outputs[0]
    moved = gs.Variable(names.tensors.fresh(f"{result.name}/quantized"), dtype=source.integers.dtype,
                        shape=result.shape)
    node.inputs[0] = source.integers
    node.outputs[0] = moved
    graph.nodes.append(gs.Node("DequantizeLinear", names.nodes.fresh(f"{result.name}/dequant"),
                               dict(source.node.attrs), [moved, *source.node.inputs[1:]], [result]))
    return True


def clamp_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    """A Relu's or Clip's (low, high); None if a bound is not a constant. Absent bounds are None."""
    if node.op == "Relu":
        return 0.0, None
    if len(node.inputs) == 1 and ("min" in node.attrs or "max" in node.attrs):  # Clip before opset 11
        return node.attrs.get("min"), node.attrs.get("max")
    bounds = []
    for index in (1, 2):
        if index >= len(node.inputs) or not node.inputs[index].name:
            bounds.append(None)
            continue
        value = ir.constant_value(node.inputs[index])
        if value is None:
            return None
        bounds.append(float(value))
    return bounds[0], bounds[1]


def detach(*nodes: gs.Node | None) -> None:
    """Cut ``nodes`` off their outputs, so that cleanup removes them once their results are produced elsewhere."""
    for node in nodes:
        if node is not None:
            node.outputs.clear()
