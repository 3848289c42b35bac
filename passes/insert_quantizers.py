"""Place QuantizeLinear/DequantizeLinear pairs where the backend quantizes.

Before: y = Conv(x, W, B)
After:  y = Conv(DQ(Q(x, s_x, z_x)), DQ(Q(W, s_w, z_w)), B)   (scales are placeholders until calibrate)
Plan, then apply. The plan works per tensor from the backend's op roles and
graph scheme (BACKENDS.md section 2):
- a unit is a weighted / eltwise / same_scale / wrapped op together with the
  chain of ``placement.fused_activations`` (Relu, Clip) that alone consume
  its output: never a quantizer inside;
- consumers demand quantized inputs: weighted ops their activation input
  (all schemes); eltwise ops (Add) the inputs ``placement.eltwise_inputs``
  names: all of them (scheme 3), all but the one straight from a weighted
  op, which fuses into it (``unfused``, scheme 2), or none (scheme 1);
  Concat every input; wrapped ops (pooling) their input;
- producers write quantized outputs: every unit when ``placement.unit_outputs``
  (scheme 3), Concat and wrapped ops always; then every consumer reads the
  quantized value;
- pass-through ops (MaxPool, Reshape, ...) get no quantizer: a demand on
  their output moves to their input, whose quantizer they pass through;
- a graph output stays float (the backend hands float back);
- Concat inputs and output form one scale group (shared by share_scales).
Layer overrides (``layers:`` in the backend) match nodes by name regex, op
type or position (first/last weighted) and skip them or change bits, specs
or the estimator of the activations they quantize (the node's inputs, and
its output where it writes one; the first override to name one wins).
Only float32 tensors are quantized; ``--explain insert_quantizers`` says why
each op was or was not.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.config.backend import BackendConfig, EstimatorConfig, LayerOverride, QuantizerSpec
from qcompiler.config.validate import per_channel_problem
from qcompiler.errors import QCompileError, UsageError
from qcompiler.graph import ir
from qcompiler.graph.ops import weight_axis
from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult
from qcompiler.pipeline.properties import QUANTIZERS_PLACED
from qcompiler.quant.plan import QuantPlan, QuantPoint
from qcompiler.quant.qmath import grid

UNIT_ROLES = ("weighted", "eltwise", "same_scale", "wrapped")


class InsertQuantizers(Pass):
    name = "insert_quantizers"
    ensures = (QUANTIZERS_PLACED,)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        if ctx.plan:
            raise QCompileError("quantizers are already placed; list insert_quantizers once")
        points = _Planner(graph, ctx).plan()
        if not points:
            raise QCompileError(_nothing_to_quantize(graph, ctx.backend))
        names = ir.GraphNames(graph)
        tensors = graph.tensors()   # every point quantizes a tensor that is already there
        for point in points:
            _apply(graph, tensors[point.tensor], point, names)
        ctx.plan = QuantPlan({p.tensor: p for p in points})
        shared = sum(1 for members in ctx.plan.groups().values() if len(members) > 1)
        stats = {"activation_points": len(ctx.plan.activations()), "weight_points": len(ctx.plan.weights()),
                 "shared_scale_groups": shared}
        return PassResult(changed=bool(points), stats=stats)


@dataclass
class _Request:
    """Somebody needs ``tensor`` quantized: a consumer (demand) or its producer (write)."""

    reason: str
    spec_name: str
    spec: QuantizerSpec
    consumers: list[str] = field(default_factory=list)
    estimator: EstimatorConfig | None = None   # a layer override's; None: the backend's default


class _Planner:
    def __init__(self, graph: gs.Graph, ctx: PassContext):
        self.graph, self.ctx = graph, ctx
        self.backend: BackendConfig = ctx.backend
        self.tensors = graph.tensors()
        self.nodes = list(graph.nodes)
        self.roles = {node.name: self._role(node) for node in self.nodes}
        self.unit_output: dict[str, gs.Tensor] = {}
        self.fused: set[str] = set()
        self._find_units()
        self.overrides = self._resolve_overrides()
        self.demands: dict[str, _Request] = {}
        self.writes: dict[str, _Request] = {}
        self.inherits: dict[str, str] = {}  # pass-through output -> the tensor whose quantizer it reuses

    def plan(self) -> list[QuantPoint]:
        for node in self.nodes:
            if self._skipped(node):
                self.ctx.explain(node.name, False, "layer override: skip")
                continue
            self._demand_inputs(node)
            self._write_output(node)
        for node in reversed(self.nodes):
            self._pass_through(node)
        points = self._activation_points() + self._weight_points()
        self._group_scales({p.tensor: p for p in points})
        return points

    # roles and units -----------------------------------------------------
    def _role(self, node: gs.Node) -> str:
        rule = self.backend.ops.get(node.op)
        if rule is None or not node.inputs or not _is_float(node.inputs[0]):
            return "float"
        if rule.role == "weighted" and (len(node.inputs) < 2 or ir.constant_value(node.inputs[1]) is None):
            return "float"
        return rule.role

    def _find_units(self) -> None:
        fusable = set(self.backend.placement.fused_activations)
        for node in self.nodes:
            if self.roles[node.name] not in UNIT_ROLES:
                continue
            out = node.outputs[0]
            while (len(out.outputs) == 1 and out.outputs[0].op in fusable and out.outputs[0].inputs[0] is out
                   and not ir.is_graph_output(self.graph, out)):
                self.fused.add(out.outputs[0].name)
                out = out.outputs[0].outputs[0]
            self.unit_output[node.name] = out

    # overrides -----------------------------------------------------------
    def _resolve_overrides(self) -> dict[str, LayerOverride]:
        weighted = [n.name for n in self.nodes if self.roles[n.name] == "weighted"]
        positions = {"first_weighted": weighted[:1], "last_weighted": weighted[-1:]}
        resolved: dict[str, LayerOverride] = {}
        for layer in self.backend.layers:
            for node in self.nodes:
                if _matches(layer, node, positions):
                    resolved[node.name] = _merge(resolved.get(node.name), layer)
        return resolved

    def _skipped(self, node: gs.Node) -> bool:
        override = self.overrides.get(node.name)
        return override is not None and override.skip

    def _estimator(self, node: gs.Node) -> EstimatorConfig | None:
        override = self.overrides.get(node.name)
        return override.estimator if override is not None else None

    def _spec(self, node: gs.Node, kind: str) -> tuple[str, QuantizerSpec]:
        rule = self.backend.ops.get(node.op)
        override = self.overrides.get(node.name)
        name = getattr(override, kind, None) or getattr(rule, kind, None) or getattr(self.backend, kind)
        spec = self.backend.quantizers[name]
        if override is not None and override.bits is not None and override.bits != spec.bits:
            spec = dataclasses.replace(spec, bits=override.bits)
            name = f"{name}@{override.bits}bit"
        return name, spec

    # demands and writes ----------------------------------------------------
    def _demand_inputs(self, node: gs.Node) -> None:
        role = self.roles[node.name]
        if role == "pass_through":
            return  # decided from its output's demands, in _pass_through
        if role == "float":
            reason = self._why_float(node)
            if reason:
                self.ctx.explain(node.name, False, reason)
            return
        ports, why = self._demanded_ports(node, role)
        for port in ports:
            self._request(self.demands, node.inputs[port], node, why, consumer=node.name)
        self.ctx.explain(node.name, bool(ports), ("weight and " if role == "weighted" else "") + why)

    def _why_float(self, node: gs.Node) -> str:
        """Why an op the backend would quantize stays float (empty for ops it never quantizes)."""
        rule = self.backend.ops.get(node.op)
        if rule is None or rule.role == "float":
            return ""
        if not node.inputs or not _is_float(node.inputs[0]):
            return "its data input is not float32"
        return f"{node.op} {node.name} has no constant weight"

    def _demanded_ports(self, node: gs.Node, role: str) -> tuple[list[int], str]:
        placement, label = self.backend.placement, self.backend.scheme_label
        float_ports = [i for i, t in enumerate(node.inputs) if _is_float(t) and ir.constant_value(t) is None]
        if role == "weighted":
            return [0], f"activation input of {node.op} {node.name}"
        if role == "wrapped":
            return [0], f"{node.op} {node.name} runs in integers as DQ -> op -> Q"
        if role == "same_scale":
            return float_ports, f"inputs and output of {node.op} {node.name} share one scale"
        if role == "eltwise" and placement.eltwise_inputs == "all":
            what = "every input and the output" if placement.unit_outputs else "every input"
            return float_ports, f"{what} of {node.op} {node.name} ({label})"
        if role == "eltwise" and placement.eltwise_inputs == "unfused":
            fused = next((i for i in float_ports if self._from_weighted(node.inputs[i])), None)
            why = f"skip input of {node.op} {node.name} ({label})"
            if fused is not None:
                why += f"; input {node.inputs[fused].name} fuses into its producer"
            return [i for i in float_ports if i != fused], why
        if role == "eltwise":
            return [], f"{node.op} {node.name} stays float in {label}"
        return [], ""

    def _from_weighted(self, tensor: gs.Tensor) -> bool:
        producer = ir.producer(tensor)
        return (producer is not None and self.roles.get(producer.name) == "weighted"
                and len(tensor.outputs) == 1 and not ir.is_graph_output(self.graph, tensor))

    def _write_output(self, node: gs.Node) -> None:
        role = self.roles[node.name]
        unit_output = role in ("weighted", "eltwise")
        if not (role in ("same_scale", "wrapped") or (unit_output and self.backend.placement.unit_outputs)):
            return
        out = self.unit_output[node.name]
        if not out.outputs:
            self.ctx.explain(node.name, False, f"output {out.name} is a graph output and stays float")
            return
        why = f"output of {node.op} {node.name}" + (f" ({self.backend.scheme_label})" if unit_output else "")
        self._request(self.writes, out, node, why, consumer=None)

    def _request(self, table: dict[str, _Request], tensor: gs.Tensor, node: gs.Node, why: str,
                 consumer: str | None) -> None:
        spec_name, spec = self._spec(node, "activations")
        request = table.get(tensor.name)
        if request is None:
            request = table[tensor.name] = _Request(why, spec_name, spec)
        elif spec.bits > request.spec.bits:  # two readers want different grids: keep the finer one
            request.spec_name, request.spec = spec_name, spec
        request.estimator = request.estimator or self._estimator(node)
        if consumer is not None and consumer not in request.consumers:
            request.consumers.append(consumer)

    def _pass_through(self, node: gs.Node) -> None:
        if self.roles[node.name] != "pass_through" or node.name in self.fused:
            return
        out = node.outputs[0]
        demand = self.demands.pop(out.name, None)
        if demand is None:
            return
        source = node.inputs[0]
        self.inherits[out.name] = source.name
        why = f"input of {node.op} {node.name}, which passes it quantized to {', '.join(demand.consumers)}"
        self._request(self.demands, source, node, why, consumer=node.name)
        moved = self.demands[source.name]
        moved.spec_name, moved.spec = demand.spec_name, demand.spec
        moved.estimator = demand.estimator or moved.estimator
        self.ctx.explain(node.name, True, f"passes the quantized {source.name} through; no new quantizer")

    # quant points ----------------------------------------------------------
    def _activation_points(self) -> list[QuantPoint]:
        points = []
        default = self.backend.calibration.activations
        for name in self._tensor_order():
            write, demand = self.writes.get(name), self.demands.get(name)
            if write is None and demand is None:
                continue
            tensor = self.tensors[name]
            if write is not None:
                consumers = [n.name for n in tensor.outputs]
                request = write if demand is None or write.spec.bits >= demand.spec.bits else demand
                reason = write.reason + (f"; also {demand.reason}" if demand else "")
            else:
                consumers, request, reason = list(demand.consumers), demand, demand.reason
            overrides = [r.estimator for r in (request, write, demand) if r is not None and r.estimator is not None]
            estimator = overrides[0] if overrides else default
            points.append(QuantPoint(name, "activation", request.spec_name, request.spec, consumers, reason,
                                     scale_group=name, estimator=estimator))
        return points

    def _tensor_order(self) -> list[str]:
        order = [t.name for t in self.graph.inputs]
        order += [t.name for node in self.nodes for t in node.outputs]
        return order

    def _weight_points(self) -> list[QuantPoint]:
        points: dict[str, QuantPoint] = {}
        estimator = self.backend.calibration.weights
        for node in self.nodes:
            if self.roles[node.name] != "weighted" or self._skipped(node):
                continue
            weight = node.inputs[1]
            if weight.name in points:
                points[weight.name].consumers.append(node.name)
                continue
            spec_name, spec = self._spec(node, "weights")
            problem = per_channel_problem(self.backend, spec, "weights", node.op)
            if problem:
                raise UsageError(f"layers: {node.op} {node.name} gets {spec_name}: {problem}; "
                                 "give this layer a per-tensor spec")
            axis = weight_axis(node) if spec.granularity == "per_channel" else None
            points[weight.name] = QuantPoint(weight.name, "weight", spec_name, spec, [node.name],
                                             f"weight of {node.op} {node.name}", axis=axis,
                                             scale_group=weight.name, estimator=estimator)
        return list(points.values())

    def _group_scales(self, points: dict[str, QuantPoint]) -> None:
        parent = {name: name for name in points}

        def find(name: str) -> str:
            while parent[name] != name:
                parent[name] = parent[parent[name]]
                name = parent[name]
            return name

        for node in self.nodes:
            if self.roles[node.name] != "same_scale" or self._skipped(node):
                continue
            tensors = [self.unit_output[node.name], *node.inputs]  # the output first: it names the group
            members = [m for m in (self._resolve(t.name) for t in tensors) if m in points]
            for member in members[1:]:
                parent[find(member)] = find(members[0])
        for name, point in points.items():
            point.scale_group = find(name)

    def _resolve(self, name: str) -> str:
        while name in self.inherits:
            name = self.inherits[name]
        return name



def _nothing_to_quantize(graph: gs.Graph, backend: BackendConfig) -> str:
    if any(t.dtype is not None and np.dtype(t.dtype) == np.float16 for t in graph.tensors().values()):
        why = "its tensors are float16, and qcompile quantizes float32 models: convert it to float32 first"
    else:
        why = ("it has no float32 op that backend quantizes, such as a Conv, ConvTranspose, Gemm or MatMul with a "
               "constant weight")
    return f"nothing to quantize in this model for backend {backend.name}: {why}"


def _matches(layer: LayerOverride, node: gs.Node, positions: dict[str, list[str]]) -> bool:
    match = layer.match
    if match.name is not None and not re.search(match.name, node.name):
        return False
    if match.op_type is not None and node.op != match.op_type:
        return False
    return match.position is None or node.name in positions[match.position]


def _merge(base: LayerOverride | None, top: LayerOverride) -> LayerOverride:
    if base is None:
        return top
    return dataclasses.replace(
        base, skip=base.skip or top.skip, bits=top.bits if top.bits is not None else base.bits,
        weights=top.weights or base.weights, activations=top.activations or base.activations,
    )


def _is_float(tensor: gs.Tensor) -> bool:
    dtype = tensor.values.dtype if isinstance(tensor, gs.Constant) else tensor.dtype
    return dtype is not None and np.dtype(dtype) == np.float32


def _apply(graph: gs.Graph, source: gs.Tensor, point: QuantPoint, names: ir.GraphNames) -> None:
    signed = point.spec.signedness != "unsigned"
    g = grid(point.spec, signed)
    shape: tuple[int, ...] = ()
    if point.axis is not None:
        shape = (ir.constant_value(source).shape[point.axis],)
    attrs = {"axis": point.axis} if point.axis is not None else {}
    scale = gs.Constant(names.tensors.fresh(f"{point.tensor}/scale"), np.ones(shape, np.float32))
    zero_point = gs.Constant(names.tensors.fresh(f"{point.tensor}/zero_point"), np.zeros(shape, g.container))
    quantized = gs.Variable(names.tensors.fresh(f"{point.tensor}/quantized"), dtype=g.container, shape=source.shape)
    dequantized = gs.Variable(names.tensors.fresh(f"{point.tensor}/dequantized"), dtype=np.float32, shape=source.shape)
    quant = gs.Node("QuantizeLinear", names.nodes.fresh(f"{point.tensor}/quant"), dict(attrs),
                    [source, scale, zero_point], [quantized])
    dequant = gs.Node("DequantizeLinear", names.nodes.fresh(f"{point.tensor}/dequant"), dict(attrs),
                      [quantized, scale, zero_point], [dequantized])
    graph.nodes.extend([quant, dequant])
    point.nodes = [quant.name, dequant.name]
    point.scale_tensor, point.zero_point_tensor = scale.name, zero_point.name
    result = dequantized
    if point.kind == "activation" and g.narrower_than_container:
        # ONNX saturates to the container; the backend saturates within it (< 8 bits)
        low = gs.Constant(names.tensors.fresh(f"{point.tensor}/clip_min"), np.zeros((), np.float32))
        high = gs.Constant(names.tensors.fresh(f"{point.tensor}/clip_max"), np.ones((), np.float32))
        result = gs.Variable(names.tensors.fresh(f"{point.tensor}/clipped"), dtype=np.float32, shape=source.shape)
        clip = gs.Node("Clip", names.nodes.fresh(f"{point.tensor}/clip"), {}, [dequantized, low, high], [result])
        graph.nodes.append(clip)
        point.nodes.append(clip.name)
        point.clip_bounds = (low.name, high.name)
    ir.replace_uses(source, result, readers=point.consumers)
