"""Set every quantizer's scale and zero point from data (activations) or values (weights).

Before: DQ(Q(x, 1, 0))                  placeholder parameters from insert_quantizers
After:  DQ(Q(x, s_x, z_x))              s, z from the range estimate and the spec (qmath)
Activations: the float graph (every quantizer bypassed) runs once over the
calibration data in onnxruntime, batch by batch, with each quantized tensor
exposed as an output; an estimator per tensor keeps running statistics
(minmax, mean_max, percentile), never the activations themselves, so memory
does not grow with the number of samples. Weights: minmax over each
initializer, per channel where the spec says so. Ranges are widened to
contain 0; degenerate ranges get a finite, non-zero scale.
"""
from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from qcompiler import ir, runtime
from qcompiler.errors import QCompileError, UsageError
from qcompiler.estimators import make_estimator, weight_range
from qcompiler.pass_base import Pass, PassContext, PassResult, Property
from qcompiler.passes.insert_quantizers import QUANTIZERS_PLACED
from qcompiler.quant_plan import QuantPlan, write_qparams


def _uncalibrated(graph: gs.Graph, ctx: PassContext) -> str | None:
    missing = [p.tensor for p in ctx.plan.points.values() if not p.calibrated]
    return f"{len(missing)} quantizers have no scale yet, e.g. {missing[0]}" if missing else None


CALIBRATED = Property("calibrated quantizers", "calibrate", _uncalibrated)


class Calibrate(Pass):
    name = "calibrate"
    requires = (QUANTIZERS_PLACED,)
    ensures = (CALIBRATED,)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        data = ctx.calibration_data
        if data is None:
            raise UsageError("calibrate needs calibration data; pass --calib DIR|FILE.npy|FILE.npz|module:function")
        backend = ctx.backend
        if backend.calibration.weights.estimator != "minmax":
            raise UsageError(f"weight estimator {backend.calibration.weights.estimator!r} is not implemented yet; "
                             "use minmax")
        samples = self._calibrate_activations(graph, ctx)
        for point in ctx.plan.weights():
            point.set_range(*weight_range(ir.constant_value(graph.tensors()[point.tensor]), point.axis))
            write_qparams(graph, point)
        for point in ctx.plan.activations():
            write_qparams(graph, point)
        return PassResult(changed=True, stats={"samples": samples, "activation_points": len(ctx.plan.activations()),
                                               "weight_points": len(ctx.plan.weights())})

    def _calibrate_activations(self, graph: gs.Graph, ctx: PassContext) -> int:
        points = ctx.plan.activations()
        config = ctx.backend.calibration
        estimators = {p.tensor: make_estimator(config.activations) for p in points}
        if not points:
            return 0
        session = runtime.session(float_observer(graph, ctx.plan))
        names = [p.tensor for p in points]
        data = ctx.calibration_data
        total = math.ceil(data.count / config.batch_size) if data.count else None
        samples = 0
        for feed in ctx.progress(data.batches(config.batch_size), total, "calibrate"):
            for name, values in zip(names, session.run(names, feed)):
                estimators[name].update(values)
            samples += len(next(iter(feed.values())))
        if samples == 0:
            raise QCompileError("the calibration data holds no samples")
        for point in points:
            point.set_range(*estimators[point.tensor].range())
        return samples


def float_observer(graph: gs.Graph, plan: QuantPlan):
    """The float model (every quantizer bypassed) with each activation quant point as an output."""
    view = graph.copy()
    tensors = view.tensors()
    by_name = {node.name: node for node in view.nodes}
    for point in plan.points.values():
        source = tensors[point.tensor]
        last = by_name[point.nodes[-1]].outputs[0]
        for consumer in list(last.outputs):
            for index, operand in enumerate(consumer.inputs):
                if operand is last:
                    consumer.inputs[index] = source
    view.cleanup(remove_unused_graph_inputs=False)
    existing = {t.name for t in view.outputs}
    view.outputs += [tensors[p.tensor] for p in plan.activations() if p.tensor not in existing]
    return ir.to_model(view)
