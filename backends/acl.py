"""Huawei Ascend files: model.acl.onnx for AMCT's convert_qat_model, and scale_offset_record.txt.

- ``model.acl.onnx``: the Q/DQ model (weights FP32 -> Q -> DQ, as a QAT
  export has them), written only when AMCT's constraints pass ``check``.
- ``scale_offset_record.txt``: protobuf text keyed by weighted NODE name:
  scale_d / offset_d of its activation input (exactly the ONNX int8 zero
  point), scale_w / offset_w per weight channel (offset_w all 0).
AMCT's constraints (BACKENDS.md section 4): those of ``constraints:`` in
acl.yaml (Conv/ConvTranspose weights per channel or per tensor, Gemm and
MatMul weights per tensor, activations int8 per tensor, weights symmetric;
see emit/rules.py), and each Q/DQ pair carries identical factors.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from qcompiler.config.backend import BackendConfig
from qcompiler.config.loader import load_backend
from qcompiler.emit.emitters import Compiled, Files, checked
from qcompiler.emit.qdq_view import CheckReport, QdqView
from qcompiler.emit.rules import constraint_violations


@dataclass(frozen=True)
class Options:
    pass


def emit(compiled: Compiled, options: Options) -> Files:
    return {"model.acl.onnx": checked(compiled.graph, "model.acl.onnx", compiled.backend, check),
            "scale_offset_record.txt": scale_offset_record(compiled.graph)}


def scale_offset_record(model: onnx.ModelProto | gs.Graph) -> str:
    """The record of every weighted node whose input and weight are both quantized, in graph order."""
    view = QdqView(model)
    blocks = []
    for node in view.weighted_nodes():
        data, weight = view.operands(node)
        if data is None or weight is None:
            continue
        scale_w = np.atleast_1d(weight.scale).astype(np.float32)
        lines = [f"    scale_d: {_float(data.scale)}", f"    offset_d: {int(data.zero_point)}",
                 *(f"    scale_w: {_float(s)}" for s in scale_w), *("    offset_w: 0" for _ in scale_w)]
        blocks.append("record {\n" f"  key: \"{node.name}\"\n" "  value {\n" + "\n".join(lines) + "\n  }\n}\n")
    return "".join(blocks)


def parse_record(text: str):
    """Parse a record file against the ScaleOffsetRecord schema; raises text_format.ParseError if it does not fit."""
    return text_format.Parse(text, _record_class()())


def check(model: onnx.ModelProto | gs.Graph, backend: BackendConfig | None = None) -> CheckReport:
    """Every constraint of ``backend`` (shipped acl by default) and of AMCT convert_qat_model ``model``
    breaks, and how many weighted ops run in int8."""
    backend = backend or load_backend("acl")
    view = QdqView(model)
    violations = constraint_violations(view, backend)
    for q in view.quantizers.values():
        if q.node.op == "QuantizeLinear":
            for reader in q.node.outputs[0].outputs:
                if reader.op == "DequantizeLinear" and not q.same_factors(view.of(reader)):
                    violations.append(f"{q.node.name}: its DequantizeLinear {reader.name} has other factors; "
                                      "a pair must match")
    return view.report(violations)


def _float(value) -> str:
    """float32 in the shortest text that reads back to the same float32."""
    return np.format_float_positional(np.float32(value), unique=True, trim="0")


@cache
def _record_class():
    """ScaleOffsetRecord (BACKENDS.md section 4), built as a protobuf message class at run time."""
    proto = descriptor_pb2.FileDescriptorProto(name="qcompiler_amct_record.proto", package="qcompiler_amct",
                                               syntax="proto2")
    F = descriptor_pb2.FieldDescriptorProto
    layer = proto.message_type.add(name="SingleLayerRecord")
    for number, (name, kind, label) in enumerate([
        ("scale_d", F.TYPE_FLOAT, F.LABEL_OPTIONAL), ("offset_d", F.TYPE_INT32, F.LABEL_OPTIONAL),
        ("scale_w", F.TYPE_FLOAT, F.LABEL_REPEATED), ("offset_w", F.TYPE_INT32, F.LABEL_REPEATED),
        ("shift_bit", F.TYPE_UINT32, F.LABEL_REPEATED), ("skip_fusion", F.TYPE_BOOL, F.LABEL_OPTIONAL),
    ], start=1):
        layer.field.add(name=name, number=number, type=kind, label=label)
    record = proto.message_type.add(name="ScaleOffsetRecord")
    entry = record.nested_type.add(name="RecordEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".qcompiler_amct.SingleLayerRecord")
    record.field.add(name="record", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                     type_name=".qcompiler_amct.ScaleOffsetRecord.RecordEntry")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("qcompiler_amct.ScaleOffsetRecord"))
