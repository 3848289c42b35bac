"""The form deploy toolchains read weights in: an integer initializer -> DequantizeLinear.

Every weight's FP32 initializer -> QuantizeLinear -> DequantizeLinear
becomes an integer initializer -> DequantizeLinear: the same values
(QuantizeLinear is computed here exactly as onnxruntime does), a quarter of
the size.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.graph import ir
from qcompiler.quant.plan import QuantPlan, QuantPoint


def integer_weights(graph: gs.Graph, plan: QuantPlan) -> gs.Graph:
    """A copy of ``graph`` whose quantized weights are integer initializers read by their DQ."""
    graph = ir.copy_graph(graph)
    hold_integer_weights(graph, plan)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


def hold_integer_weights(graph: gs.Graph, plan: QuantPlan,
                         integers: Callable[[QuantPoint, np.ndarray], np.ndarray] | None = None) -> None:
    """In place: each weight's Q -> DQ becomes ``integers(point, values)`` (QuantizeLinear's by default) -> DQ."""
    nodes = {node.name: node for node in graph.nodes}
    tensors = graph.tensors()
    for point in plan.weights():
        quant, dequant = nodes[point.nodes[0]], nodes[point.nodes[1]]
        values = tensors[point.tensor].values
        held = point.quantized(values) if integers is None else integers(point, values)
        dequant.inputs[0] = gs.Constant(quant.outputs[0].name, held)
        quant.outputs.clear()
