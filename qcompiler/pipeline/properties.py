"""Facts about a graph and its plan that more than one pass requires or ensures.

A pass's own facts (``fold_bn``'s BN_FOLDED) stay in its module; the ones
here are shared, so that no pass imports another to name them.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from qcompiler.pipeline.pass_base import PassContext, Property


def _no_quantizers(graph: gs.Graph, ctx: PassContext) -> str | None:
    if not ctx.plan:
        return "the quantization plan is empty"
    present = {node.name for node in graph.nodes}
    for point in ctx.plan.points.values():
        missing = [n for n in point.nodes if n not in present]
        if missing:
            return f"quantizer node {missing[0]} of {point.tensor} is not in the graph"
    return None


def _uncalibrated(graph: gs.Graph, ctx: PassContext) -> str | None:
    missing = [p.tensor for p in ctx.plan.points.values() if not p.calibrated]
    return f"{len(missing)} quantizers have no scale yet, e.g. {missing[0]}" if missing else None


QUANTIZERS_PLACED = Property("quantizers", "insert_quantizers", _no_quantizers)
CALIBRATED = Property("calibrated quantizers", "calibrate", _uncalibrated)


def _float_weights(graph: gs.Graph, ctx: PassContext) -> str | None:
    """A weight still quantized at run time: a float initializer read by a QuantizeLinear."""
    quantized = {p.tensor for p in ctx.plan.weights()}
    for node in graph.nodes:
        if node.op == "QuantizeLinear" and node.inputs[0].name in quantized:
            return f"weight {node.inputs[0].name} is still quantized by {node.name}"
    return None


INTEGER_WEIGHTS = Property("integer weights", "integer_weights", _float_weights)
