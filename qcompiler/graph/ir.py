"""Helpers over onnx-graphsurgeon's Graph, the working IR.

Passes read and rewrite a ``gs.Graph``; everything ONNX can hold stays in it,
so the graph after any pass exports to valid ONNX that onnxruntime runs.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

# ONNX's own opset domain, under both spellings tools use for it.
DEFAULT_DOMAINS = ("", "ai.onnx")


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph) -> onnx.ModelProto:
    """Export ``graph`` to ONNX, keeping its opset imports and metadata."""
    return gs.export_onnx(graph, do_type_check=False)


def copy_graph(graph: gs.Graph) -> gs.Graph:
    """``graph.copy()`` with what onnx-graphsurgeon's copy drops: the producer's name and version.

    The copy shares the constants' arrays; a model written from it is the one
    written from ``graph``, byte for byte.
    """
    copied = graph.copy()
    copied.producer_name, copied.producer_version = graph.producer_name, graph.producer_version
    return copied


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return entry.version
    return 1


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of ``tensor`` if it is an initializer (or a Constant node's output)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        if isinstance(attrs.get("value"), gs.Constant):
            return np.asarray(attrs["value"].values)
    return None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def replace_uses(old: gs.Tensor, new: gs.Tensor, readers: Iterable[str] | None = None) -> None:
    """Make the consumers of ``old`` (only the nodes named in ``readers``, if given) read ``new``."""
    wanted = set(readers) if readers is not None else None
    for node in list(old.outputs):
        if wanted is not None and node.name not in wanted:
            continue
        for index, operand in enumerate(node.inputs):
            if operand is old:
                node.inputs[index] = new


class NameScope:
    """Hands out names derived from existing ones, in one namespace.

    ONNX keeps node names and tensor names apart, so a pass holds one scope
    for each. A derived name is ``base`` itself when free; only a clash adds a
    suffix, so inserting one node never renames the others.
    """

    def __init__(self, taken: Iterable[str]):
        self.taken = set(taken)

    @classmethod
    def for_nodes(cls, graph: gs.Graph) -> "NameScope":
        return cls(node.name for node in graph.nodes)

    @classmethod
    def for_tensors(cls, graph: gs.Graph) -> "NameScope":
        return cls(graph.tensors().keys())

    def fresh(self, base: str) -> str:
        name, suffix = base, 1
        while name in self.taken:
            suffix += 1
            name = f"{base}#{suffix}"
        self.taken.add(name)
        return name


class GraphNames:
    """The node scope and the tensor scope of one graph."""

    def __init__(self, graph: gs.Graph):
        self.nodes = NameScope.for_nodes(graph)
        self.tensors = NameScope.for_tensors(graph)
