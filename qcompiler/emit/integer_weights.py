"""The form deploy toolchains read weights in: an integer initializer -> DequantizeLinear.

Every weight's FP32 initializer -> QuantizeLinear -> DequantizeLinear
becomes an integer initializer -> DequantizeLinear: the same values
(QuantizeLinear is computed here exactly as onnxruntime does), a quarter of
the size.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from qcompiler.quant.plan import QuantPlan


def integer_weights(graph: gs.Graph, plan: QuantPlan) -> gs.Graph:
    """A copy of ``graph`` whose quantized weights are integer initializers read by their DQ."""
    graph = graph.copy()
    nodes = {node.name: node for node in graph.nodes}
    tensors = graph.tensors()
    for point in plan.weights():
        quant, dequant = nodes[point.nodes[0]], nodes[point.nodes[1]]
        integers = gs.Constant(quant.outputs[0].name, point.quantized(tensors[point.tensor].values))
        quant.outputs.clear()
        dequant.inputs[0] = integers
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph
