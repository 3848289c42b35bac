"""The rules every backend's checker shares, derived from its ``constraints:``.

What the YAML says the hardware accepts per role is checked on the
quantizers of any Q/DQ model: the container type (signedness), a zero point
of 0 where quantization must be symmetric, per-tensor where per-channel is
not allowed (or not on that op), power-of-two scales; and everywhere:
constant positive scales and per-channel weights on the output-channel
axis. A backend's emitter adds the rules of its own file format (TensorRT's
parser, AMCT's pairs, onnxruntime's fusions) on top.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from qcompiler.config.backend import BackendConfig, RoleConstraints
from qcompiler.emit.qdq_view import CheckReport, QdqView, Quantizer
from qcompiler.graph.ops import weight_axis

_SIGNEDNESS = {np.dtype(np.int8): "signed", np.dtype(np.uint8): "unsigned"}
_CONTAINER = {"signed": "int8", "unsigned": "uint8"}


def check_constraints(model: onnx.ModelProto | gs.Graph, backend: BackendConfig) -> CheckReport:
    """The constraint rules alone, for a backend whose emitters bring no checker of their own."""
    view = QdqView(model)
    return view.report(constraint_violations(view, backend))


def constraint_violations(view: QdqView, backend: BackendConfig) -> list[str]:
    """Every way the quantizers of ``view`` break ``backend``'s constraints, one sentence each."""
    found = []
    for q in view.quantizers.values():
        if q.dtype == np.int32:  # an int32 bias -> DQ: its scale is s_x * s_w, checked with its op
            continue
        role = "weights" if view.is_weight(q) else "activations"
        found += _quantizer_violations(view, q, role, getattr(backend.constraints, role), backend.name)
    for node in view.weighted_nodes():
        _, weight = view.operands(node)
        if weight is not None and weight.per_channel and weight.axis != weight_axis(node):
            found.append(f"{node.name}: weight quantized on axis {weight.axis}; {backend.name} wants the "
                         f"output-channel axis {weight_axis(node)} for {node.op}")
    return found


def _quantizer_violations(view: QdqView, q: Quantizer, role: str, rules: RoleConstraints, backend: str) -> list[str]:
    name, rule = q.node.name, f"constraints.{role}"
    if q.scale is None:
        return [f"{name}: the scale is not a constant; {backend} takes constant scales"]
    if not np.all(q.scale > 0):
        return [f"{name}: scales must be positive"]
    found = []
    signedness = _SIGNEDNESS.get(q.dtype)
    if rules.signedness is not None and signedness not in rules.signedness:
        allowed = " or ".join(_CONTAINER[s] for s in rules.signedness)
        found.append(f"{name}: {q.dtype} {role}; {backend} takes {allowed} {role} ({rule}.signedness)")
    if rules.symmetric == [True] and not q.zero_is_zero:
        found.append(f"{name}: non-zero zero point; {backend} {role} must be symmetric ({rule}.symmetric)")
    if q.per_channel:
        found += _per_channel_violations(view, q, role, rules, backend)
    if rules.scale == ["power_of_two"] and not _powers_of_two(q.scale):
        found.append(f"{name}: a scale that is not a power of two; {backend} takes power-of-two scales "
                     f"({rule}.scale)")
    return found


def _per_channel_violations(view: QdqView, q: Quantizer, role: str, rules: RoleConstraints, backend: str) -> list[str]:
    rule = f"constraints.{role}"
    if rules.granularity is not None and "per_channel" not in rules.granularity:
        return [f"{q.node.name}: per-channel {role[:-1]} quantization; {backend} takes per-tensor {role} "
                f"({rule}.granularity)"]
    if rules.per_channel_ops is None or q.node.op != "DequantizeLinear":
        return []
    return [f"{reader.name}: per-channel {reader.op} {role}; {backend} {reader.op} {role} must be per-tensor "
            f"({rule}.per_channel_ops: {', '.join(rules.per_channel_ops)})"
            for reader in q.node.outputs[0].outputs if reader.op not in rules.per_channel_ops]


def _powers_of_two(scale: np.ndarray) -> bool:
    return bool(np.array_equal(scale, np.exp2(np.round(np.log2(scale))).astype(scale.dtype)))
