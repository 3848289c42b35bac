"""Set every quantizer's scale and zero point from data (activations) or values (weights).

Before: DQ(Q(x, 1, 0))                  placeholder parameters from insert_quantizers
After:  DQ(Q(x, s_x, z_x))              s, z from the range estimate and the spec (qmath)
Activations: the float graph (every quantizer bypassed) runs once over the
calibration data in onnxruntime, batch by batch; an estimator per tensor
keeps running statistics (minmax, mean_max, percentile), never the
activations themselves, so memory does not grow with the number of samples.
Estimators that need only each sample's min and max get them from
ReduceMin/ReduceMax nodes added to that graph, so the activations never
leave onnxruntime. Weights: minmax over each
initializer, per channel where the spec says so. Ranges are widened to
contain 0; degenerate ranges get a finite, non-zero scale.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler import ir, runtime
from qcompiler.calib_data import CalibrationData, Feed
from qcompiler.errors import QCompileError, UsageError
from qcompiler.estimators import Estimator, make_estimator, weight_range
from qcompiler.pass_base import Pass, PassContext, PassResult, Property
from qcompiler.passes.insert_quantizers import QUANTIZERS_PLACED
from qcompiler.quant_plan import QuantPlan, write_qparams

# An "auto" calibration batch holds about this much input. Small batches keep
# a batch's activations in cache: the MobileNetV2 observer (224x224 input,
# 0.6 MB a sample, so batch 2) takes 0.37 s over 93 photos at batch 2 against
# 0.55 s at batch 16. Small inputs get larger batches, which share each run's
# fixed cost: the PaddleOCR classifier (48x192, 0.11 MB, batch 13) is
# fastest at batch 8-16 and 2x slower at batch 1.
AUTO_BATCH_INPUT_BYTES = 1_500_000
AUTO_BATCH_MAX = 16


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
        tensors = graph.tensors()
        for point in ctx.plan.weights():
            point.set_range(*weight_range(ir.constant_value(tensors[point.tensor]), point.axis))
        for point in ctx.plan.points.values():
            write_qparams(tensors, point)
        return PassResult(changed=True, stats={"samples": samples, "activation_points": len(ctx.plan.activations()),
                                               "weight_points": len(ctx.plan.weights())})

    def _calibrate_activations(self, graph: gs.Graph, ctx: PassContext) -> int:
        points = ctx.plan.activations()
        if not points:
            return 0
        config = ctx.backend.calibration
        estimators = {p.tensor: make_estimator(config.activations) for p in points}
        data = ctx.calibration_data
        observer = Observer(graph, ctx.plan, estimators, shares_cpu=data.decodes)
        if config.batch_size != "auto" and config.batch_size < 1:
            raise UsageError(f"calibration.batch_size is {config.batch_size}; give a positive number or auto")
        batch_size = config.batch_size if config.batch_size != "auto" else auto_batch_size(data)
        total = math.ceil(data.count / batch_size) if data.count else None
        samples = 0
        for feed in ctx.progress(read_ahead(data.batches(batch_size)), total, "calibrate"):
            observer.observe(feed)
            samples += len(next(iter(feed.values())))
        if samples == 0:
            raise QCompileError("the calibration data holds no samples")
        for point in points:
            point.set_range(*estimators[point.tensor].range())
        return samples


def auto_batch_size(data: CalibrationData) -> int:
    """Samples per calibration batch: about AUTO_BATCH_INPUT_BYTES of input, at most AUTO_BATCH_MAX."""
    sample = data.head(1)
    sample_bytes = sum(array.nbytes for array in sample.values())
    return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_INPUT_BYTES // max(sample_bytes, 1)))


def read_ahead(batches: Iterator[Feed]) -> Iterator[Feed]:
    """``batches``, each one read in a worker thread while the caller works on the one before.

    Image decoding and onnxruntime both release the GIL, so reading overlaps
    observing (MobileNetV2, 93 photos: 0.85 s -> 0.65 s). The source is
    advanced from that one thread, one batch at a time, so a module:function
    generator needs no locking.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="calibration-reader") as reader:
        pending = reader.submit(next, batches, None)
        while (feed := pending.result()) is not None:
            pending = reader.submit(next, batches, None)
            yield feed


