"""Fold BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul that feeds it.

Before: y = Conv(x, W, B); z = BatchNormalization(y, g, b, m, v)
After:  z = Conv(x, W * k, (B - m) * k + b)   with k = g / sqrt(v + eps) per output channel
        ConvTranspose scales W along its output-channel axis (1, per group);
        Gemm scales B's output-channel axis (by transB) and absorbs beta * C;
        MatMul(x, W) with constant 2-D W becomes Gemm(x, W * k, b - m * k).
A BN that follows nothing foldable:
Before: z = BatchNormalization(x, g, b, m, v)
After:  z = Add(Mul(x, k), b - m * k)         k and the shift shaped [C, 1, ..., 1]
Applies when the BN runs in inference mode with constant parameters, its
input has no other consumer and is not a graph output, and the producer's
weight (and bias) are constants no other node reads. Otherwise the BN is
left alone and ``--explain fold_bn`` says why. The arithmetic is done in
float64 and cast back, so float outputs agree to about 1e-6 relative.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.graph import ir
from qcompiler.graph.ops import WEIGHTED_OPS
from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult, Property


@dataclass(frozen=True)
class FoldBNOptions:
    # what to do with a BN that follows nothing foldable
    standalone: Literal["mul_add", "keep"] = "mul_add"


@dataclass(frozen=True)
class BNParams:
    scale: np.ndarray  # k = g / sqrt(v + eps)
    shift: np.ndarray  # b - m * k


def _unfolded_bn(graph: gs.Graph, ctx: PassContext | None = None) -> str | None:
    for node in graph.nodes:
        if node.op == "BatchNormalization" and _bn_params(node)[1] is None:
            producer, reason = _fold_target(graph, node)
            if producer is not None:
                return f"BatchNormalization {node.name!r} could still fold into {producer.op} {producer.name!r}"
    return None


BN_FOLDED = Property("no BatchNormalization that could fold", "fold_bn", _unfolded_bn)


class FoldBN(Pass):
    name = "fold_bn"
    Options = FoldBNOptions
    ensures = (BN_FOLDED,)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        counts = {"folded": 0, "to_mul_add": 0, "kept": 0}
        names = ir.GraphNames(graph)
        for bn in [node for node in graph.nodes if node.op == "BatchNormalization"]:
            outcome = self._rewrite(graph, bn, names, ctx)
            counts[outcome] += 1
        return PassResult(changed=counts["folded"] + counts["to_mul_add"] > 0, stats=counts)

    def _rewrite(self, graph: gs.Graph, bn: gs.Node, names: ir.GraphNames, ctx: PassContext) -> str:
        params, reason = _bn_params(bn)
        if params is None:
            ctx.explain(bn.name, False, reason)
            return "kept"
        producer, reason = _fold_target(graph, bn)
        if producer is not None:
            _fold_into(producer, bn, params, names)
            ctx.explain(bn.name, True, f"folded into {producer.op} {producer.name}")
            return "folded"
        if reason is not None:
            ctx.explain(bn.name, False, reason)
            return "kept"
        if self.options.standalone == "keep":
            ctx.explain(bn.name, False, "follows nothing foldable (standalone: keep)")
            return "kept"
        reason = _to_mul_add(graph, bn, params, names)
        if reason is not None:
            ctx.explain(bn.name, False, reason)
            return "kept"
        ctx.explain(bn.name, True, "follows nothing foldable; became Mul + Add")
        return "to_mul_add"


def _bn_params(bn: gs.Node) -> tuple[BNParams | None, str | None]:
    if bn.attrs.get("training_mode", 0):
        return None, "training-mode BatchNormalization"
    if any(out.outputs for out in bn.outputs[1:]):
        return None, "its running-statistics outputs are read"
    values = [ir.constant_value(t) for t in bn.inputs[1:5]]
    if len(values) != 4 or any(v is None for v in values):
        return None, "BN parameters are not constants"
    gamma, beta, mean, var = (v.astype(np.float64) for v in values)
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return BNParams(scale=scale, shift=beta - mean * scale), None


def _fold_target(graph: gs.Graph, bn: gs.Node) -> tuple[gs.Node | None, str | None]:
    """The node to fold ``bn`` into, or None with a reason (None: nothing foldable)."""
    y = bn.inputs[0]
    producer = ir.producer(y)
    if producer is None or producer.op not in WEIGHTED_OPS:
        return None, None
    if len(y.outputs) > 1:
        return None, f"{producer.op} {producer.name} output {y.name} has {len(y.outputs)} consumers"
    if ir.is_graph_output(graph, y):
        return None, f"{producer.op} {producer.name} output {y.name} is a graph output"
    reason = _constant_unshared(producer, 1, "weight") or _constant_unshared(producer, 2, "bias")
    if reason:
        return None, reason
    channels = _output_channels(producer)
    if isinstance(channels, str):
        return None, channels
    bn_channels = ir.constant_value(bn.inputs[1]).size
    if channels != bn_channels:
        return None, f"{producer.op} {producer.name} has {channels} output channels, the BN {bn_channels}"
    return producer, None


def _constant_unshared(node: gs.Node, index: int, role: str) -> str | None:
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None
    tensor = node.inputs[index]
    if ir.constant_value(tensor) is None:
        return f"{node.op} {node.name} {role} {tensor.name} is not a constant"
    others = [n.name for n in tensor.outputs if n is not node]
    if others:
        return f"{node.op} {node.name} {role} {tensor.name} is shared with {others[0]}"
    return None


def _output_channels(node: gs.Node) -> int | str:
    weight = ir.constant_value(node.inputs[1])
    if node.op == "Conv":
        return weight.shape[0] if weight.ndim >= 3 else "Conv weight has fewer than 3 dims"
    if node.op == "ConvTranspose":
        return weight.shape[1] * int(node.attrs.get("group", 1)) if weight.ndim >= 3 else "ConvTranspose weight has fewer than 3 dims"
    if weight.ndim != 2:
        return f"{node.op} weight is not 2-D"
    if node.op == "Gemm":
        return weight.shape[0] if node.attrs.get("transB", 0) else weight.shape[1]
    rank = _rank(node.inputs[0])
    if rank != 2:
        return f"MatMul input has rank {rank if rank is not None else 'unknown'}; BN normalizes axis 1, not the last"
    return weight.shape[1]


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def _fold_into(producer: gs.Node, bn: gs.Node, params: BNParams, names: ir.GraphNames) -> None:
    weight_tensor = producer.inputs[1]
    weight = ir.constant_value(weight_tensor)
    bias = _existing_bias(producer, weight.dtype)
    if producer.op == "MatMul":
        producer.op, producer.attrs = "Gemm", {}
    new_weight = _scale_weight(producer, weight.astype(np.float64), params.scale)
    new_bias = bias.astype(np.float64) * params.scale + params.shift
    if producer.op == "Gemm":
        producer.attrs["beta"] = 1.0
    bias_base = producer.inputs[2].name if len(producer.inputs) > 2 and producer.inputs[2].name else bn.inputs[2].name
    producer.inputs[1] = gs.Constant(names.tensors.fresh(f"{weight_tensor.name}/folded"), new_weight.astype(weight.dtype))
    folded_bias = gs.Constant(names.tensors.fresh(f"{bias_base}/folded"), new_bias.astype(weight.dtype))
    if len(producer.inputs) > 2:
        producer.inputs[2] = folded_bias
    else:
        producer.inputs.append(folded_bias)
    output = bn.outputs[0]
    bn.inputs.clear()
    bn.outputs.clear()
    producer.outputs.clear()
    producer.outputs.append(output)


def _existing_bias(producer: gs.Node, dtype: np.dtype) -> np.ndarray:
    """The bias as the op adds it (Gemm: beta * C), or 0."""
    if len(producer.inputs) < 3 or not producer.inputs[2].name:
        return np.zeros((), dtype)
    bias = ir.constant_value(producer.inputs[2]).astype(np.float64)
    if producer.op == "Gemm":
        bias = bias * float(producer.attrs.get("beta", 1.0))
    return bias


def _scale_weight(producer: gs.Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if producer.op == "Conv":
        return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    if producer.op == "ConvTranspose":
        group = int(producer.attrs.get("group", 1))
        c_in, c_out_per_group = weight.shape[0], weight.shape[1]
        grouped = weight.reshape((group, c_in // group, c_out_per_group) + weight.shape[2:])
        factors = scale.reshape((group, 1, c_out_per_group) + (1,) * (weight.ndim - 2))
        return (grouped * factors).reshape(weight.shape)
    # Gemm (MatMul was turned into Gemm with transB = 0)
    return weight * (scale[:, None] if producer.attrs.get("transB", 0) else scale[None, :])


def _to_mul_add(graph: gs.Graph, bn: gs.Node, params: BNParams, names: ir.GraphNames) -> str | None:
    x, z = bn.inputs[0], bn.outputs[0]
    rank = _rank(x)
    if rank is None or rank < 2:
        return "follows nothing foldable and its input rank is unknown; kept"
    dtype = ir.constant_value(bn.inputs[1]).dtype
    broadcast = (-1,) + (1,) * (rank - 2)
    scale = gs.Constant(names.tensors.fresh(f"{bn.inputs[1].name}/bn_scale"), params.scale.reshape(broadcast).astype(dtype))
    shift = gs.Constant(names.tensors.fresh(f"{bn.inputs[2].name}/bn_shift"), params.shift.reshape(broadcast).astype(dtype))
    scaled = gs.Variable(names.tensors.fresh(f"{z.name}/scaled"), dtype=x.dtype, shape=x.shape)
    bn.inputs.clear()
    bn.outputs.clear()
    graph.nodes.append(gs.Node("Mul", names.nodes.fresh(f"{bn.name}/scale"), inputs=[x, scale], outputs=[scaled]))
    graph.nodes.append(gs.Node("Add", names.nodes.fresh(f"{bn.name}/shift"), inputs=[scaled, shift], outputs=[z]))
    return None
