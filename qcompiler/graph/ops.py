"""Facts about ONNX ops that passes, emitters and checkers share: one table, no second list.

What a backend does with an op (its role) is backend data (``ops:`` in the
YAML); what an op *is* lives here: which ops carry a weight and on which
axis its output channels lie, which only move values, which are a clamp,
and which compute on quantized integers themselves.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ops whose second input is a weight when it is a constant
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops that only move or select values: a quantized tensor passes through them unchanged
DATA_MOVEMENT_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Slice")
# activations that are a clamp: Q(clamp(x, a, b)) = clamp(Q(x), Q(a), Q(b)), so they run as an integer Clip
CLAMP_OPS = ("Relu", "Clip")
# contrib ops of quantized models that no naming rule below catches
QUANTIZED_CONTRIB_OPS = ("QAttention", "MatMulNBits", "QOrderedMatMul")


def weight_axis(node: gs.Node) -> int:
    """The output-channel axis of a weighted op's weight (BACKENDS.md, TensorRT rules)."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return 1  # MatMul with weight (K, N)


def input_channel_axis(node: gs.Node) -> int:
    """The axis of a weighted op's activation input that its weight's input channels meet."""
    if node.op in ("Conv", "ConvTranspose"):
        return 1
    if node.op == "Gemm":
        return 0 if node.attrs.get("transA", 0) else 1
    return -1  # MatMul: (..., K) times (K, N)


def is_integer_op(op: str) -> bool:
    """An op that computes on quantized integers itself rather than through Q/DQ: the QOperator form
    (QLinearConv, QGemm, ...), the Integer ops (ConvInteger, MatMulInteger16, ...), dynamic quantization."""
    return op.startswith(("QLinear", "DynamicQuantize")) or "Integer" in op or op == "QGemm"


def is_quantized_op(op: str) -> bool:
    """An op that only a model quantized already holds: Q/DQ, an integer op, a quantized contrib op."""
    return op in QDQ_OPS or is_integer_op(op) or op in QUANTIZED_CONTRIB_OPS
