"""The quantization plan: what ONNX cannot hold about the quantizers.

A ``QuantPoint`` is one Q/DQ pair on one tensor: its spec, per-channel axis,
the nodes that read the quantized value, its scale group, the estimator
that calibrates it and the reason it exists; calibration adds its range,
grid, scale and zero point. The plan
lives in the pass context, keyed by tensor name, and records the names of
the Q/DQ nodes and initializers insert_quantizers added, so later passes
find them in the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs
import yaml

from qcompiler.config.backend import EstimatorConfig, QuantizerSpec, WeightEstimatorConfig
from qcompiler.quant.qmath import Grid, grid, qparams, quantize, resolve_signed

QuantKind = Literal["activation", "weight"]


@dataclass
class QuantPoint:
    tensor: str
    kind: QuantKind
    spec_name: str
    spec: QuantizerSpec
    consumers: list[str]
    reason: str
    axis: int | None = None
    scale_group: str = ""
    estimator: EstimatorConfig | WeightEstimatorConfig = field(default_factory=EstimatorConfig)
    # names of what insert_quantizers adds to the graph (derived from the tensor's)
    nodes: list[str] = field(default_factory=list)
    scale_tensor: str = ""
    zero_point_tensor: str = ""
    clip_bounds: tuple[str, str] | None = None
    # set by calibrate (and share_scales)
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    grid: Grid | None = None
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    # a weight's integers, made once for the values and scale they were made from
    _integers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def calibrated(self) -> bool:
        return self.scale is not None

    def quantized(self, values: np.ndarray) -> np.ndarray:
        """``values`` (the weight's) on this point's grid: what QuantizeLinear makes of them, computed once.

        Several outputs read a weight's integers (model.trt.onnx, model.int8.onnx,
        report.json); quantizing 550 MB of weights costs a second each time.
        """
        cached = self._integers
        if cached is None or cached[0] is not values or cached[1] is not self.scale:
            cached = self._integers = (values, self.scale,
                                       quantize(values, self.scale, self.zero_point, self.grid, self.axis))
        return cached[2]

    def set_range(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Record the calibrated range and derive grid, scale and zero point from the spec."""
        self.lo, self.hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        self.grid = grid(self.spec, resolve_signed(self.spec, self.lo))
        self.scale, self.zero_point = qparams(self.lo, self.hi, self.spec, self.grid)


def write_qparams(tensors: dict[str, gs.Tensor], point: QuantPoint) -> None:
    """Write ``point``'s scale and zero point (and clip bounds) into the graph's initializers.

    ``tensors`` is ``graph.tensors()``, taken once by the caller for all points.
    """
    tensors[point.scale_tensor].values = point.scale
    tensors[point.zero_point_tensor].values = point.zero_point
    quant = tensors[point.scale_tensor].outputs
    for node in quant:  # the Q node's output carries the container type
        if node.op == "QuantizeLinear":
            node.outputs[0].dtype = point.grid.container
    if point.clip_bounds is not None:
        zero = point.zero_point.astype(np.float32)
        low, high = point.clip_bounds
        qmin, qmax = point.grid.clamp
        tensors[low].values = np.asarray((qmin - zero) * point.scale, np.float32)
        tensors[high].values = np.asarray((qmax - zero) * point.scale, np.float32)


@dataclass(frozen=True)
class FloatBias:
    """A layer's bias before bias_correct changed it: input ``index`` of node ``holder`` (the layer, or the
    Add after a MatMul), ``original`` None when the layer had none."""

    holder: str
    index: int
    original: gs.Tensor | None


@dataclass
class QuantPlan:
    points: dict[str, QuantPoint] = field(default_factory=dict)
    # by layer: the bias bias_correct replaced, for layer_fallback to restore when the layer returns to float
    float_biases: dict[str, FloatBias] = field(default_factory=dict)
    # by layer: why a layer the backend would quantize runs in float (layer_fallback's decisions)
    float_layers: dict[str, str] = field(default_factory=dict)
    # layer_fallback's search, step by step (plain data, for report.json)
    fallback: dict | None = None

    def __bool__(self) -> bool:
        """Whether quantizers were placed (layer_fallback may have returned every layer to float since)."""
        return bool(self.points or self.float_layers)

    def activations(self) -> list[QuantPoint]:
        return [p for p in self.points.values() if p.kind == "activation"]

    def weights(self) -> list[QuantPoint]:
        return [p for p in self.points.values() if p.kind == "weight"]

    def feeding(self, tensor: gs.Tensor) -> QuantPoint | None:
        """The point whose quantized value ``tensor`` is (the output of its DQ, or of its clip), if any."""
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is None:
            return None
        return next((p for p in self.points.values() if p.nodes and p.nodes[-1] == producer.name), None)

    def float_input(self, tensor: gs.Tensor) -> str:
        """The name of the float tensor behind ``tensor``: what quantizes into it, or itself."""
        point = self.feeding(tensor)
        return point.tensor if point is not None else tensor.name

    def groups(self) -> dict[str, list[QuantPoint]]:
        groups: dict[str, list[QuantPoint]] = {}
        for point in self.points.values():
            groups.setdefault(point.scale_group, []).append(point)
        return groups

    def to_yaml(self) -> str:
        """The plan as reviewable YAML (sorted by tensor name), without calibration results, then the layers
        returned to float and why."""
        entries = []
        for name in sorted(self.points):
            p = self.points[name]
            entry = {
                "tensor": p.tensor, "kind": p.kind, "spec": p.spec_name, "bits": p.spec.bits,
                "signedness": p.spec.signedness, "symmetric": p.spec.symmetric,
                "granularity": p.spec.granularity, "scale_form": p.spec.scale,
            }
            if p.axis is not None:
                entry["axis"] = p.axis
            entry.update({"consumers": sorted(p.consumers), "scale_group": p.scale_group, "reason": p.reason})
            entries.append(entry)
        data: dict = {"quant_points": entries}
        if self.float_layers:
            data["float_layers"] = [{"layer": name, "reason": self.float_layers[name]} for name in self.float_layers]
        return yaml.safe_dump(data, sort_keys=False, width=120)
