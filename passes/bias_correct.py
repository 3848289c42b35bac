"""Remove the mean output shift that quantizing a weight causes, through the op's float bias.

Before: y = Conv(DQ(Q(x)), DQ(Q(W)), b)       E[y] - E[y_float] = (W_q - W) E[x]  != 0
After:  y = Conv(DQ(Q(x)), DQ(Q(W)), b - d)   d: the per-output-channel shift, removed
Two ways to know d (``form``):
- analytic (default; NNCF's fast bias correction, DFQ): ``d = (W_q - W) E[x]``
  summed over each output channel's taps, from the per-channel mean of the
  op's float input that calibrate takes in its pass over the data (asked for
  through ``Pass.requests``). Zero padding at the borders is not modelled.
- empirical: one more pass over the calibration data, through the float
  graph where each op also runs a copy of itself on its input and weight as
  quantized (its input's Q/DQ and the data-movement ops after it); d is the
  difference of their per-channel output means, so it includes the shift
  the op's quantized input causes, but not the upstream ops' (which their
  own corrections remove: correcting every op by its whole shift at once
  would remove the upstream shifts many times over).
Biases are written in float, so every backend's integer bias follows. An op
with no bias gets one (Conv, Gemm); a MatMul needs an Add of a constant
vector after it; ConvTranspose is left alone (the taps an output sums vary
with its position). ``--explain bias_correct`` gives the shift per layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.calibration.batching import batch_size, read_ahead
from qcompiler.calibration.observer import Observer, float_view
from qcompiler.errors import UsageError
from qcompiler.graph import ir
from qcompiler.graph.ops import DATA_MOVEMENT_OPS
from qcompiler.pipeline.pass_base import INPUT_MEANS, Pass, PassContext, PassResult
from qcompiler.pipeline.properties import CALIBRATED
from qcompiler.quant.plan import FloatBias, QuantPoint
from qcompiler.quant.qmath import dequantize


@dataclass(frozen=True)
class BiasCorrectOptions:
    form: Literal["analytic", "empirical"] = "analytic"


class BiasCorrect(Pass):
    name = "bias_correct"
    Options = BiasCorrectOptions
    requires = (CALIBRATED,)
    ensures = (CALIBRATED,)

    def requests(self) -> frozenset[str]:
        return frozenset({INPUT_MEANS}) if self.options.form == "analytic" else frozenset()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        by_name = {node.name: node for node in graph.nodes}
        layers = [(by_name[name], point) for point in ctx.plan.weights() for name in point.consumers]
        layers = [(node, point) for node, point in layers if _correctable(graph, node, ctx)]
        shifts = (self._analytic(graph, layers, ctx) if self.options.form == "analytic"
                  else self._empirical(graph, layers, ctx))
        for node, _ in layers:
            shift = shifts[node.name]
            ctx.plan.float_biases[node.name] = _subtract_from_bias(graph, node, shift)
            ctx.explain(node.name, True, f"removed a mean output shift of up to {np.max(np.abs(shift)):.3g} "
                        f"(mean |shift| {np.mean(np.abs(shift)):.3g}) over {shift.size} channels")
        return PassResult(changed=bool(layers), stats={"corrected": len(layers)})

    def _analytic(self, graph: gs.Graph, layers: list[tuple[gs.Node, QuantPoint]],
                  ctx: PassContext) -> dict[str, np.ndarray]:
        shifts = {}
        tensors = graph.tensors()
        for node, point in layers:
            mean = ctx.input_means.get(ctx.plan.float_input(node.inputs[0]))
            if mean is None:
                raise UsageError("bias_correct (analytic) needs the input means that calibrate takes; "
                                 "list calibrate before it")
            weight = ir.constant_value(tensors[point.tensor])
            error = _as_quantized_weight(point, weight) - weight
            shifts[node.name] = _weight_error_shift(node, error.astype(np.float64), mean)
        return shifts

    def _empirical(self, graph: gs.Graph, layers: list[tuple[gs.Node, QuantPoint]],
                   ctx: PassContext) -> dict[str, np.ndarray]:
        data = ctx.calibration_data
        if data is None:
            raise UsageError("bias_correct (empirical) needs calibration data; pass --calib")
        view, compared = _with_quantized_copies(graph, layers, ctx)
        means = {name: _channel_axis(node) for node, _ in layers for name in compared[node.name]}
        observer = Observer(view, ctx.plan, {}, means, shares_cpu=data.decodes, bypass=False)
        size = batch_size(ctx.backend.calibration.batch_size, data)
        for feed in ctx.progress(read_ahead(data.batches(size)), None, "bias_correct"):
            observer.observe(feed)
        found = observer.channel_means()
        return {node.name: found[compared[node.name][1]] - found[compared[node.name][0]] for node, _ in layers}


def _with_quantized_copies(graph: gs.Graph, layers: list[tuple[gs.Node, QuantPoint]],
                           ctx: PassContext) -> tuple[gs.Graph, dict[str, tuple[str, str]]]:
    """The float graph where each layer also runs a copy of itself on its input and weight as quantized,
    and for each layer the names of (its float output, its copy's output)."""
    view = float_view(graph, ctx.plan)
    by_name = {node.name: node for node in view.nodes}
    compared = {}
    quantized_inputs: dict[str, gs.Tensor] = {}   # one copy per input, however many layers read it
    tensors, weights = view.tensors(), graph.tensors()
    for node, weight in layers:
        own = by_name[node.name]
        source = own.inputs[0]
        if source.name not in quantized_inputs:
            quantized_inputs[source.name] = _as_quantized(view, tensors, node.inputs[0], ctx) or source
        source = quantized_inputs[source.name]
        quantized = _as_quantized_weight(weight, ir.constant_value(weights[weight.tensor]))
        inputs = [source, gs.Constant(f"{node.name}/weight_as_quantized", quantized), *own.inputs[2:]]
        copy_out = gs.Variable(f"{node.name}/as_quantized", dtype=np.float32)
        view.nodes.append(gs.Node(own.op, f"{node.name}/as_quantized", dict(own.attrs), inputs, [copy_out]))
        compared[node.name] = (own.outputs[0].name, copy_out.name)
    view.toposort()
    return view, compared


def _as_quantized_weight(point: QuantPoint, values: np.ndarray) -> np.ndarray:
    """The weight as DequantizeLinear gives it back, from the integers the point keeps for the emitters."""
    return dequantize(point.quantized(values), point.scale, point.zero_point, point.axis)


def _as_quantized(view: gs.Graph, tensors: dict[str, gs.Tensor], quantized_input: gs.Tensor,
                  ctx: PassContext) -> gs.Tensor | None:
    """In the float ``view``, the layer input as the quantized graph computes it from float values: the
    quantizer that feeds it, and any data-movement ops (Flatten, Reshape, MaxPool, ...) after it; None if
    no quantizer feeds the layer."""
    chain = []
    tensor = quantized_input
    while (producer := ir.producer(tensor)) is not None and producer.op in DATA_MOVEMENT_OPS:
        chain.append(producer)
        tensor = producer.inputs[0]
    point = ctx.plan.feeding(tensor)
    if point is None:
        return None
    value = _fake_quantized(view, tensors[point.tensor], point)
    for op in reversed(chain):
        moved = gs.Variable(f"{op.outputs[0].name}/bias_correct", dtype=np.float32)
        view.nodes.append(gs.Node(op.op, f"{op.name}/bias_correct", dict(op.attrs), [value, *op.inputs[1:]],
                                  [moved]))
        value = moved
    return value


def _fake_quantized(view: gs.Graph, tensor: gs.Tensor, point: QuantPoint) -> gs.Tensor:
    """DQ(Q(tensor)) with ``point``'s parameters (and its grid's bounds), added to ``view``."""
    scale = gs.Constant(f"{tensor.name}/bias_correct_scale", point.scale)
    zero_point = gs.Constant(f"{tensor.name}/bias_correct_zero_point", point.zero_point)
    quantized = gs.Variable(f"{tensor.name}/bias_correct_q", dtype=point.grid.container)
    restored = gs.Variable(f"{tensor.name}/bias_correct_dq", dtype=np.float32)
    view.nodes += [
        gs.Node("QuantizeLinear", quantized.name, inputs=[tensor, scale, zero_point], outputs=[quantized]),
        gs.Node("DequantizeLinear", restored.name, inputs=[quantized, scale, zero_point], outputs=[restored])]
    if not point.grid.narrower_than_container:
        return restored
    # a grid narrower than its 8-bit container saturates at its own bounds, as the compiled graph's Clip does
    zero = point.zero_point.astype(np.float32)
    bounds = [gs.Constant(f"{tensor.name}/bias_correct_{end}", np.asarray((level - zero) * point.scale, np.float32))
              for end, level in zip(("low", "high"), point.grid.clamp)]
    clipped = gs.Variable(f"{tensor.name}/bias_correct_clipped", dtype=np.float32)
    view.nodes.append(gs.Node("Clip", clipped.name, inputs=[restored, *bounds], outputs=[clipped]))
    return clipped


def _channel_axis(node: gs.Node) -> int:
    return 1 if node.op in ("Conv", "Gemm") else -1


def _correctable(graph: gs.Graph, node: gs.Node, ctx: PassContext) -> bool:
    if node.op == "ConvTranspose":
        ctx.explain(node.name, False, "ConvTranspose: the taps each output sums vary with its position")
        return False
    if node.op == "MatMul" and _following_bias(graph, node) is None:
        ctx.explain(node.name, False, "a MatMul without an Add of a constant vector after it has no bias to correct")
        return False
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        ctx.explain(node.name, False, "Gemm with transA: its input's samples are not on axis 0")
        return False
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name and _vector(node.inputs[2]) is None:
        ctx.explain(node.name, False, "its bias C is not a constant vector")
        return False
    if node.op == "Conv" and len(node.inputs) > 2 and node.inputs[2].name and ir.constant_value(node.inputs[2]) is None:
        ctx.explain(node.name, False, "its bias is not a constant")
        return False
    return True


def _weight_error_shift(node: gs.Node, error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(W_q - W) E[x]`` per output channel of ``node``, for its weight's error ``error``."""
    if node.op == "Conv":
        groups = node.attrs.get("group", 1)
        taps = error.reshape(error.shape[0], error.shape[1], -1).sum(axis=2)         # (out, in / groups)
        per_group = mean.reshape(groups, -1)                                          # (groups, in / groups)
        group_of = np.arange(error.shape[0]) // (error.shape[0] // groups)
        return (taps * per_group[group_of]).sum(axis=1)
    if node.op == "Gemm":
        weight_error = error.T if node.attrs.get("transB", 0) else error              # (in, out)
        return node.attrs.get("alpha", 1.0) * (mean @ weight_error)
    return mean @ error   # MatMul: (in, out)


def _following_bias(graph: gs.Graph, node: gs.Node) -> tuple[gs.Node, int] | None:
    """The Add that alone reads a MatMul's output with a constant vector, and that vector's input index."""
    readers = node.outputs[0].outputs
    if len(readers) != 1 or readers[0].op != "Add" or ir.is_graph_output(graph, node.outputs[0]):
        return None
    add = readers[0]
    for index, tensor in enumerate(add.inputs):
        if tensor is not node.outputs[0] and _vector(tensor) is not None:
            return add, index
    return None


def _vector(tensor: gs.Tensor) -> np.ndarray | None:
    """A constant that broadcasts along the last axis only: shape (n,) or (1, ..., n)."""
    value = ir.constant_value(tensor)
    if value is None or value.ndim == 0 or any(d != 1 for d in value.shape[:-1]):
        return None
    return value


def _subtract_from_bias(graph: gs.Graph, node: gs.Node, shift: np.ndarray) -> FloatBias:
    """``bias - shift`` as a new constant of ``node`` (a bias another node shares stays as it was); returns
    where the bias was, and what."""
    if node.op == "MatMul":
        add, index = _following_bias(graph, node)
        original = add.inputs[index]
        old = _vector(original)
        corrected = (old - shift.reshape(old.shape)).astype(old.dtype)
        add.inputs[index] = gs.Constant(f"{original.name}/corrected", corrected)
        return FloatBias(add.name, index, original)
    beta = node.attrs.get("beta", 1.0) if node.op == "Gemm" else 1.0
    has_bias = len(node.inputs) > 2 and node.inputs[2].name
    old = ir.constant_value(node.inputs[2]).reshape(-1) if has_bias else np.zeros(shift.shape, np.float32)
    name = f"{node.inputs[2].name}/corrected" if has_bias else f"{node.name}/bias/corrected"
    corrected = gs.Constant(name, (old - shift / beta).astype(np.float32))
    original = node.inputs[2] if has_bias else None
    if has_bias:
        node.inputs[2] = corrected
    else:
        while len(node.inputs) < 2:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(corrected)
    return FloatBias(node.name, 2, original)
