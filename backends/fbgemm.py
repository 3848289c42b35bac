"""FBGEMM / onnxruntime x86 files: model.int8.onnx, run by onnxruntime's integer kernels, and torch_qparams.json.

model.int8.onnx is the Q/DQ model rewritten into the u8s8 form onnxruntime
fuses into QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool, ...:
- weights are int8 initializers -> DQ, biases int32 initializers -> DQ with
  scale s_x * s_w (onnxruntime fuses a weighted op only when every input is
  a DQ);
- a fused Relu/Clip (and a grid narrower than its container, < 8 bits)
  becomes one integer Clip between Q and DQ. Q is monotone, so
  Q(clip(x, a, b)) = clip(Q(x), Q(a), Q(b)): the same values as the float
  Clips they replace, and the weighted op's output now goes straight into Q;
- a DQ moves below the data-movement ops it feeds (Flatten, Reshape, ...),
  which then move uint8 values, so the next weighted op reads a DQ directly;
- a Conv whose input channels are not a multiple of 4 (an RGB stem) reads
  them padded with zero-weight channels, so that onnxruntime runs it in its
  fast u8s8 convolution instead of im2col + GEMM.

torch_qparams.json gives the same quantizers by module-like name (the
weight's name without ``.weight``, or the node's scope) in torch.ao's terms,
for users who set them on a PyTorch model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompiler.config.backend import BackendConfig
from qcompiler.config.loader import load_backend
from qcompiler.emit.emitters import Compiled, Files, checked
from qcompiler.emit.qdq_view import CheckReport, QdqView
from qcompiler.emit.rules import constraint_violations
from qcompiler.graph import ir
from qcompiler.graph.ops import CLAMP_OPS, DATA_MOVEMENT_OPS, WEIGHTED_OPS, weight_axis
from qcompiler.quant import regions
from qcompiler.quant.integer_weights import integer_weights
from qcompiler.quant.plan import QuantPlan, QuantPoint
from qcompiler.quant.regions import clamp_bounds, clamped_grid
from qcompiler.quant.rounding import INT32_MAX, INT32_MIN, saturated_int32

FLOAT_OUTPUT_OPS = ("Gemm", "MatMul")  # QGemm / MatMulIntegerToFloat return float
INTEGER_KERNEL_OPS = ("Conv", "Gemm", "MatMul")  # onnxruntime's CPU provider has no integer ConvTranspose
# MLAS's symmetric u8s8 convolution (onnxruntime x86) takes a group-1 Conv whose input channels
# are a multiple of 4 and whose output channels are a multiple of 8, at least 16 (convsym.cpp)
FAST_CONV_INPUT_MULTIPLE = 4
FAST_CONV_OUTPUT_MULTIPLE = 8
FAST_CONV_MIN_OUTPUTS = 16


@dataclass(frozen=True)
class Options:
    pass


def emit(compiled: Compiled, options: Options) -> Files:
    return {
        "model.int8.onnx": checked(int8_graph(compiled.graph, compiled.plan), "model.int8.onnx", compiled.backend,
                                   check),
        "torch_qparams.json": json.dumps(torch_qparams(compiled), indent=1) + "\n",
    }


def int8_graph(graph: gs.Graph, plan: QuantPlan, bias_in_int32: bool = True) -> gs.Graph:
    """A copy of the calibrated Q/DQ ``graph`` in the form onnxruntime fuses into integer kernels.

    Without ``bias_in_int32`` it computes exactly what ``graph`` computes (the
    biases' int32 rounding is the only change in values).
    """
    graph = integer_weights(graph, plan)
    names = ir.GraphNames(graph)
    clip_in_integers(graph, plan, names)
    sink_dequantize(graph, names)
    if bias_in_int32:
        integer_biases(graph, names)
    pad_input_channels(graph, names)
    return graph.cleanup(remove_unused_graph_inputs=False).toposort()


# --- model.int8.onnx ------------------------------------------------------

def clip_in_integers(graph: gs.Graph, plan: QuantPlan, names: ir.GraphNames) -> None:
    """Each activation's grid and fused Relu/Clip as one integer Clip between its Q and DQ."""
    nodes = {node.name: node for node in graph.nodes}
    for point in plan.activations():
        quant, dequant = nodes[point.nodes[0]], nodes[point.nodes[1]]
        fused = _fused_activation(graph, quant)
        output = clamped_grid(point, clamp_bounds(fused) if fused is not None else (None, None))
        if fused is not None:
            quant.inputs[0] = fused.inputs[0]
        float_clip = nodes[point.nodes[2]] if len(point.nodes) > 2 else None
        if float_clip is not None:
            ir.replace_uses(float_clip.outputs[0], dequant.outputs[0])
        info = np.iinfo(point.grid.container)
        if (output.low, output.high) != (info.min, info.max):
            _insert_integer_clip(graph, quant, output.low, output.high, names)


def _fused_activation(graph: gs.Graph, quant: gs.Node) -> gs.Node | None:
    """The Relu/Clip whose output only ``quant`` reads, with constant bounds: it folds into the integer Clip."""
    producer = ir.producer(quant.inputs[0])
    if producer is None or producer.op not in CLAMP_OPS:
        return None
    if len(producer.outputs[0].outputs) != 1 or ir.is_graph_output(graph, producer.outputs[0]):
        return None
    return producer if clamp_bounds(producer) is not None else None


def _insert_integer_clip(graph: gs.Graph, quant: gs.Node, low: int, high: int, names: ir.GraphNames) -> None:
    """Q -> Clip(low, high) in the integers -> the Q's readers."""
    quantized = quant.outputs[0]
    base = quantized.name
    clipped = gs.Variable(names.tensors.fresh(f"{base}/clipped"), dtype=quantized.dtype, shape=quantized.shape)
    ir.replace_uses(quantized, clipped)
    bounds = [gs.Constant(names.tensors.fresh(f"{base}/{label}"), np.asarray(value, quantized.dtype))
              for label, value in (("low", low), ("high", high))]
    graph.nodes.append(gs.Node("Clip", names.nodes.fresh(f"{base}/clip"), {}, [quantized, *bounds], [clipped]))


def sink_dequantize(graph: gs.Graph, names: ir.GraphNames) -> None:
    """DQ -> data-movement op becomes op -> DQ: the op moves integers and its reader sees a DQ."""
    for node in list(graph.nodes):  # topological order: a chain of such ops sinks the DQ to its end
        if node.op in DATA_MOVEMENT_OPS:
            regions.sink_dequantize(graph, node, names)


def pad_input_channels(graph: gs.Graph, names: ir.GraphNames) -> None:
    """Each Conv that misses onnxruntime's fast u8s8 kernel only by its input channels reads them padded.

    MobileNetV2's RGB stem takes 435 us in im2col + GEMM and 220 us padded to
    4 channels (plus 16 us for the Pad). The extra channels hold the input's
    zero point and meet weights of 0: every accumulator, so every output, is
    unchanged.
    """
    for node in list(graph.nodes):
        missing = _missing_input_channels(node)
        if not missing:
            continue
        dequant, weight_dequant = ir.producer(node.inputs[0]), ir.producer(node.inputs[1])
        weight = weight_dequant.inputs[0]
        node.inputs[0] = _padded_dequantized(graph, dequant, missing, weight.values.ndim, names)
        extra = np.zeros((weight.values.shape[0], missing, *weight.values.shape[2:]), weight.values.dtype)
        padded = np.concatenate([weight.values, extra], axis=1)
        weight_dequant.inputs[0] = gs.Constant(names.tensors.fresh(f"{weight.name}/padded"), padded)
        weight_dequant.outputs[0].shape = list(padded.shape)


def _missing_input_channels(node: gs.Node) -> int:
    """How many zero channels would bring a quantized group-1 Conv into the fast kernel; 0 if none would."""
    if node.op != "Conv" or int(node.attrs.get("group", 1)) != 1:
        return 0
    if not any(reader.op == "QuantizeLinear" for reader in node.outputs[0].outputs):
        return 0  # a float output: onnxruntime runs the Conv in float
    dequant, weight_dequant = (ir.producer(t) for t in node.inputs[:2])
    if any(p is None or p.op != "DequantizeLinear" for p in (dequant, weight_dequant)) or _per_channel(dequant):
        return 0
    weight = weight_dequant.inputs[0]
    if not isinstance(weight, gs.Constant) or len(weight_dequant.outputs[0].outputs) != 1 or len(weight.outputs) != 1:
        return 0
    outputs, inputs = weight.values.shape[:2]
    if outputs % FAST_CONV_OUTPUT_MULTIPLE or outputs < FAST_CONV_MIN_OUTPUTS:
        return 0
    return -inputs % FAST_CONV_INPUT_MULTIPLE


def _padded_dequantized(graph: gs.Graph, dequant: gs.Node, missing: int, rank: int,
                        names: ir.GraphNames) -> gs.Variable:
    """``dequant``'s rank-``rank`` input padded with ``missing`` channels of its zero point, dequantized as before."""
    quantized, scale, *zero_point = dequant.inputs
    base = quantized.name
    shape = list(quantized.shape) if quantized.shape else None
    if shape and isinstance(shape[1], int):
        shape[1] += missing
    pads = np.zeros(2 * rank, np.int64)
    pads[rank + 1] = missing  # after the last channel
    fill = ir.constant_value(zero_point[0]) if zero_point else np.zeros((), quantized.dtype)
    padded = gs.Variable(names.tensors.fresh(f"{base}/padded"), dtype=quantized.dtype, shape=shape)
    graph.nodes.append(gs.Node("Pad", names.nodes.fresh(f"{base}/pad_channels"), {"mode": "constant"}, [
        quantized, gs.Constant(names.tensors.fresh(f"{base}/pads"), pads),
        gs.Constant(names.tensors.fresh(f"{base}/pad_value"), np.asarray(fill).reshape(()))], [padded]))
    dequantized = gs.Variable(names.tensors.fresh(f"{base}/padded/dequantized"), dtype=np.float32, shape=shape)
    graph.nodes.append(gs.Node("DequantizeLinear", names.nodes.fresh(f"{base}/padded/dequant"), dict(dequant.attrs),
                               [padded, scale, *zero_point], [dequantized]))
    return dequantized


def _per_channel(dequant: gs.Node) -> bool:
    scale = ir.constant_value(dequant.inputs[1])
    return scale is None or scale.size > 1


def integer_biases(graph: gs.Graph, names: ir.GraphNames) -> None:
    """Each float bias of a quantized weighted op as int32 -> DQ with scale s_x * s_w, as onnxruntime fuses it."""
    for node in list(graph.nodes):
        scale = _bias_scale(node)
        if scale is None:
            continue
        bias = node.inputs[2]
        values, _ = saturated_int32(ir.constant_value(bias).astype(np.float64) / scale.astype(np.float64))
        integers = gs.Constant(names.tensors.fresh(f"{bias.name}/int32"), values)
        bias_scale = gs.Constant(names.tensors.fresh(f"{bias.name}/scale"), scale)
        zero_point = gs.Constant(names.tensors.fresh(f"{bias.name}/zero_point"), np.zeros(scale.shape, np.int32))
        dequantized = gs.Variable(names.tensors.fresh(f"{bias.name}/dequantized"), dtype=np.float32, shape=bias.shape)
        attrs = {"axis": 0} if scale.size > 1 else {}
        graph.nodes.append(gs.Node("DequantizeLinear", names.nodes.fresh(f"{bias.name}/dequant"), attrs,
                                   [integers, bias_scale, zero_point], [dequantized]))
        node.inputs[2] = dequantized


def _bias_scale(node: gs.Node) -> np.ndarray | None:
    """The int32 scale of ``node``'s float constant bias (s_x * s_w, times Gemm's beta); None if it has none.

    Only when both other inputs are DQs, as onnxruntime fuses it. A grouped
    ConvTranspose's weight scales repeat once per group.
    """
    if node.op not in WEIGHTED_OPS or len(node.inputs) < 3 or not node.inputs[2].name:
        return None
    bias = ir.constant_value(node.inputs[2])
    data, weight = (ir.producer(t) for t in node.inputs[:2])
    if bias is None or bias.dtype != np.float32 or bias.ndim != 1:
        return None
    if any(p is None or p.op != "DequantizeLinear" for p in (data, weight)) or _per_channel(data):
        return None
    x_scale, w_scale = ir.constant_value(data.inputs[1]), ir.constant_value(weight.inputs[1])
    if w_scale is None:
        return None
    if node.op == "ConvTranspose" and w_scale.size > 1:
        w_scale = np.tile(w_scale, int(node.attrs.get("group", 1)))
    if w_scale.size not in (1, bias.size):
        return None
    scale = x_scale.astype(np.float32) * w_scale.astype(np.float32)
    if node.op == "Gemm":
        scale = scale * np.float32(node.attrs.get("beta", 1.0))
    return np.asarray(scale, np.float32)


# --- checker ----------------------------------------------------------------

def check(model: onnx.ModelProto | gs.Graph, backend: BackendConfig | None = None) -> CheckReport:
    """What keeps onnxruntime's x86 int8 kernels (u8s8, as FBGEMM) from running ``model``'s weighted ops:
    what breaks ``backend``'s constraints (shipped fbgemm by default) and what blocks the fusions.

    A weighted op left float on purpose (no DQ on its inputs, or a Conv whose
    output is not quantized) is not a violation; it is simply not counted.
    """
    backend = backend or load_backend("fbgemm")
    view = QdqView(model)
    violations = []
    if view.opset < 13:
        violations.append(f"opset {view.opset}: per-channel Q/DQ needs opset 13")
    violations += constraint_violations(view, backend)
    weighted = view.weighted_nodes()
    fused = 0
    notes = []
    for node in weighted:
        found = _fusion_violations(view, node)
        violations += found
        fused += not found and _runs_in_int8(view, node)
        notes += _saturated_bias(view, node)
    return CheckReport(violations, fused, len(weighted), notes)


def _saturated_bias(view: QdqView, node: gs.Node) -> list[str]:
    """A note for an int32 bias with values at int32's limits: a bias that did not fit, saturated."""
    dequant = view.dequantized_input(node, 2) if len(node.inputs) > 2 and node.inputs[2].name else None
    bias = ir.constant_value(dequant.node.inputs[0]) if dequant is not None else None
    if bias is None or bias.dtype != np.int32:
        return []
    count = int(np.count_nonzero((bias == INT32_MIN) | (bias == INT32_MAX)))
    if not count:
        return []
    return [f"{node.name}: {count} of its {bias.size} int32 biases saturate (the bias does not fit at s_x * s_w); "
            "the layer loses the excess"]


def _fusion_violations(view: QdqView, node: gs.Node) -> list[str]:
    """Q/DQ around ``node`` that onnxruntime cannot fuse into one integer kernel."""
    data, weight = view.operands(node)
    if data is None or weight is None:
        return []
    found = []
    for index, label in ((0, "input"), (1, "weight")):
        producer = ir.producer(node.inputs[index])
        if producer is None or producer.op != "DequantizeLinear":
            found.append(f"{node.name}: its {label} passes through {producer.op if producer else 'nothing'} after "
                         "its DequantizeLinear; onnxruntime fuses only a DequantizeLinear read directly")
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = view.dequantized_input(node, 2)
        if bias is None or bias.dtype != np.int32:
            found.append(f"{node.name}: a float bias; onnxruntime fuses only an int32 bias -> DequantizeLinear "
                         "with scale s_x * s_w")
    readers = node.outputs[0].outputs
    if len(readers) == 1 and readers[0].op in CLAMP_OPS \
            and any(r.op == "QuantizeLinear" for r in readers[0].outputs[0].outputs):
        found.append(f"{node.name}: {readers[0].op} {readers[0].name} sits between it and its QuantizeLinear; "
                     "fold it into an integer Clip after the QuantizeLinear")
    return found


def _runs_in_int8(view: QdqView, node: gs.Node) -> bool:
    """Both operands quantized (per-channel weights on the output channels), and the output quantized
    (Gemm and MatMul may also output float)."""
    data, weight = view.operands(node)
    if node.op not in INTEGER_KERNEL_OPS or data is None or weight is None:
        return False
    if weight.per_channel and weight.axis != weight_axis(node):
        return False
    readers = node.outputs[0].outputs
    quantized_output = bool(readers) and all(r.op == "QuantizeLinear" for r in readers)
    return quantized_output or node.op in FLOAT_OUTPUT_OPS


# --- torch_qparams.json -------------------------------------------------------

def torch_qparams(compiled: Compiled) -> dict[str, Any]:
    """Activation and weight qparams in torch.ao's terms, by module-like name."""
    plan, graph = compiled.plan, compiled.graph
    activations = {p.tensor: p for p in plan.activations()}
    weights = {p.tensor: p for p in plan.weights()}
    modules: dict[str, Any] = {}
    for name in (t.name for t in graph.inputs if t.name in activations):
        modules[name] = {"op": "input", "output": _activation(activations[name], name)}
    fused = {_unit_output(graph, node).name for node in graph.nodes if node.op in WEIGHTED_OPS}
    for node in graph.nodes:
        if node.op in CLAMP_OPS and node.outputs[0].name in fused:
            continue  # reported as its weighted op's output
        entry = _module_entry(node, activations, weights, graph)
        if entry is not None:
            modules[_unique(_module_name(node, weights), modules)] = entry
    return {"format": "qcompiler torch qparams 1", "backend": compiled.backend.name, "modules": modules}


def _module_entry(node: gs.Node, activations: dict[str, QuantPoint], weights: dict[str, QuantPoint],
                  graph: gs.Graph) -> dict[str, Any] | None:
    """A weighted node's input, weight and output qparams, or another node's quantized output; else None."""
    weight = weights.get(_weight_source(node))
    output = activations.get(_unit_output(graph, node).name)
    if weight is None and output is None:
        return None
    entry: dict[str, Any] = {"op": node.op, "node": node.name}
    inputs = [p for p in activations.values() if node.name in p.consumers]
    if weight is not None:
        entry["input"] = _activation(inputs[0], inputs[0].tensor) if inputs else None
        entry["weight"] = _weight(weight)
    else:
        entry["inputs"] = [_activation(p, p.tensor) for p in sorted(inputs, key=lambda p: p.tensor)]
    entry["output"] = _activation(output, output.tensor) if output is not None else None
    return entry


def _weight_source(node: gs.Node) -> str | None:
    """The float initializer behind a weighted node's quantized weight (weight -> Q -> DQ -> node)."""
    if node.op not in WEIGHTED_OPS or len(node.inputs) < 2:
        return None
    dequant = ir.producer(node.inputs[1])
    quant = ir.producer(dequant.inputs[0]) if dequant is not None and dequant.op == "DequantizeLinear" else None
    return quant.inputs[0].name if quant is not None and quant.op == "QuantizeLinear" else None


def _unit_output(graph: gs.Graph, node: gs.Node) -> gs.Tensor:
    """``node``'s output, or that of the Relu/Clip fused with it (as torch fuses Conv+ReLU)."""
    output = node.outputs[0]
    readers = output.outputs
    if node.op in WEIGHTED_OPS and len(readers) == 1 and readers[0].op in CLAMP_OPS \
            and not ir.is_graph_output(graph, output):
        return readers[0].outputs[0]
    return output


def _module_name(node: gs.Node, weights: dict[str, QuantPoint]) -> str:
    """``features.0.0`` for the weight ``features.0.0.weight``; else the node's scope and op: ``features.3.add``."""
    source = _weight_source(node)
    if source is not None and source in weights:
        base = source.removesuffix("/folded")
        if base.endswith(".weight"):
            return base.removesuffix(".weight")
    *scopes, op = [part for part in node.name.split("/") if part] or [node.op]
    path = _module_path(scopes)
    return f"{path}.{op.lower()}" if path else op.lower()


def _module_path(scopes: list[str]) -> str:
    """torch.onnx's node scopes as one module path: /features/features.1/conv/conv.0 -> features.1.conv.0.

    Each scope repeats its parent's attribute name (features -> features.1), so
    a scope that extends the previous one replaces it instead of adding to it.
    """
    path, last = "", ""
    for scope in scopes:
        if last and scope.startswith(last + "."):
            path = path[: len(path) - len(last)] + scope
        else:
            path = f"{path}.{scope}" if path else scope
        last = scope
    return path


def _unique(name: str, taken: dict[str, Any]) -> str:
    candidate, index = name, 0
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    return candidate


def _activation(point: QuantPoint, tensor: str) -> dict[str, Any]:
    return {
        "tensor": tensor, "dtype": "qint8" if point.grid.signed else "quint8",
        "qscheme": "per_tensor_symmetric" if point.spec.symmetric else "per_tensor_affine",
        "scale": float(point.scale), "zero_point": int(point.zero_point),
        "quant_min": point.grid.qmin, "quant_max": point.grid.qmax, "reduce_range": point.spec.reduce_range,
    }


def _weight(point: QuantPoint) -> dict[str, Any]:
    per_channel = point.axis is not None
    kind = "per_channel" if per_channel else "per_tensor"
    entry = {
        "tensor": point.tensor, "dtype": "qint8" if point.grid.signed else "quint8",
        "qscheme": f"{kind}_{'symmetric' if point.spec.symmetric else 'affine'}",
        "quant_min": point.grid.qmin, "quant_max": point.grid.qmax,
    }
    if per_channel:
        entry.update({"ch_axis": point.axis, "scales": [float(v) for v in point.scale],
                      "zero_points": [int(v) for v in point.zero_point]})
    else:
        entry.update({"scale": float(point.scale), "zero_point": int(point.zero_point)})
    return entry
