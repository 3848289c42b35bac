"""Run the quantized ops between the weighted ones in integers: data movement, Add, Concat, pooling, requantization.

Each rewrite, with the backend's ``arithmetic`` (BACKENDS.md section 5):
- data movement (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, MaxPool,
  Slice) reading ``DQ(q)`` moves ``q`` itself; the DQ moves below it, so the
  next op reads a DQ directly (MaxPool commutes with the monotone DQ);
- ``DQ(q, s1, z1) -> [Relu | Clip] -> Q(s2, z2)``: ``q`` itself when both grids
  agree and nothing clamps, else requantized: ``(q - z1) * s1 / s2``, rounded,
  ``+ z2``, saturated (and narrowed by the clamp);
- ``Add(DQ(a), DQ(b)) -> [Relu | Clip] -> Q``: float32 multipliers:
  ``round((a - z_a) * float32(s_a / s_y) + (b - z_b) * float32(s_b / s_y))``;
  fixed point: TFLite's Add, both inputs left-shifted by 20 bits and scaled to
  twice the larger input scale, summed, then scaled to the output;
  shifts: both inputs shifted to the finer input scale, summed, shifted to
  the output (relay.quantize);
- ``Concat(DQ(x_i)) -> Q``: a Concat of the integers, each input requantized
  first unless it is on the output's grid already (share_scales puts it there);
- ``GlobalAveragePool(DQ(q)) -> Q``: ``sum(q - z_x)`` over the H*W positions in
  int64, times ``s_x / (s_y * H*W)``, rounded by ``arithmetic.pooling``.
Anything else (AveragePool with a window, an op whose inputs are quantized
per channel) stays DQ -> op -> Q in float; ``--explain integer_ops`` says why.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler.config.backend import ArithmeticConfig
from qcompiler.graph import ir
from qcompiler.graph.ops import CLAMP_OPS, DATA_MOVEMENT_OPS
from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult
from qcompiler.pipeline.properties import CALIBRATED
from qcompiler.quant.lowering import Lowering, float_multiplier, integer_form, is_power_of_two, real_multiplier
from qcompiler.quant.plan import QuantPoint
from qcompiler.quant.regions import (
    Dequantized,
    QuantizedOutput,
    clamped_grid,
    dequantized,
    detach,
    quant_nodes,
    quantized_output,
    sink_dequantize,
)

TFLITE_ADD_LEFT_SHIFT = 20   # tensorflow/lite/kernels/add.cc: inputs scaled up by 2^20 before they are summed


class IntegerOps(Pass):
    name = "integer_ops"
    lowers = True
    requires = (CALIBRATED,)
    ensures = (CALIBRATED,)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        lowerer = _OpLowerer(graph, ctx)
        for node in list(graph.nodes):  # topological: a DQ sunk below one op is seen by the next
            lowerer.lower(node)
        return PassResult(changed=bool(lowerer.stats), stats=dict(lowerer.stats))


class _OpLowerer:
    def __init__(self, graph: gs.Graph, ctx: PassContext):
        self.graph, self.ctx = graph, ctx
        self.arithmetic: ArithmeticConfig = ctx.backend.arithmetic
        self.points: dict[str, QuantPoint] = quant_nodes(ctx.plan)
        self.names = ir.GraphNames(graph)
        self.stats: Counter[str] = Counter()

    def lower(self, node: gs.Node) -> None:
        if not node.outputs:  # cut off by an earlier rewrite
            return
        if node.op in DATA_MOVEMENT_OPS:
            self._sink_dequantize(node)
        elif node.op == "QuantizeLinear":
            self._requantize(node)
        elif node.op == "Add":
            self._binary(node, self._add)
        elif node.op == "Concat":
            self._concat(node)
        elif node.op == "GlobalAveragePool":
            self._binary(node, self._global_average, self._pooling_problem)
        elif node.op == "AveragePool" and dequantized(node.inputs[0]) is not None:
            self._keep(node, "an AveragePool with a window is not lowered yet: it stays DQ -> AveragePool -> Q")

    def _keep(self, node: gs.Node, reason: str) -> None:
        self.ctx.explain(node.name, False, reason)
        self.stats["float"] += 1

    # --- data movement -------------------------------------------------------

    def _sink_dequantize(self, node: gs.Node) -> None:
        if sink_dequantize(self.graph, node, self.names):
            self.stats["moved"] += 1

    # --- requantization -------------------------------------------------------

    def _requantize(self, quant: gs.Node) -> None:
        """A Q reading a DQ (through at most one clamp): the integers, requantized when the grids differ."""
        producer = ir.producer(quant.inputs[0])
        clamp = producer if producer is not None and producer.op in CLAMP_OPS else None
        source = dequantized(clamp.inputs[0] if clamp is not None else quant.inputs[0])
        if source is None or not source.per_tensor:
            return
        output = quantized_output(self.graph, clamp or source.node, self.points) if clamp is not None \
            else self._direct_output(quant)
        if output is None:
            return
        same = (clamp is None and source.integers.dtype == output.grid.container
                and np.array_equal(source.scale, output.scale) and int(source.zero_point) == output.grid.zero_point)
        if same and not ir.is_graph_output(self.graph, output.integers):
            ir.replace_uses(output.integers, source.integers)
            detach(quant)
            self.stats["bypassed"] += 1
            return
        lowering = Lowering(self.graph, self.names, output.point.tensor + "/requant")
        target = output.integers
        detach(clamp, quant)
        self._rescale(lowering, source, output, target)
        self.stats["requantized"] += 1

    def _direct_output(self, quant: gs.Node) -> QuantizedOutput | None:
        point = self.points.get(quant.name)
        if point is None or point.axis is not None:
            return None
        return QuantizedOutput(None, quant, point, clamped_grid(point))

    def _rescale(self, lowering: Lowering, source: Dequantized, output: QuantizedOutput,
                 target: gs.Variable | None = None) -> gs.Variable:
        """``source``'s integers on ``output``'s grid: ``(q - z1) * s1 / s2`` rounded, ``+ z2``, saturated."""
        centered = lowering.widened(source.integers, int(source.zero_point), "input")
        return self._scaled_to_grid(lowering, centered, [source.scale], output, self.arithmetic.rounding, target)

    def _scaled_to_grid(self, lowering: Lowering, value: gs.Variable, factors: list[np.ndarray],
                        output: QuantizedOutput, rounding: str, target: gs.Variable | None,
                        count: int = 1) -> gs.Variable:
        """int64 ``value`` times ``prod(factors) / (s_y * count)``, rounded by ``rounding``, onto the output grid."""
        divisor = np.float32(output.scale) * np.float32(count)
        real = real_multiplier(*factors, divisor=divisor)
        arithmetic = integer_form(replace(self.arithmetic, rounding=rounding), real)
        if arithmetic.multiplier == "float32":
            multiplier = float_multiplier(*factors, divisor=divisor)
            scaled = lowering.op("Mul", [lowering.cast(value, np.float32, "float"),
                                         lowering.const("multiplier", multiplier, np.float32)], np.float32, "scaled")
            return lowering.to_grid_from_float(scaled, arithmetic.rounding, output.grid, output=target)
        scaled = lowering.scale_integers(value, real, arithmetic, "scaled")
        return lowering.to_grid_from_int(scaled, output.grid, output=target)

    # --- Add, Concat, pooling -------------------------------------------------

    def _binary(self, node: gs.Node, lower, problem=None) -> None:
        """``node`` with every input dequantized per tensor and its output quantized, lowered by ``lower``
        (unless ``problem(sources)`` gives a reason to keep it in float)."""
        sources = [dequantized(tensor) for tensor in node.inputs]
        if any(source is None for source in sources):
            return
        if not all(source.per_tensor for source in sources):
            self._keep(node, "an input is quantized per channel")
            return
        output = quantized_output(self.graph, node, self.points)
        if output is None:
            self.ctx.explain(node.name, False, "its output is not quantized: it runs in float, as in the fake-quant "
                                               "model")
            return
        reason = problem(sources) if problem is not None else None
        if reason:
            self._keep(node, reason)
            return
        lowering = Lowering(self.graph, self.names, node.name)
        target = output.integers
        detach(node, output.clamp, output.quant)
        self.ctx.explain(node.name, True, lower(lowering, sources, output, target))
        self.stats[node.op] += 1

    def _add(self, lowering: Lowering, sources: list[Dequantized], output: QuantizedOutput,
             target: gs.Variable) -> str:
        centered = [lowering.widened(s.integers, int(s.zero_point), f"input{i}") for i, s in enumerate(sources)]
        if self.arithmetic.multiplier == "float32":
            return self._add_in_float(lowering, sources, centered, output, target)
        finer = np.float32(min(float(s.scale) for s in sources))
        shifts = [real_multiplier(s.scale, divisor=finer) for s in sources]
        if self.arithmetic.multiplier == "shift" and all(is_power_of_two(m) for m in shifts) \
                and is_power_of_two(real_multiplier(finer, divisor=output.scale)):
            aligned = [lowering.scale_integers(value, m, self.arithmetic, f"input{i}/aligned")
                       for i, (value, m) in enumerate(zip(centered, shifts))]
            total = lowering.op("Add", aligned, np.int64, "sum")
            self._scaled_to_grid(lowering, total, [finer], output, self.arithmetic.rounding, target)
            return "Add by shifts: both inputs at the finer input scale, summed, shifted to the output"
        return self._add_in_fixed_point(lowering, sources, centered, output, target)

    def _add_in_float(self, lowering: Lowering, sources: list[Dequantized], centered: list[gs.Variable],
                      output: QuantizedOutput, target: gs.Variable) -> str:
        terms = [lowering.op("Mul", [lowering.cast(value, np.float32, f"input{i}/float"),
                                     lowering.const(f"input{i}/multiplier",
                                                    float_multiplier(s.scale, divisor=output.scale), np.float32)],
                             np.float32, f"input{i}/scaled") for i, (value, s) in enumerate(zip(centered, sources))]
        total = lowering.op("Add", terms, np.float32, "sum")
        lowering.to_grid_from_float(total, self.arithmetic.rounding, output.grid, output=target)
        return "Add in float32 multipliers on the integers"

    def _add_in_fixed_point(self, lowering: Lowering, sources: list[Dequantized], centered: list[gs.Variable],
                            output: QuantizedOutput, target: gs.Variable) -> str:
        fixed = replace(self.arithmetic, multiplier="fixed_point")
        twice_max = 2.0 * max(float(s.scale) for s in sources)
        terms = []
        for i, (value, source) in enumerate(zip(centered, sources)):
            shifted = lowering.op("Mul", [value, lowering.const(f"input{i}/left", 1 << TFLITE_ADD_LEFT_SHIFT,
                                                                np.int64)], np.int64, f"input{i}/shifted")
            terms.append(lowering.scale_integers(shifted, np.float64(source.scale) / twice_max, fixed,
                                                 f"input{i}/scaled"))
        total = lowering.op("Add", terms, np.int64, "sum")
        multiplier = twice_max / ((1 << TFLITE_ADD_LEFT_SHIFT) * np.float64(output.scale))
        lowering.to_grid_from_int(lowering.scale_integers(total, multiplier, fixed, "scaled"), output.grid,
                                  output=target)
        return "Add in fixed point as TFLite adds (inputs << 20 at twice the larger scale)"

    def _pooling_problem(self, sources: list[Dequantized]) -> str | None:
        if _spatial_size(sources[0].integers) is None and self.arithmetic.multiplier != "float32":
            return ("its input's spatial size is known only at run time, and a fixed-point or shift multiplier "
                    "s_x / (s_y * H*W) needs it now: it stays DQ -> GlobalAveragePool -> Q in float")
        return None

    def _global_average(self, lowering: Lowering, sources: list[Dequantized], output: QuantizedOutput,
                        target: gs.Variable) -> str:
        (source,) = sources
        rank = len(source.integers.shape) if source.integers.shape else 4
        centered = lowering.widened(source.integers, int(source.zero_point), "input")
        axes = lowering.const("axes", np.arange(2, rank), np.int64)
        total = lowering.op("ReduceSum", [centered, axes], np.int64, "sum", {"keepdims": 1})
        count = _spatial_size(source.integers)
        if count is not None:
            self._scaled_to_grid(lowering, total, [source.scale], output, self.arithmetic.pooling, target, count)
            return f"sum of {count} integers, scaled by s_x / (s_y * {count}), rounding {self.arithmetic.pooling}"
        # H*W at run time: the float32 multiplier s_x / (s_y * H*W), in the order float_multiplier computes it
        shape = lowering.op("Slice", [lowering.op("Shape", [source.integers], np.int64, "shape"),
                                      lowering.const("spatial_start", [2], np.int64),
                                      lowering.const("spatial_end", [np.iinfo(np.int64).max], np.int64)],
                            np.int64, "spatial")
        positions = lowering.cast(lowering.op("ReduceProd", [shape], np.int64, "positions", {"keepdims": 0}),
                                  np.float32, "positions/float")
        divisor = lowering.op("Mul", [lowering.const("y_scale", output.scale, np.float32), positions], np.float32,
                              "divisor")
        multiplier = lowering.op("Div", [lowering.const("x_scale", source.scale, np.float32), divisor], np.float32,
                                 "multiplier")
        scaled = lowering.op("Mul", [lowering.cast(total, np.float32, "sum/float"), multiplier], np.float32,
                             "scaled")
        lowering.to_grid_from_float(scaled, self.arithmetic.pooling, output.grid, output=target)
        return (f"sum of H*W integers, scaled by s_x / (s_y * H*W) with H*W read at run time, rounding "
                f"{self.arithmetic.pooling}")

    def _concat(self, node: gs.Node) -> None:
        sources = [dequantized(tensor) for tensor in node.inputs]
        if any(source is None for source in sources):
            return
        output = quantized_output(self.graph, node, self.points)
        if output is None or output.clamp is not None or not all(s.per_tensor for s in sources):
            self._keep(node, "its output is not quantized on its own, or an input is per channel")
            return
        lowering = Lowering(self.graph, self.names, node.name)
        target = output.integers
        detach(node, output.quant)
        inputs, rescaled = [], 0
        for index, source in enumerate(sources):
            on_grid = (np.array_equal(source.scale, output.scale) and int(source.zero_point) == output.grid.zero_point
                       and source.integers.dtype == output.grid.container)
            if on_grid:
                inputs.append(source.integers)
            else:
                inputs.append(self._rescale(Lowering(self.graph, self.names, f"{node.name}/input{index}"), source,
                                            output))
                rescaled += 1
        lowering.op("Concat", inputs, output.grid.container, "concat", {"axis": node.attrs.get("axis", 1)},
                    output=target)
        self.ctx.explain(node.name, True, f"Concat of integers ({rescaled} of {len(sources)} inputs requantized)")
        self.stats["Concat"] += 1


def _spatial_size(tensor: gs.Tensor) -> int | None:
    """The number of positions a global pool averages, when the shape gives it; else None."""
    spatial = tensor.shape[2:] if tensor.shape else None
    if not spatial or not all(isinstance(d, int) and d > 0 for d in spatial):
        return None
    return int(np.prod(spatial))
