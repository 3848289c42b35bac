"""Layers that can return to float, and returning them: in place, or in a copy to measure.

A layer is a node that computes (not one the backend passes a quantized
value through, such as MaxPool or Reshape) and reads a quantized value: a
dequantized weight or activation, directly or through pass-through ops.
Returning it to float makes each such read take the float tensor behind the
quantizer instead (through a float copy of the pass-through ops, if any) and
restores the bias bias_correct changed for it; a quantizer nobody reads any
more goes. The layer's own output keeps its quantizer if quantized layers
read it: they still get the integers they expect, now quantized from a
float result. This is what TensorRT and FBGEMM do with a float layer between
int8 ones (a Q after it, a DQ before it), and it keeps every fusion of the
layers that stay quantized.

A search measures many sets of float layers: ``reverted_copy`` builds each
as its own model. (One model with a switch per layer, a Where on each read,
ran 2.8x slower than the quantized model on MobileNetV2: the switched
weights are no longer constants, so onnxruntime's Conv loses its blocked
layout, which costs more than a new session for each set.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import onnx_graphsurgeon as gs

from qcompiler.config.backend import BackendConfig
from qcompiler.graph import ir
from qcompiler.graph.ops import QDQ_OPS
from qcompiler.quant.plan import QuantPlan


@dataclass(frozen=True)
class QuantizedRead:
    """Input ``port`` of a layer reads the value of the quantizer on ``point`` through the ``through`` ops."""

    port: int
    point: str
    through: tuple[str, ...] = ()   # pass-through node names, from the quantizer to the layer


@dataclass(frozen=True)
class Layer:
    name: str
    op: str
    reads: tuple[QuantizedRead, ...]


def fallback_layers(graph: gs.Graph, plan: QuantPlan, backend: BackendConfig) -> list[Layer]:
    """Every layer of ``graph`` that reads a quantized value, in graph order."""
    quantizer_of = {point.nodes[-1]: point.tensor for point in plan.points.values()}
    layers = []
    for node in graph.nodes:
        if node.name in quantizer_of or node.op in QDQ_OPS or _passes_through(node, backend):
            continue
        reads = [read for port, tensor in enumerate(node.inputs)
                 if (read := _quantized_read(port, tensor, quantizer_of, backend)) is not None]
        if reads:
            layers.append(Layer(node.name, node.op, tuple(reads)))
    return layers


def revert(graph: gs.Graph, plan: QuantPlan, reasons: Mapping[Layer, str]) -> None:
    """Return each layer of ``reasons`` to float in ``graph`` and ``plan``, which records why: its reads take
    float values, its corrected bias is restored, and the quantizers nobody reads any more are removed."""
    _rewire(graph, plan, reasons)
    for layer, reason in reasons.items():
        plan.float_biases.pop(layer.name, None)
        plan.float_layers[layer.name] = reason
    _forget_removed_quantizers(graph, plan)


def reverted_copy(graph: gs.Graph, plan: QuantPlan, layers: Iterable[Layer]) -> gs.Graph:
    """A copy of ``graph`` with ``layers`` in float, as ``revert`` would leave it; ``plan`` is not changed.

    The copy shares the constants' arrays: a search that measures many sets of
    float layers copies no weight (a copy of the PaddleOCR classifier's 586
    nodes, rewired, takes 0.14 s).
    """
    copied = ir.copy_graph(graph)
    _rewire(copied, plan, layers)
    return copied


def _rewire(graph: gs.Graph, plan: QuantPlan, layers: Iterable[Layer]) -> None:
    rewire = _Rewiring(graph)
    for layer in layers:
        node = rewire.nodes[layer.name]
        for read in layer.reads:
            node.inputs[read.port] = rewire.float_value(read)
        bias = plan.float_biases.get(layer.name)
        if bias is not None:
            _restore_bias(rewire.nodes[bias.holder], bias.index, bias.original)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()


class _Rewiring:
    """Float values of quantized reads in one graph; a float copy of pass-through ops is made once."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.nodes = {node.name: node for node in graph.nodes}
        self.tensors = graph.tensors()
        self.names = ir.GraphNames(graph)
        self.copies: dict[tuple[str, ...], gs.Tensor] = {}   # by quantizer and the pass-through ops copied

    def float_value(self, read: QuantizedRead) -> gs.Tensor:
        value = self.tensors[read.point]
        for depth in range(1, len(read.through) + 1):
            key = (read.point, *read.through[:depth])
            if key not in self.copies:
                self.copies[key] = self._float_copy(self.nodes[read.through[depth - 1]], value)
            value = self.copies[key]
        return value

    def _float_copy(self, op: gs.Node, value: gs.Tensor) -> gs.Tensor:
        out = op.outputs[0]
        copied = gs.Variable(self.names.tensors.fresh(f"{out.name}/float"), dtype=out.dtype, shape=out.shape)
        node = gs.Node(op.op, self.names.nodes.fresh(f"{op.name}/float"), dict(op.attrs), [value, *op.inputs[1:]],
                       [copied])
        self.graph.nodes.append(node)
        self.nodes[node.name] = node
        return copied


def _quantized_read(port: int, tensor: gs.Tensor, quantizer_of: dict[str, str],
                    backend: BackendConfig) -> QuantizedRead | None:
    through = []
    while (producer := ir.producer(tensor)) is not None:
        if producer.name in quantizer_of:
            return QuantizedRead(port, quantizer_of[producer.name], tuple(reversed(through)))
        if not _passes_through(producer, backend):
            return None
        through.append(producer.name)
        tensor = producer.inputs[0]
    return None


def _passes_through(node: gs.Node, backend: BackendConfig) -> bool:
    rule = backend.ops.get(node.op)
    return rule is not None and rule.role == "pass_through"


def _restore_bias(holder: gs.Node, index: int, original: gs.Tensor | None) -> None:
    if original is not None:
        holder.inputs[index] = original
        return
    while len(holder.inputs) > index:   # bias_correct gave it a bias (and empty inputs before it, if any)
        holder.inputs.pop()
    while holder.inputs and not holder.inputs[-1].name:
        holder.inputs.pop()


def _forget_removed_quantizers(graph: gs.Graph, plan: QuantPlan) -> None:
    """Drop the points whose quantizer ``cleanup`` removed; the others' consumers are their readers now."""
    nodes = {node.name: node for node in graph.nodes}
    for name, point in list(plan.points.items()):
        last = nodes.get(point.nodes[-1])
        if last is None:
            del plan.points[name]
        else:
            point.consumers = [reader.name for reader in last.outputs[0].outputs]
