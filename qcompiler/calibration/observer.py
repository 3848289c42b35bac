"""The observer: the float graph, every quantizer bypassed, that feeds each activation's estimator.

``observe_calibration_data`` runs it once over the calibration data, batch
by batch, and returns each tensor's range (and, when a later pass asked for
them, per-channel means of chosen tensors). Estimators keep running
statistics, never the activations, so memory does not grow with the number
of samples. What an estimator needs is computed inside onnxruntime, next to
the activation, and only that leaves it:
- every sample's min and max (ReduceMin; GlobalMaxPool then ReduceMax);
- moments: per-sample ReduceSum, ReduceSumSquare and ReduceL1;
- values, for a histogram: at most HISTOGRAM_VALUES_PER_SAMPLE of each
  sample, taken evenly (a prime stride through the flattened sample, so
  the pick does not follow channels or rows), while the exact extrema still
  bound the histogram;
- per-channel means: GlobalAveragePool, or ReduceMean over the other axes.
A tensor of unknown or rank-1 shape comes out whole and is reduced in numpy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler import runtime
from qcompiler.calibration.batching import read_ahead
from qcompiler.calibration.estimators import MOMENTS, VALUES, BatchStatistics, Estimator, make_estimator, statistics_of
from qcompiler.data.sources import CalibrationData
from qcompiler.errors import UsageError
from qcompiler.graph import ir
from qcompiler.quant.plan import QuantPlan, QuantPoint

Progress = Callable[[Iterable, "int | None", str], Iterable]
# A histogram estimator sees at most this many values of each sample of a tensor: binning
# costs about 10 ns a value in numpy, and MobileNetV2's largest activations hold 1.2 M
HISTOGRAM_VALUES_PER_SAMPLE = 1 << 16


@dataclass
class Observation:
    """What a pass over the calibration data found."""

    ranges: dict[str, tuple[float, float]]      # by tensor, each by the estimator its point names
    samples: int
    min_samples: int                            # what the estimators used need for a stable estimate
    constant_inputs: dict[str, float]           # graph inputs that held one value throughout, and that value
    channel_means: dict[str, np.ndarray] = field(default_factory=dict)


def observe_calibration_data(graph: gs.Graph, plan: QuantPlan, points: list[QuantPoint], data: CalibrationData,
                             batch_size: int, progress: Progress,
                             channel_means: dict[str, int] | None = None) -> Observation:
    """Each point's range over ``data`` by the estimator the point names, and what else the pass saw.

    ``channel_means`` maps tensors to the axis of their channels; their
    per-channel means over the data come back in the observation.
    """
    estimators = {p.tensor: make_estimator(p.estimator, p.spec) for p in points}
    observer = Observer(graph, plan, estimators, channel_means or {}, shares_cpu=data.decodes)
    total = math.ceil(data.count / batch_size) if data.count else None
    samples = 0
    extrema: dict[str, tuple[float, float]] = {}
    for feed in progress(read_ahead(data.batches(batch_size)), total, "calibrate"):
        observer.observe(feed)
        samples += len(next(iter(feed.values())))
        for name, values in feed.items():
            low, high = extrema.get(name, (math.inf, -math.inf))
            extrema[name] = (min(low, float(values.min())), max(high, float(values.max())))
    if samples == 0:
        raise UsageError("the calibration data holds no samples; give at least one")
    return Observation({name: estimator.range() for name, estimator in estimators.items()}, samples,
                       max((estimator.min_samples for estimator in estimators.values()), default=1),
                       {name: low for name, (low, high) in extrema.items() if low == high},
                       observer.channel_means())


@dataclass
class _Tap:
    """The outputs the observer adds for one tensor's estimator, by what they hold."""

    minimum: str | None = None      # None: the tensor is never negative, its minimum is taken as 0
    maximum: str = ""
    moments: tuple[str, str, str] | None = None
    values: str | None = None
    size: int = 0                   # values per sample
    whole: str | None = None        # set when the tensor comes out whole instead


