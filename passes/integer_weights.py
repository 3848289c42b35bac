"""Hold every quantized weight as integers, computed the way the backend's converter computes them.

Before: W (float32 initializer) -> QuantizeLinear(s, z) -> DequantizeLinear(s, z) -> op
After:  W_q (int8 / uint8 initializer) -> DequantizeLinear(s, z) -> op
How W_q is made is the backend's ``arithmetic.weights``:
- ``onnx``: ``clamp(round_half_even(W / s) + z)``, exactly what the removed
  QuantizeLinear computed, so the graph's values do not change;
- ``unsigned_offset``: ``clamp(round_half_even((W - min) / s))`` in float32 on
  the unsigned grid, ``min = (qmin - z) * s``, as Qualcomm's converter and
  AIMET quantize (BACKENDS.md section 6). Near a tie this lands 1 LSB away
  from ``onnx``: part of the deployment gap, counted in the stats.
The first lowering pass: the graph before it is the fake-quant model
(model.qdq.onnx), the graph after the last one the integer model.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult
from qcompiler.pipeline.properties import CALIBRATED, INTEGER_WEIGHTS
from qcompiler.quant.integer_weights import hold_integer_weights
from qcompiler.quant.plan import QuantPoint
from qcompiler.quant.qmath import along_axis


class IntegerWeights(Pass):
    name = "integer_weights"
    lowers = True
    requires = (CALIBRATED,)
    ensures = (CALIBRATED, INTEGER_WEIGHTS)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        form = ctx.backend.arithmetic.weights
        moved = 0

        def integers(point: QuantPoint, values: np.ndarray) -> np.ndarray:
            nonlocal moved
            onnx_form = point.quantized(values)
            if form != "unsigned_offset":
                ctx.explain(point.tensor, True, f"{onnx_form.size} integers, round(w / s) + z")
                return onnx_form
            offset = unsigned_offset_integers(values, point)
            changed = int(np.count_nonzero(offset != onnx_form))
            moved += changed
            ctx.explain(point.tensor, True, f"{offset.size} integers, {changed} 1 LSB from round(w / s) + z "
                                            "(round((w - min) / s) on the unsigned grid)")
            return offset

        hold_integer_weights(graph, ctx.plan, integers)
        return PassResult(changed=bool(ctx.plan.weights()),
                          stats={"weights": len(ctx.plan.weights()), "moved_by_rounding": moved})


def unsigned_offset_integers(values: np.ndarray, point: QuantPoint) -> np.ndarray:
    """``values`` quantized as AIMET does: ``round((w - min) / s)`` in float32 on [0, qmax - qmin], shifted back."""
    qmin, qmax = point.grid.clamp
    scale = along_axis(point.scale, values.ndim, point.axis).astype(np.float32)
    zero_point = along_axis(point.zero_point, values.ndim, point.axis).astype(np.float32)
    minimum = (np.float32(qmin) - zero_point) * scale
    unsigned = np.clip(np.rint((np.asarray(values, np.float32) - minimum) / scale), 0, qmax - qmin)
    return (unsigned + np.float32(qmin)).astype(point.grid.container)
