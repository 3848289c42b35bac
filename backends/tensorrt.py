"""TensorRT files: model.trt.onnx, calibration.cache, dynamic_range.json; and the parser's rules as a checker.

- ``model.trt.onnx``: explicit quantization, the only form TensorRT 11
  accepts. The Q/DQ graph with weights stored as int8 initializers -> DQ;
  written only when it passes ``check``.
- ``calibration.cache`` (TensorRT <= 10 implicit INT8): a header
  ``TRT-<version>-EntropyCalibration2``, then per activation tensor
  ``name: <hex of big-endian float32 amax/127>``. Weights are not listed.
- ``dynamic_range.json``: ``{tensor: amax}`` for ``ITensor.setDynamicRange``.
Rules (BACKENDS.md section 4): opset >= 13, no QLinear/Integer ops, int8 with
zero point 0 and positive constant scales, activations per-tensor, weights
per-channel on the output-channel axis, Concat inputs on one scale, and no
Q/DQ between a weighted op and the activation it fuses with.
"""
from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass

import numpy as np
import onnx

from qcompiler import ir
from qcompiler.deploy import CheckReport, QdqView, integer_weights, is_integer_op
from qcompiler.emitters import Compiled, Files, checked
from qcompiler.errors import QCompileError, UsageError
from qcompiler.passes.insert_quantizers import weight_axis

log = logging.getLogger(__name__)

# what a weighted op fuses with: a Q/DQ between them breaks the fusion
FUSED_AFTER_WEIGHTED = ("Relu", "Clip", "BatchNormalization", "LeakyRelu", "Sigmoid")
CACHE_QMAX = 127.0


@dataclass(frozen=True)
class Options:
    trt_version: str = "10.13.0"   # the calibration cache's header: the latest TensorRT 10 release


def emit(compiled: Compiled, options: Options) -> Files:
    model = ir.to_model(integer_weights(compiled.graph, compiled.plan))
    ranges = activation_amax(compiled)
    files: Files = {"model.trt.onnx": checked(model, "model.trt.onnx", "tensorrt", check),
                    "dynamic_range.json": json.dumps(ranges, indent=1, sort_keys=True) + "\n"}
    header = cache_header(options.trt_version)
    if header is None:
        log.info("TensorRT %s reads no calibration cache (implicit INT8 is gone); not writing one",
                 options.trt_version)
    else:
        files["calibration.cache"] = calibration_cache(ranges, header)
    return files


def activation_amax(compiled: Compiled) -> dict[str, float]:
    """amax = scale * 127 of every activation quantizer, by the float model's tensor name."""
    ranges = {}
    for point in compiled.plan.activations():
        if np.any(point.zero_point):
            raise QCompileError(f"{point.tensor}: zero point {int(point.zero_point)}; TensorRT takes symmetric "
                                "activations only (quantizers.activation.symmetric: true)")
        ranges[point.tensor] = float(np.float32(point.scale) * np.float32(CACHE_QMAX))
    return ranges


def cache_header(version: str) -> str | None:
    """``TRT-<int>-EntropyCalibration2`` for TensorRT 7..10, None for 11 and later."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)?", version)
    if match is None:
        raise UsageError(f"--trt-version {version!r}: give major.minor[.patch], e.g. 10.13.0 or 8.6.1")
    major, minor, patch = (int(part or 0) for part in match.groups())
    if major < 7:
        raise UsageError(f"--trt-version {version}: calibration caches in this format start at TensorRT 7")
    if major >= 11:
        return None
    number = major * 10000 + minor * 100 + patch if major >= 9 else major * 1000 + minor * 100 + patch
    return f"TRT-{number}-EntropyCalibration2"


def calibration_cache(ranges: dict[str, float], header: str) -> str:
    lines = [header]
    for name in sorted(ranges):
        if ":" in name:
            raise QCompileError(f"tensor {name!r} has a ':', which TensorRT's cache readers split on; rename it "
                                "in the model (e.g. onnx-graphsurgeon: tensor.name = name.replace(':', '_')) "
                                "and compile again")
        lines.append(f"{name}: {struct.pack('>f', np.float32(ranges[name] / CACHE_QMAX)).hex()}")
    return "\n".join(lines) + "\n"


def read_calibration_cache(text: str) -> dict[str, float]:
    """amax by tensor name, read the way onnxruntime's TensorRT provider reads a cache: hex scale * 127."""
    ranges = {}
    for line in text.splitlines()[1:]:
        name, _, value = line.partition(":")
        scale = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
        ranges[name] = float(np.float32(scale) * np.float32(CACHE_QMAX))
    return ranges


def check(model: onnx.ModelProto) -> CheckReport:
    """Every TensorRT explicit-quantization rule ``model`` breaks, and how many weighted ops run in int8."""
    view = QdqView(model)
    violations = []
    if view.opset < 13:
        violations.append(f"opset {view.opset}: TensorRT needs Q/DQ from opset 13 (per-channel axis)")
    for node in view.graph.nodes:
        if is_integer_op(node.op):
            violations.append(f"{node.name}: {node.op} is not parsed by TensorRT; use QuantizeLinear/DequantizeLinear")
    for quantizer in view.quantizers.values():
        violations += _quantizer_violations(view, quantizer)
    for node in view.weighted_nodes():
        _, weight = view.operands(node)
        if weight is not None and weight.per_channel and weight.axis != weight_axis(node):
            violations.append(f"{node.name}: weight quantized on axis {weight.axis}; TensorRT wants the "
                              f"output-channel axis {weight_axis(node)} for {node.op}")
        violations += _output_violations(view, node)
    violations += _concat_violations(view)
    return view.report(violations)


def _quantizer_violations(view: QdqView, q) -> list[str]:
    found = []
    name = q.node.name
    if q.scale is None:
        found.append(f"{name}: the scale is not a constant")
    elif not np.all(q.scale > 0):
        found.append(f"{name}: scales must be positive")
    if q.dtype != np.int8:
        found.append(f"{name}: {q.dtype} quantization; TensorRT takes int8")
    if not q.zero_is_zero:
        found.append(f"{name}: non-zero zero point; TensorRT quantization is symmetric")
    if q.per_channel and not view.is_weight(q):
        found.append(f"{name}: per-channel activation quantization; TensorRT takes per-tensor activations")
    if q.node.op == "QuantizeLinear":
        if any(n.op != "DequantizeLinear" for n in q.node.outputs[0].outputs):
            found.append(f"{name}: a QuantizeLinear read by something other than DequantizeLinear cannot fuse")
    return found


def _output_violations(view: QdqView, node) -> list[str]:
    """A Q on a weighted op's output that then feeds the activation it would fuse with."""
    found = []
    for reader in node.outputs[0].outputs:
        if reader.op != "QuantizeLinear":
            continue
        for dequant in reader.outputs[0].outputs:
            fused = [n.op for n in dequant.outputs[0].outputs if n.op in FUSED_AFTER_WEIGHTED]
            if fused:
                found.append(f"{reader.name}: Q/DQ between {node.name} and its {fused[0]} breaks their fusion; "
                             "quantize after the activation")
    return found


def _concat_violations(view: QdqView) -> list[str]:
    found = []
    for node in view.graph.nodes:
        if node.op != "Concat":
            continue
        inputs = [view.dequantized_input(node, i) for i in range(len(node.inputs))]
        quantized = [q for q in inputs if q is not None]
        if quantized and any(not q.same_factors(quantized[0]) for q in quantized[1:]):
            found.append(f"{node.name}: Concat inputs quantized with different scales; they must share one")
    return found