class Observer:
    """The float graph, every quantizer bypassed (unless ``bypass`` is False), with what each estimator
    and each channel mean needs as extra outputs."""

    def __init__(self, graph: gs.Graph, plan: QuantPlan, estimators: dict[str, Estimator],
                 channel_means: dict[str, int], shares_cpu: bool = False, bypass: bool = True):
        view = float_view(graph, plan) if bypass else graph.copy()
        tensors = view.tensors()
        self.view = view
        self.estimators = estimators
        self.taps: dict[str, _Tap] = {}
        self.outputs: list[gs.Tensor] = []
        self.after: dict[int | None, list[gs.Node]] = {}   # id of a producer (None: a graph input) -> nodes next
        for name, estimator in estimators.items():
            self.taps[name] = self._tap(tensors[name], estimator.needs)
        self.means = {name: self._channel_mean(tensors[name], axis) for name, axis in channel_means.items()}
        self.mean_sums: dict[str, np.ndarray] = {}
        self.mean_counts: dict[str, int] = {}
        # onnxruntime runs nodes in list order where it can: reductions right after the producer
        # let the activation be freed at once, instead of every activation of the batch living
        # until the end
        after = self.after
        view.nodes = after.get(None, []) + [n for node in view.nodes for n in (node, *after.get(id(node), []))]
        wanted = {t.name: t for t in self.outputs}
        existing = {t.name for t in view.outputs}
        view.outputs += [t for name, t in wanted.items() if name not in existing]
        self.fetch = list(wanted)
        # while the reader decodes the next batch, spinning idle threads would take its core; with
        # nothing to decode, spinning saves the wake-up of every run (512 samples from an .npy: 2.9 s -> 2.3 s)
        self.session = runtime.graph_session(view, memory_pattern=False, spinning=not shares_cpu)

    def observe(self, feed: dict[str, np.ndarray]) -> None:
        values = dict(zip(self.fetch, self.session.run(self.fetch, feed)))
        for name, tap in self.taps.items():
            estimator = self.estimators[name]
            if tap.whole is not None:
                estimator.update(statistics_of(values[tap.whole], estimator.needs))
            else:
                estimator.update(_statistics(tap, values))
        for name, (output, axis) in self.means.items():
            per_sample = _channel_means_per_sample(values[output], axis)
            self.mean_sums[name] = self.mean_sums.get(name, 0.0) + per_sample.sum(axis=0, dtype=np.float64)
            self.mean_counts[name] = self.mean_counts.get(name, 0) + per_sample.shape[0]

    def channel_means(self) -> dict[str, np.ndarray]:
        return {name: self.mean_sums[name] / self.mean_counts[name] for name in self.mean_sums}

    def _tap(self, tensor: gs.Tensor, needs: frozenset[str]) -> _Tap:
        known = tensor.shape is not None and len(tensor.shape) >= 2
        static = known and all(isinstance(d, int) for d in tensor.shape[1:])
        if not known or (needs & {VALUES, MOMENTS} and not static):   # they need the values per sample
            self.outputs.append(tensor)
            return _Tap(whole=tensor.name)
        nodes: list[gs.Node] = []
        tap = _Tap()
        if not _non_negative(tensor):
            nodes.append(_reduction(self.view, "ReduceMin", tensor, f"{tensor.name}/sample_min"))
            tap.minimum = nodes[-1].outputs[0].name
        source = tensor
        if len(tensor.shape) >= 3:   # onnxruntime pools in its blocked layout; ReduceMax would first reorder
            source = gs.Variable(f"{tensor.name}/channel_max", dtype=np.float32)
            nodes.append(gs.Node("GlobalMaxPool", source.name, inputs=[tensor], outputs=[source]))
        nodes.append(_reduction(self.view, "ReduceMax", source, f"{tensor.name}/sample_max",
                                list(range(1, len(tensor.shape)))))
        tap.maximum = nodes[-1].outputs[0].name
        if MOMENTS in needs:
            moments = [_reduction(self.view, op, tensor, f"{tensor.name}/sample_{op[6:].lower()}")
                       for op in ("ReduceSum", "ReduceSumSquare", "ReduceL1")]
            nodes += moments
            tap.moments = tuple(node.outputs[0].name for node in moments)
        tap.size = math.prod(tensor.shape[1:]) if static else 0
        if VALUES in needs:
            sampled, tap.values = _even_subsample(tensor, tap.size)
            nodes += sampled
        self.outputs += [node.outputs[0] for node in nodes if node.outputs[0].name in _names(tap)]
        self._run_after(tensor, nodes)
        if tap.values == tensor.name:
            self.outputs.append(tensor)
        return tap

    def _run_after(self, tensor: gs.Tensor, nodes: list[gs.Node]) -> None:
        """Schedule ``nodes`` (which read ``tensor``) right after its producer."""
        producer = ir.producer(tensor)
        key = id(producer) if producer is not None else None
        self.after[key] = nodes + self.after.get(key, [])

    def _channel_mean(self, tensor: gs.Tensor, axis: int) -> tuple[str, int]:
        """The output that holds each sample's channel means (or more), and the axis of its channels."""
        if tensor.shape is None or len(tensor.shape) <= 2:
            self.outputs.append(tensor)
            return tensor.name, axis
        rank = len(tensor.shape)
        if axis % rank == 1:
            out = gs.Variable(f"{tensor.name}/channel_mean", dtype=np.float32)
            node = gs.Node("GlobalAveragePool", out.name, inputs=[tensor], outputs=[out])
        else:
            axes = [a for a in range(1, rank) if a != axis % rank]
            node = _reduction(self.view, "ReduceMean", tensor, f"{tensor.name}/channel_mean", axes)
        self._run_after(tensor, [node])
        self.outputs.append(node.outputs[0])
        return node.outputs[0].name, 1


