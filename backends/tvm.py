"""TVM files: model.tvm.onnx, a plain Q/DQ model with power-of-two scales, and its checker.

TVM has no parameter file of its own: its ONNX frontend (Relax) turns
QuantizeLinear/DequantizeLinear into quantize/dequantize and rejects
QLinearConv, QGemm and ConvInteger (it does import MatMulInteger). Weights
are int8 initializers -> DQ. Every scale being a power of two is what makes
TVM's requantization a shift.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from qcompiler import ir
from qcompiler.deploy import CheckReport, QdqView, integer_weights, is_integer_op
from qcompiler.emitters import Compiled, Files, checked

# the integer ops apache-tvm's Relax ONNX frontend imports (0.27: tvm.relax.frontend.onnx's convert map);
# it has no converter for the others, QLinearConv, QGemm and ConvInteger among them
RELAX_INTEGER_OPS = ("MatMulInteger", "MatMulInteger16", "DynamicQuantizeLinear")


@dataclass(frozen=True)
class Options:
    pass


def emit(compiled: Compiled, options: Options) -> Files:
    model = ir.to_model(integer_weights(compiled.graph, compiled.plan))
    return {"model.tvm.onnx": checked(model, "model.tvm.onnx", "tvm", check)}


def check(model: onnx.ModelProto) -> CheckReport:
    """Non-power-of-two scales and ops TVM's ONNX frontend rejects; how many weighted ops run quantized."""
    view = QdqView(model)
    violations = [f"{n.name}: {n.op} is rejected by TVM's ONNX frontend; use QuantizeLinear/DequantizeLinear"
                  for n in view.graph.nodes if is_integer_op(n.op) and n.op not in RELAX_INTEGER_OPS]
    for q in view.quantizers.values():
        if not q.positive_constant_scales:
            violations.append(f"{q.node.name}: scales must be positive constants")
        elif not np.array_equal(q.scale, np.exp2(np.round(np.log2(q.scale))).astype(q.scale.dtype)):
            violations.append(f"{q.node.name}: a scale that is not a power of two; TVM requantizes by shifts")
    return view.report(violations)
