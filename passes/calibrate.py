"""Set every quantizer's scale and zero point from data (activations) or values (weights).

Before: DQ(Q(x, 1, 0))                  placeholder parameters from insert_quantizers
After:  DQ(Q(x, s_x, z_x))              s, z from the range estimate and the spec (quant.qmath)
Activations: the float graph (every quantizer bypassed) runs once over the
calibration data in onnxruntime, batch by batch, feeding each tensor's
estimator: the one its quant point names (the backend's default, or a
``layers:`` override), see calibration/observer.py. Weights: their
estimator over each initializer, per channel (or group) where the spec
says so. When a later pass asks (``Pass.calibration_needs``), the same pass
over the data also takes per-channel means of the tensors it names.
Ranges are widened to contain 0; degenerate ranges get a finite, non-zero
scale. Degenerate data warns (``--strict``: fails): a calibration input that
holds one value throughout, an activation whose range is zero, fewer
samples than an estimator needs.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.calibration.batching import batch_size
from qcompiler.calibration.observer import Observation, observe_calibration_data
from qcompiler.calibration.weights import estimate_weight
from qcompiler.errors import UsageError
from qcompiler.graph import ir
from qcompiler.graph.ops import input_channel_axis
from qcompiler.pipeline.pass_base import INPUT_MEANS, Pass, PassContext, PassResult
from qcompiler.pipeline.properties import CALIBRATED, QUANTIZERS_PLACED
from qcompiler.quant.plan import QuantPoint, write_qparams


class Calibrate(Pass):
    name = "calibrate"
    requires = (QUANTIZERS_PLACED,)
    ensures = (CALIBRATED,)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        data = ctx.calibration_data
        if data is None:
            raise UsageError("calibrate needs calibration data; pass --calib DIR|FILE.npy|FILE.npz|module:function")
        samples = 0
        activations = ctx.plan.activations()
        if activations:
            seen = observe_calibration_data(graph, ctx.plan, activations, data,
                                            batch_size(ctx.backend.calibration.batch_size, data), ctx.progress,
                                            channel_means=_means_wanted(graph, ctx))
            samples = seen.samples
            ctx.input_means = seen.channel_means
            for point in activations:
                point.set_range(*seen.ranges[point.tensor])
            _warn_of_degenerate_data(seen, activations, ctx)
        tensors = graph.tensors()
        for point in ctx.plan.weights():
            values = ir.constant_value(tensors[point.tensor])
            point.set_range(*estimate_weight(point.estimator, point.spec, values, point.axis))
        for point in ctx.plan.points.values():
            write_qparams(tensors, point)
        return PassResult(changed=True, stats={"samples": samples, "activation_points": len(activations),
                                               "weight_points": len(ctx.plan.weights())})


def _means_wanted(graph: gs.Graph, ctx: PassContext) -> dict[str, int]:
    """For INPUT_MEANS: the float input of every weighted op whose weight is quantized, and its channel axis."""
    if INPUT_MEANS not in ctx.requests:
        return {}
    by_name = {node.name: node for node in graph.nodes}
    wanted = {}
    for point in ctx.plan.weights():
        for name in point.consumers:
            node = by_name[name]
            wanted[ctx.plan.float_input(node.inputs[0])] = input_channel_axis(node)
    return wanted


def _warn_of_degenerate_data(seen: Observation, activations: list[QuantPoint], ctx: PassContext) -> None:
    for name, value in seen.constant_inputs.items():
        ctx.warn(f"calibration input {name} is {value:g} in every sample: ranges calibrated on it say nothing of "
                 "real inputs; check the data and its preprocessing")
    zero = [p.tensor for p in activations if not (np.any(p.lo) or np.any(p.hi))]
    if zero and not seen.constant_inputs:
        ctx.warn(f"{len(zero)} activation(s) have a zero range, e.g. {zero[0]}: the calibration data never makes "
                 "them non-zero, so their quantizers send every value to 0")
    if seen.samples < seen.min_samples:
        ctx.warn(f"calibration saw {seen.samples} sample(s), fewer than the {seen.min_samples} its estimators need "
                 "for a range that is the data's rather than one sample's; give more")