def _channel_means_per_sample(array: np.ndarray, axis: int) -> np.ndarray:
    """``(samples, channels)``: each sample's mean over every axis but ``axis``."""
    moved = np.moveaxis(array, axis, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1).mean(axis=2, dtype=np.float64)


def _names(tap: _Tap) -> set[str]:
    return {tap.minimum, tap.maximum, tap.values, *(tap.moments or ())} - {None}


def _statistics(tap: _Tap, values: dict[str, np.ndarray]) -> BatchStatistics:
    sample_max = values[tap.maximum]
    # a non-negative tensor's minimum is irrelevant: every range is widened to contain 0
    sample_min = values[tap.minimum] if tap.minimum is not None else np.zeros_like(sample_max)
    stats = BatchStatistics(sample_min, sample_max, tap.size)
    if tap.moments is not None:
        stats.sum, stats.sum_squares, stats.sum_magnitudes = (float(values[m].sum(dtype=np.float64))
                                                              for m in tap.moments)
    if tap.values is not None:
        stats.values = values[tap.values]
    return stats


def _even_subsample(tensor: gs.Tensor, size: int) -> tuple[list[gs.Node], str]:
    """Nodes that take every ``stride``-th value of each flattened sample, at most HISTOGRAM_VALUES_PER_SAMPLE."""
    stride = _prime_at_least(math.ceil(size / HISTOGRAM_VALUES_PER_SAMPLE))
    if stride == 1:
        return [], tensor.name
    flat = gs.Variable(f"{tensor.name}/flat", dtype=np.float32)
    reshape = gs.Node("Reshape", flat.name, inputs=[tensor, gs.Constant(f"{flat.name}_shape", np.array([0, -1]))],
                      outputs=[flat])
    picked = gs.Variable(f"{tensor.name}/sampled", dtype=np.float32)
    constants = [gs.Constant(f"{picked.name}_{key}", np.array([value], np.int64))
                 for key, value in (("starts", 0), ("ends", size), ("axes", 1), ("steps", stride))]
    return [reshape, gs.Node("Slice", picked.name, inputs=[flat, *constants], outputs=[picked])], picked.name


def _prime_at_least(n: int) -> int:
    """1 for n <= 1, else the smallest prime >= n."""
    if n <= 1:
        return 1
    candidate = max(n, 2)
    while any(candidate % d == 0 for d in range(2, math.isqrt(candidate) + 1)):
        candidate += 1
    return candidate


def float_view(graph: gs.Graph, plan: QuantPlan) -> gs.Graph:
    """A copy of ``graph`` with every quantizer of ``plan`` bypassed: the float model, as placed."""
    view = graph.copy()
    tensors = view.tensors()
    by_name = {node.name: node for node in view.nodes}
    for point in plan.points.values():
        ir.replace_uses(by_name[point.nodes[-1]].outputs[0], tensors[point.tensor])
    view.cleanup(remove_unused_graph_inputs=False)
    return view


def _non_negative(tensor: gs.Tensor) -> bool:
    """Whether ``tensor`` is a Relu output or a Clip output with a constant lower bound >= 0."""
    producer = ir.producer(tensor)
    if producer is None:
        return False
    if producer.op == "Relu":
        return True
    if producer.op == "Clip" and len(producer.inputs) > 1 and producer.inputs[1].name:
        low = ir.constant_value(producer.inputs[1])
        return low is not None and float(low) >= 0.0
    return False


def _reduction(view: gs.Graph, op: str, tensor: gs.Tensor, name: str, axes: list[int] | None = None) -> gs.Node:
    """``op`` over ``axes`` (default: all but the sample axis) without keepdims.

    The axes became an input in opset 13 for ReduceSum, in opset 18 for the other reductions.
    """
    axes = axes if axes is not None else list(range(1, len(tensor.shape)))
    out = gs.Variable(name, dtype=np.float32)
    if view.opset >= (13 if op == "ReduceSum" else 18):
        axes_input = gs.Constant(f"{name}_axes", np.asarray(axes, np.int64))
        return gs.Node(op, name, {"keepdims": 0}, [tensor, axes_input], [out])
    return gs.Node(op, name, {"keepdims": 0, "axes": axes}, [tensor], [out])
