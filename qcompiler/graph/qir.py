"""QIR: the canonical text of a graph, for dumps, diffs and golden files.

One line per node in a topological order that depends on the graph's
structure alone (a depth-first walk from the outputs, operands in order), so
the text does not change when a pass merely appends nodes to the list.
Attributes are sorted, floats printed with 6 significant digits. Constants of
up to ``INLINE_LIMIT`` elements, and vectors (per-channel scales, zero points,
biases) of up to ``VECTOR_LIMIT``, are printed in full, a vector whose
elements are all equal as ``all <value>``; larger constants as dtype, shape
and a short hash of their bytes. Example:

    qir 1
    opset ai.onnx=17
    input %x: f32[N,3,8,8]
    const @w: f32[4,3,3,3] #3f2a9c01d4e7
    const @w/scale: f32[4] = [0.0123, 0.0208, 0.0101, 0.0175]
    const @w/zero_point: i8[16] = all 0
    const @shape: i64[2] = [1, -1]
    conv1: %y: f32[N,4,8,8] = Conv(%x, @w) {group=1, pads=[1,1,1,1]}
    output %y
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.graph import ir

FORMAT_VERSION = 1
INLINE_LIMIT = 8
VECTOR_LIMIT = 64
FLOAT_DIGITS = 6
HASH_CHARS = 12

_DTYPE_NAMES = {
    np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.float64): "f64",
    np.dtype(np.int8): "i8", np.dtype(np.uint8): "u8", np.dtype(np.int16): "i16",
    np.dtype(np.uint16): "u16", np.dtype(np.int32): "i32", np.dtype(np.uint32): "u32",
    np.dtype(np.int64): "i64", np.dtype(np.uint64): "u64", np.dtype(np.bool_): "bool",
}


def to_text(graph: gs.Graph) -> str:
    """The canonical text of ``graph``."""
    lines = [f"qir {FORMAT_VERSION}", _opset_line(graph)]
    lines += [f"input %{t.name}: {_type(t)}" for t in graph.inputs]
    order = stable_topological_order(graph)
    lines += [_const_line(c) for c in _constants_in_use_order(order, graph)]
    lines += [_node_line(node) for node in order]
    lines += [f"output %{t.name}: {_type(t)}" for t in graph.outputs]
    return "\n".join(lines) + "\n"


def stable_topological_order(graph: gs.Graph) -> list[gs.Node]:
    """Post-order DFS from the outputs; nodes no output needs come last, in list order."""
    order: list[gs.Node] = []
    visited: set[int] = set()

    def visit(root: gs.Node) -> None:
        stack = [(root, 0)]
        while stack:
            node, next_operand = stack.pop()
            if next_operand == 0:
                if id(node) in visited:
                    continue
                visited.add(id(node))
            if next_operand < len(node.inputs):
                stack.append((node, next_operand + 1))
                producer = ir.producer(node.inputs[next_operand])
                if producer is not None and id(producer) not in visited:
                    stack.append((producer, 0))
            else:
                order.append(node)

    for output in graph.outputs:
        if (producer := ir.producer(output)) is not None:
            visit(producer)
    for node in graph.nodes:
        visit(node)
    return order


def tensor_digest(values: np.ndarray) -> str:
    data = np.ascontiguousarray(values)
    return hashlib.sha256(data.dtype.str.encode() + str(data.shape).encode() + data.tobytes()).hexdigest()[:HASH_CHARS]


def format_float(value: float) -> str:
    text = f"{float(value):.{FLOAT_DIGITS}g}"
    return "0" if text == "-0" else text


def _opset_line(graph: gs.Graph) -> str:
    versions = {"ai.onnx": graph.opset}
    for entry in graph.import_domains or []:
        versions[entry.domain or "ai.onnx"] = entry.version
    return "opset " + ", ".join(f"{name}={version}" for name, version in sorted(versions.items()))


def _constants_in_use_order(order: Iterable[gs.Node], graph: gs.Graph) -> list[gs.Constant]:
    seen: dict[str, gs.Constant] = {}
    tensors = [t for node in order for t in node.inputs] + list(graph.outputs)
    for tensor in tensors:
        if isinstance(tensor, gs.Constant) and tensor.name not in seen:
            seen[tensor.name] = tensor
    return list(seen.values())


def _const_line(constant: gs.Constant) -> str:
    return f"const @{constant.name}: {_value(np.asarray(constant.values))}"


def _node_line(node: gs.Node) -> str:
    op = node.op if node.domain in ir.DEFAULT_DOMAINS or not node.domain else f"{node.domain}.{node.op}"
    outputs = ", ".join(f"%{t.name}: {_type(t)}" for t in node.outputs)
    operands = ", ".join(_operand(t) for t in node.inputs)
    attrs = _attrs(node.attrs)
    return f"{node.name}: {outputs} = {op}({operands})" + (f" {{{attrs}}}" if attrs else "")


def _operand(tensor: gs.Tensor) -> str:
    if not tensor.name:
        return "_"
    return f"@{tensor.name}" if isinstance(tensor, gs.Constant) else f"%{tensor.name}"


def _attrs(attrs: dict) -> str:
    return ", ".join(f"{key}={_attr_value(attrs[key])}" for key in sorted(attrs))


def _attr_value(value) -> str:
    if isinstance(value, gs.Constant):
        return _value(np.asarray(value.values))
    if isinstance(value, gs.Graph):
        return f"graph#{hashlib.sha256(to_text(value).encode()).hexdigest()[:HASH_CHARS]}"
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, (bytes, str)):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        return repr(text)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_attr_value(v) for v in value) + "]"
    return str(value)


def _type(tensor: gs.Tensor) -> str:
    dtype = tensor.dtype
    if isinstance(tensor, gs.Constant):
        dtype = np.asarray(tensor.values).dtype
    return _dtype_name(dtype) + _shape(tensor.shape)


def _dtype_name(dtype) -> str:
    if dtype is None:
        return "?"
    try:
        return _DTYPE_NAMES.get(np.dtype(dtype), str(np.dtype(dtype)))
    except TypeError:
        return str(dtype)


def _shape(shape) -> str:
    if shape is None:
        return "[*]"
    dims = ["?" if d is None or d == "" else str(d) for d in shape]
    return "[" + ",".join(dims) + "]"


def _value(values: np.ndarray) -> str:
    head = _dtype_name(values.dtype) + _shape(values.shape)
    short = values.size <= INLINE_LIMIT
    if not short and not (values.ndim == 1 and values.size <= VECTOR_LIMIT):
        return f"{head} #{tensor_digest(values)}"
    items = [_scalar(v) for v in values.reshape(-1)]
    if not short and len(set(items)) == 1:
        return f"{head} = all {items[0]}"
    return f"{head} = [{', '.join(items)}]"


def _scalar(value) -> str:
    if isinstance(value, np.floating):
        return format_float(value)
    return str(value.item()) if hasattr(value, "item") else str(value)
