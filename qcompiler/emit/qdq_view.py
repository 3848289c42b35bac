"""The Q/DQ structure of any ONNX model, as the backends' rule checkers see it.

``QdqView`` lists every QuantizeLinear/DequantizeLinear node with its
scales, zero points, container type and axis, finds the quantizer behind
each input of a node, and counts the weighted ops that will run in int8.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompiler.graph import ir
from qcompiler.graph.ops import DATA_MOVEMENT_OPS, QDQ_OPS, WEIGHTED_OPS


@dataclass
class CheckReport:
    """A backend rule checker's findings on one model."""

    violations: list[str] = field(default_factory=list)
    int8_ops: int = 0
    weighted_ops: int = 0
    # what breaks no rule but changes values the backend computes (an int32 bias that saturated, ...)
    notes: list[str] = field(default_factory=list)

    def text(self, backend: str) -> str:
        lines = [f"{backend}: {len(self.violations)} violation(s); "
                 f"{self.int8_ops} of {self.weighted_ops} weighted ops will run in int8"]
        lines += [f"  - {v}" for v in self.violations] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class Quantizer:
    """One QuantizeLinear or DequantizeLinear node, as a checker sees it."""

    node: gs.Node
    scale: np.ndarray | None         # None when not a constant
    zero_point: np.ndarray | None    # None when absent (0) or not a constant
    dtype: np.dtype
    axis: int

    @property
    def per_channel(self) -> bool:
        return self.scale is not None and self.scale.size > 1

    @property
    def positive_constant_scales(self) -> bool:
        return self.scale is not None and bool(np.all(self.scale > 0))

    @property
    def zero_is_zero(self) -> bool:
        return self.zero_point is None or not np.any(self.zero_point)

    def same_factors(self, other: "Quantizer") -> bool:
        return (self.scale is not None and other.scale is not None
                and np.array_equal(self.scale, other.scale) and self.dtype == other.dtype
                and np.array_equal(_zero(self), _zero(other)))


class QdqView:
    """The Q/DQ structure of a model: who quantizes what, with which factors."""

    def __init__(self, model: onnx.ModelProto | gs.Graph):
        self.graph = model if isinstance(model, gs.Graph) else ir.to_graph(model)
        self.opset = self.graph.opset
        self.quantizers = {node.name: _quantizer(node) for node in self.graph.nodes if node.op in QDQ_OPS}

    def of(self, node: gs.Node | None) -> Quantizer | None:
        return self.quantizers.get(node.name) if node is not None else None

    def dequantized_input(self, node: gs.Node, index: int) -> Quantizer | None:
        """The DQ that produces input ``index`` of ``node``, looking through data-movement ops."""
        if index >= len(node.inputs):
            return None
        producer = ir.producer(node.inputs[index])
        while producer is not None and producer.op in DATA_MOVEMENT_OPS:
            producer = ir.producer(producer.inputs[0])
        return self.of(producer) if producer is not None and producer.op == "DequantizeLinear" else None

    def is_weight(self, q: Quantizer) -> bool:
        """Whether a Q or DQ quantizes a constant: a float initializer, or (DQ) an integer one or Q of a float one."""
        source = q.node.inputs[0]
        if isinstance(source, gs.Constant):
            return True
        producer = ir.producer(source)
        return (q.node.op == "DequantizeLinear" and producer is not None and producer.op == "QuantizeLinear"
                and isinstance(producer.inputs[0], gs.Constant))

    def weighted_nodes(self) -> list[gs.Node]:
        return [n for n in self.graph.nodes if n.op in WEIGHTED_OPS and _has_constant_operand(n, self)]

    def operands(self, node: gs.Node) -> tuple[Quantizer | None, Quantizer | None]:
        """The DQs of a weighted op's data input and weight (None where that operand stays float)."""
        return self.dequantized_input(node, 0), self.dequantized_input(node, 1)

    def report(self, violations: list[str]) -> CheckReport:
        """``violations``, with how many of the weighted ops have both operands quantized."""
        weighted = self.weighted_nodes()
        int8 = sum(None not in self.operands(node) for node in weighted)
        return CheckReport(violations, int8, len(weighted))


def _quantizer(node: gs.Node) -> Quantizer:
    scale = ir.constant_value(node.inputs[1])
    zero_point = ir.constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if node.op == "QuantizeLinear":
        dtype = zero_point.dtype if zero_point is not None else np.dtype(np.uint8)
    else:
        source = node.inputs[0]
        dtype = np.dtype(source.values.dtype if isinstance(source, gs.Constant) else source.dtype or np.uint8)
    return Quantizer(node, scale, zero_point, np.dtype(dtype), int(node.attrs.get("axis", 1)))


def _zero(q: Quantizer) -> np.ndarray:
    return q.zero_point if q.zero_point is not None else np.zeros((), q.dtype)


def _has_constant_operand(node: gs.Node, view: QdqView) -> bool:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None:
        return False
    if isinstance(weight, gs.Constant):
        return True
    dequant = view.dequantized_input(node, 1)
    return dequant is not None and view.is_weight(dequant)