class Observer:
    """The float graph, every quantizer bypassed, that feeds each activation's estimator.

    For an estimator that needs only per-sample extrema, ReduceMin/ReduceMax
    run inside onnxruntime and only N numbers per tensor come back; the
    others receive the whole tensor.
    """

    def __init__(self, graph: gs.Graph, plan: QuantPlan, estimators: dict[str, Estimator], shares_cpu: bool = False):
        view = _bypass_quantizers(graph, plan)
        tensors = view.tensors()
        self.extrema: dict[str, tuple[str | None, str]] = {}
        self.whole: list[str] = []
        outputs: list[gs.Tensor] = []
        for name, estimator in estimators.items():
            tensor = tensors[name]
            if estimator.uses_sample_extrema and tensor.shape is not None and len(tensor.shape) >= 2:
                reductions = _add_sample_reductions(view, tensor, with_min=not _non_negative(tensor))
                self.extrema[name] = (reductions[0].name if len(reductions) == 2 else None, reductions[-1].name)
                outputs += reductions
            else:
                self.whole.append(name)
                outputs.append(tensor)
        existing = {t.name for t in view.outputs}
        view.outputs += [t for t in outputs if t.name not in existing]
        self.fetch = [t.name for t in outputs]
        self.estimators = estimators
        # while the reader decodes the next batch, spinning idle threads would take its core; with
        # nothing to decode, spinning saves the wake-up of every run (512 samples from an .npy: 2.9 s -> 2.3 s)
        self.session = runtime.session(ir.to_model(view), memory_pattern=False, spinning=not shares_cpu)

    def observe(self, feed: dict[str, np.ndarray]) -> None:
        values = dict(zip(self.fetch, self.session.run(self.fetch, feed)))
        for name in self.whole:
            self.estimators[name].update(values[name])
        for name, (low, high) in self.extrema.items():
            # a non-negative tensor's minimum is irrelevant: every range is widened to contain 0
            sample_min = values[low] if low is not None else np.zeros_like(values[high])
            self.estimators[name].update_extrema(sample_min, values[high])


def _bypass_quantizers(graph: gs.Graph, plan: QuantPlan) -> gs.Graph:
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


def _add_sample_reductions(view: gs.Graph, tensor: gs.Tensor, with_min: bool) -> list[gs.Variable]:
    """Per-sample ReduceMin (if ``with_min``) and max of ``tensor``, placed right after its producer.

    The max of a tensor with spatial dims goes through GlobalMaxPool first:
    onnxruntime runs that in its blocked (NCHWc) layout, where a plain
    ReduceMax would first reorder the whole activation back to NCHW
    (MobileNetV2 observer: 1.75x -> 1.45x a float pass).
    """
    axes = list(range(1, len(tensor.shape)))
    nodes: list[gs.Node] = []
    if with_min:
        nodes.append(_reduction(view, "ReduceMin", tensor, f"{tensor.name}/sample_min", axes))
    source = tensor
    if len(tensor.shape) >= 3:
        source = gs.Variable(f"{tensor.name}/channel_max", dtype=np.float32)
        nodes.append(gs.Node("GlobalMaxPool", source.name, inputs=[tensor], outputs=[source]))
    nodes.append(_reduction(view, "ReduceMax", source, f"{tensor.name}/sample_max", axes))
    # onnxruntime runs nodes in list order where it can: reductions right
    # after the producer let the activation be freed at once, instead of
    # every activation of the batch living until the end
    producer = tensor.inputs[0] if tensor.inputs else None
    position = view.nodes.index(producer) + 1 if producer is not None else 0
    view.nodes[position:position] = nodes
    return [node.outputs[0] for node in nodes if node.op.startswith("Reduce")]


def _reduction(view: gs.Graph, op: str, tensor: gs.Tensor, name: str, axes: list[int]) -> gs.Node:
    """``op`` over ``axes`` without keepdims; axes moved from attribute to input in opset 18."""
    out = gs.Variable(name, dtype=np.float32, shape=[tensor.shape[0]] if tensor.shape else None)
    if view.opset >= 18:
        axes_input = gs.Constant(f"{name}_axes", np.asarray(axes, np.int64))
        return gs.Node(op, name, {"keepdims": 0}, [tensor, axes_input], [out])
    return gs.Node(op, name, {"keepdims": 0, "axes": axes}, [tensor], [out])
