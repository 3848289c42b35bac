"""TVM files: model.tvm.onnx, a plain Q/DQ model with power-of-two scales, and its checker.

TVM has no parameter file of its own: its ONNX frontend (Relax) turns
QuantizeLinear/DequantizeLinear into quantize/dequantize and rejects
QLinearConv, QGemm and ConvInteger (it does import MatMulInteger). Weights
are int8 initializers -> DQ. Every scale being a power of two is what makes
TVM's requantization a shift.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from qcompiler.config.backend import BackendConfig
from qcompiler.config.loader import load_backend
from qcompiler.emit.emitters import Compiled, Files, checked
from qcompiler.emit.qdq_view import CheckReport, QdqView
from qcompiler.emit.rules import constraint_violations
from qcompiler.graph.ops import is_integer_op
from qcompiler.quant.integer_weights import integer_weights

# the integer ops apache-tvm's Relax ONNX frontend imports (0.27: tvm.relax.frontend.onnx's convert map);
# it has no converter for the others, QLinearConv, QGemm and ConvInteger among them
RELAX_INTEGER_OPS = ("MatMulInteger", "MatMulInteger16", "DynamicQuantizeLinear")


@dataclass(frozen=True)
class Options:
    pass


def emit(compiled: Compiled, options: Options) -> Files:
    graph = integer_weights(compiled.graph, compiled.plan)
    return {"model.tvm.onnx": checked(graph, "model.tvm.onnx", compiled.backend, check)}


def check(model: onnx.ModelProto | gs.Graph, backend: BackendConfig | None = None) -> CheckReport:
    """Ops TVM's ONNX frontend rejects and what breaks ``backend``'s constraints (shipped tvm by default:
    power-of-two scales); how many weighted ops run quantized."""
    backend = backend or load_backend("tvm")
    view = QdqView(model)
    violations = [f"{n.name}: {n.op} is rejected by TVM's ONNX frontend; use QuantizeLinear/DequantizeLinear"
                  for n in view.graph.nodes if is_integer_op(n.op) and n.op not in RELAX_INTEGER_OPS]
    return view.report(violations + constraint_violations(view, backend))
