"""What a compile tells its user: qparams.json, report.json, and the eval metrics.

qparams.json lists every quantizer (tensor, scale(s), zero point(s), bits,
grid, axis, symmetry, estimator, scale group). report.json adds the
calibrated ranges, per weighted layer the SQNR of its output against float
on a few calibration samples, and the end-to-end SQNR of every output.
SQNR = 10 log10(sum(y^2) / sum((y - y_q)^2)), in dB; "inf" when exact.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler import runtime
from qcompiler.quant.integer_weights import integer_weights
from qcompiler.quant.plan import QuantPlan, QuantPoint

FORMAT = "qcompiler.qparams/1"


@dataclass
class Energies:
    """Running sums of a float tensor's energy and of its quantization error's, over samples."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, reference: np.ndarray, actual: np.ndarray) -> None:
        reference = np.asarray(reference, np.float32).ravel()
        difference = reference - np.asarray(actual, np.float32).ravel()
        self.signal += _energy(reference)
        self.noise += _energy(difference)

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        return 10.0 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf


def _energy(values: np.ndarray) -> float:
    """sum(values**2) of a float32 vector: one dot product, scaled by its largest magnitude if that overflows.

    onnx's light VGG-19 has activations whose energy overflows float32
    ("overflow encountered in dot", and an SQNR of nan); casting every tensor
    to float64 instead would copy each at twice its size.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        energy = float(np.dot(values, values))
    if math.isfinite(energy):
        return energy
    peak = max(float(values.max()), -float(values.min()))
    scaled = values / np.float32(peak)
    return float(np.dot(scaled, scaled)) * peak * peak


def sqnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    energies = Energies()
    energies.add(reference, actual)
    return energies.sqnr_db


def qparams_json(plan: QuantPlan, backend: str) -> str:
    entries = [_qparams_entry(plan.points[name]) for name in sorted(plan.points)]
    return to_json({"format": FORMAT, "backend": backend, "quantizers": entries})


def _qparams_entry(p: QuantPoint) -> dict[str, Any]:
    return {
        "tensor": p.tensor, "kind": p.kind,
        "scale": _plain(p.scale), "zero_point": _plain(p.zero_point),
        "bits": p.spec.bits, "signed": p.grid.signed, "qmin": p.grid.qmin, "qmax": p.grid.qmax,
        "axis": p.axis, "symmetric": p.spec.symmetric, "narrow_range": p.spec.narrow_range,
        "reduce_range": p.spec.reduce_range, "scale_form": p.spec.scale,
        "estimator": p.estimator.estimator, "scale_group": p.scale_group, "consumers": sorted(p.consumers),
    }


def layer_outputs(graph: gs.Graph, plan: QuantPlan) -> list[tuple[str, str, str]]:
    """(node, op, output tensor) of every node whose weight is quantized, in graph order."""
    weighted = {c for p in plan.weights() for c in p.consumers}
    return [(n.name, n.op, n.outputs[0].name) for n in graph.nodes if n.name in weighted]


def make_report(backend: str, plan: QuantPlan, float_graph: gs.Graph, quant_graph: gs.Graph,
                layers: Sequence[tuple[str, str, str]], feed: dict[str, np.ndarray], samples: int,
                warnings: Sequence[str] = ()) -> dict[str, Any]:
    """report.json's content: the SQNR of every output and weighted layer on ``feed``, ranges, warnings."""
    outputs = [o.name for o in float_graph.outputs]
    fetch = outputs + [out for _, _, out in layers if out not in outputs]
    energies = _energies(float_graph, integer_weights(quant_graph, plan), fetch, feed)
    report = {
        "format": "qcompiler.report/1",
        "backend": backend,
        "calibration_samples": samples,
        "report_samples": int(len(next(iter(feed.values())))),
        "outputs": [{"name": name, "sqnr_db": rounded_db(energies[name].sqnr_db)} for name in outputs],
        "layers": [{"node": node, "op": op, "output": out, "sqnr_db": rounded_db(energies[out].sqnr_db)}
                   for node, op, out in layers],
        "quant_points": [{"tensor": p.tensor, "kind": p.kind, "range": [_plain(np.min(p.lo)), _plain(np.max(p.hi))],
                          "reason": p.reason} for p in (plan.points[k] for k in sorted(plan.points))],
        "warnings": list(warnings),
    }
    if plan.fallback is not None:
        report["layer_fallback"] = plan.fallback
    return report


def _energies(float_graph: gs.Graph, quant_graph: gs.Graph, names: list[str],
              feed: dict[str, np.ndarray]) -> dict[str, Energies]:
    """Each tensor of ``names`` in both models, compared over the samples of ``feed``, one sample a run.

    Two ways to hold memory down, whichever holds less: a model whose
    weights outweigh the report samples' tensors (VGG-19: 550 MB against
    240 MB) runs the float session first, keeps those tensors and drops it
    before the quantized session is made (peak 2.1 -> 1.8 GB); the others
    keep both sessions and one sample's tensors (MobileNetV2: 251 MB against
    315 MB the other way). The quantized model runs as the ONNX spec
    defines Q/DQ, not in onnxruntime's integer kernels, with its weights as
    the integers their QuantizeLinear gives (the same values): onnxruntime
    then holds a quarter of their bytes and folds only their DequantizeLinear.
    """
    options = dict(memory_pattern=False, arena=False)
    samples = [{name: values[index:index + 1] for name, values in feed.items()}
               for index in range(len(next(iter(feed.values()))))]
    reference = runtime.graph_session(float_graph, names, **options)
    outputs_first = _tensor_bytes(float_graph, names) * len(samples) < _weight_bytes(float_graph)
    expected = [reference.run(names, sample) for sample in samples] if outputs_first else None
    if outputs_first:
        del reference
    quantized = runtime.graph_session(quant_graph, names, fuse_qdq=False, **options)
    energies = {name: Energies() for name in names}
    for index, sample in enumerate(samples):
        references = expected[index] if outputs_first else reference.run(names, sample)
        for name, r, q in zip(names, references, quantized.run(names, sample)):
            energies[name].add(r, q)
    return energies


def _tensor_bytes(graph: gs.Graph, names: list[str]) -> float:
    """The bytes of one sample's ``names`` from their inferred shapes (inf when one is unknown)."""
    tensors = graph.tensors()
    total = 0.0
    for name in names:
        tensor = tensors.get(name)
        if tensor is None or tensor.shape is None or tensor.dtype is None:
            return math.inf
        dims = [d if isinstance(d, int) else 1 for d in tensor.shape[1:]]
        total += float(np.prod(dims)) * np.dtype(tensor.dtype).itemsize
    return total


def _weight_bytes(graph: gs.Graph) -> int:
    return sum(t.values.nbytes for t in graph.tensors().values() if isinstance(t, gs.Constant))


def rounded_db(value: float) -> float | str:
    """A dB value for JSON: three decimals, or "inf" / "-inf"."""
    if math.isfinite(value):
        return round(value, 3)
    return "inf" if value > 0 else "-inf"


def _plain(values: Any) -> Any:
    array = np.asarray(values)
    if array.dtype.kind == "f":
        converted = [float(v) for v in array.astype(np.float32).reshape(-1)]
    else:
        converted = [int(v) for v in array.reshape(-1)]
    return converted[0] if array.ndim == 0 else converted


def to_json(data: Any) -> str:
    """The JSON text of qparams.json and report.json (indented, no NaN)."""
    return json.dumps(data, indent=1, allow_nan=False) + "\n"
