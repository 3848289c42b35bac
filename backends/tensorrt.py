"""TensorRT files: model.trt.onnx, calibration.cache, dynamic_range.json; and the parser's rules as a checker.

- ``model.trt.onnx``: explicit quantization, the only form TensorRT 11
  accepts. The Q/DQ graph with weights stored as int8 initializers -> DQ;
  written only when it passes ``check``.
- ``calibration.cache`` (TensorRT <= 10 implicit INT8): a header
  ``TRT-<version>-EntropyCalibration2``, then per activation tensor
  ``name: <hex of big-endian float32 amax/127>``. Weights are not listed.
- ``dynamic_range.json``: ``{tensor: amax}`` for ``ITensor.setDynamicRange``.
Rules (BACKENDS.md section 4): the quantizer formats of ``constraints:`` in
tensorrt.yaml (int8, zero point 0, activations per tensor; see emit/rules.py),
and the parser's own: opset >= 13, no QLinear/Integer ops, a Q read only by
DQs, Concat inputs on one scale, and no Q/DQ between a weighted op and what
it fuses with (``placement.fused_activations``).
"""
from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompiler.config.backend import BackendConfig
from qcompiler.config.loader import load_backend
from qcompiler.emit.emitters import Compiled, Files, checked
from qcompiler.emit.qdq_view import CheckReport, QdqView
from qcompiler.emit.rules import constraint_violations
from qcompiler.errors import QCompileError, UsageError
from qcompiler.graph.ops import is_integer_op
from qcompiler.quant.integer_weights import integer_weights

log = logging.getLogger(__name__)

CACHE_QMAX = 127.0


@dataclass(frozen=True)
class Options:
    trt_version: str = "10.13.0"   # the calibration cache's header: the latest TensorRT 10 release

    def __post_init__(self) -> None:
        cache_header(self.trt_version)  # a version it cannot read fails when the options are bound, before any work


def emit(compiled: Compiled, options: Options) -> Files:
    graph = integer_weights(compiled.graph, compiled.plan)
    ranges = activation_amax(compiled)
    files: Files = {"model.trt.onnx": checked(graph, "model.trt.onnx", compiled.backend, check),
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


def check(model: onnx.ModelProto | gs.Graph, backend: BackendConfig | None = None) -> CheckReport:
    """Every rule of ``backend`` (shipped tensorrt by default) ``model`` breaks; how many weighted ops run in int8."""
    backend = backend or load_backend("tensorrt")
    view = QdqView(model)
    violations = []
    if view.opset < 13:
        violations.append(f"opset {view.opset}: TensorRT needs Q/DQ from opset 13 (per-channel axis)")
    for node in view.graph.nodes:
        if is_integer_op(node.op):
            violations.append(f"{node.name}: {node.op} is not parsed by TensorRT; use QuantizeLinear/DequantizeLinear")
    violations += constraint_violations(view, backend)
    for q in view.quantizers.values():
        if q.node.op == "QuantizeLinear" and any(n.op != "DequantizeLinear" for n in q.node.outputs[0].outputs):
            violations.append(f"{q.node.name}: a QuantizeLinear read by something other than DequantizeLinear "
                              "cannot fuse")
    for node in view.weighted_nodes():
        violations += _output_violations(node, backend.placement.fused_activations)
    violations += _concat_violations(view)
    return view.report(violations)


def _output_violations(node, fused_activations: list[str]) -> list[str]:
    """A Q on a weighted op's output that then feeds the activation it would fuse with."""
    found = []
    for reader in node.outputs[0].outputs:
        if reader.op != "QuantizeLinear":
            continue
        for dequant in reader.outputs[0].outputs:
            fused = [n.op for n in dequant.outputs[0].outputs if n.op in fused_activations]
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
