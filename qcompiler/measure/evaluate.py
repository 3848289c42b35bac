"""Compare a quantized model with its float self on data: ``qcompile eval``.

Without labels, fidelity is agreement with the float model: for classifier
outputs ([N, C] logits) top-1 agreement (the same arg-max) and top-5
agreement (the float top-1 is among the quantized top 5); for every output
the SQNR in dB over all samples. Both models stream over the same batches;
only running sums are kept.

The quantized model runs as the ONNX spec defines Q/DQ (float math on the
integer grid), the arithmetic every backend's integer kernels reproduce;
``onnxruntime_kernels=True`` runs it the way onnxruntime's CPU provider
deploys it instead, Q/DQ fused into its own integer kernels, whose x86
rounding and saturation are onnxruntime's, not the backend's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qcompiler import runtime
from qcompiler.data.sources import CalibrationData
from qcompiler.measure.report import Energies


@dataclass
class OutputAgreement:
    name: str
    samples: int = 0
    energies: Energies = field(default_factory=Energies)
    top1: int = 0
    top5: int = 0
    classifier: bool = False

    def update(self, reference: np.ndarray, quantized: np.ndarray) -> None:
        self.energies.add(reference, quantized)
        self.samples += len(reference)
        if reference.ndim == 2 and reference.shape[1] >= 2:
            self.classifier = True
            expected = reference.argmax(axis=1)
            self.top1 += int(np.sum(expected == quantized.argmax(axis=1)))
            k = min(5, reference.shape[1])
            top_k = np.argsort(-quantized, axis=1, kind="stable")[:, :k]
            self.top5 += int(np.sum((top_k == expected[:, None]).any(axis=1)))

    @property
    def sqnr_db(self) -> float:
        return self.energies.sqnr_db

    def summary(self) -> str:
        text = f"{self.name}: SQNR {self.sqnr_db:.2f} dB"
        if self.classifier:
            text += (f", top-1 agreement {100 * self.top1 / self.samples:.1f}%, "
                     f"top-5 agreement {100 * self.top5 / self.samples:.1f}%")
        return text + f" ({self.samples} samples)"


@dataclass
class Agreement:
    outputs: list[OutputAgreement] = field(default_factory=list)


def evaluate(float_model: onnx.ModelProto | Path, quant_model: onnx.ModelProto | Path, data: CalibrationData,
             batch_size: int = 16, onnxruntime_kernels: bool = False) -> Agreement:
    # the same session settings for both, so that a model compared with itself agrees exactly
    reference = runtime.session(float_model, fuse_qdq=onnxruntime_kernels)
    quantized = runtime.session(quant_model, fuse_qdq=onnxruntime_kernels)
    for what in ("inputs", "outputs"):
        ours, theirs = ([v.name for v in getattr(session, f"get_{what}")()] for session in (reference, quantized))
        if sorted(ours) != sorted(theirs):
            raise ValueError(f"the models' {what} differ: {ours} vs {theirs}; give the quantized model compiled "
                             "from this float one")
    names = [o.name for o in reference.get_outputs()]
    result = Agreement([OutputAgreement(name) for name in names])
    for feed in data.batches(batch_size):
        for meter, r, q in zip(result.outputs, reference.run(names, feed), quantized.run(names, feed)):
            meter.update(r, q)
    return result


def mean_output_shifts(float_model: onnx.ModelProto, quant_model: onnx.ModelProto, tensors: list[str],
                       data: CalibrationData, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per tensor (``[N, C, ...]``, named alike in both models), the per-channel mean of quantized minus float
    over ``data``: the shift that bias correction removes."""
    reference = runtime.session(runtime.with_outputs(float_model, tensors), fuse_qdq=False)
    quantized = runtime.session(runtime.with_outputs(quant_model, tensors), fuse_qdq=False)
    sums: dict[str, np.ndarray] = {}
    count = 0
    for feed in data.batches(batch_size):
        for name, r, q in zip(tensors, reference.run(tensors, feed), quantized.run(tensors, feed)):
            difference = (q.astype(np.float64) - r).reshape(len(r), r.shape[1], -1).mean(axis=2).sum(axis=0)
            sums[name] = sums.get(name, 0.0) + difference
        count += len(next(iter(feed.values())))
    return {name: total / count for name, total in sums.items()}
