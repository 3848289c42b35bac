"""SNPE / QNN files: model.encodings for ``--quantization_overrides``, beside the float model.onnx.

model.onnx (BN folded, tensor names kept) is what snpe-onnx-to-dlc /
qnn-onnx-converter read; model.encodings carries every activation AND
weight (param) encoding, keyed by those names, per channel as one entry per
channel. Layouts: "0.6.1" (default, the legacy one most converters accept),
"1.0.0" (lists with name/enc_type/bw/is_sym/scale[]/offset[]) and "2.0.0"
(ONNX-style y_scale/y_zero_point).
QNN convention: x = (q_u + offset) * scale on the UNSIGNED grid
q_u in [0, 2^bw - 1]: offset = -(zero point on that grid), so a signed
symmetric grid has offset -2^(bw-1); min = offset * scale,
max = (offset + 2^bw - 1) * scale.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qcompiler.emit.emitters import Compiled, Files
from qcompiler.quant.plan import QuantPoint


@dataclass(frozen=True)
class Options:
    encodings_version: Literal["0.6.1", "1.0.0", "2.0.0"] = "0.6.1"


def emit(compiled: Compiled, options: Options) -> Files:
    layout = LAYOUTS[options.encodings_version]
    return {"model.encodings": json.dumps(layout(compiled), indent=1) + "\n"}


@dataclass(frozen=True)
class Encoding:
    """One channel's (or the tensor's) encoding in QNN's unsigned-offset convention."""

    bitwidth: int
    symmetric: bool
    scale: float
    offset: int

    @property
    def min(self) -> float:
        return float(np.float32(self.offset * np.float64(self.scale)))

    @property
    def max(self) -> float:
        return float(np.float32((self.offset + 2 ** self.bitwidth - 1) * np.float64(self.scale)))


def encodings(point: QuantPoint) -> list[Encoding]:
    """``point``'s encodings, one per channel for a per-channel quantizer."""
    bits = point.spec.bits
    unsigned_shift = 2 ** (bits - 1) if point.grid.signed else 0
    scales = np.atleast_1d(point.scale).astype(np.float32)
    zero_points = np.broadcast_to(np.atleast_1d(point.zero_point).astype(np.int64), scales.shape)
    return [Encoding(bits, point.spec.symmetric, float(s), -int(z + unsigned_shift))
            for s, z in zip(scales, zero_points)]


def _v061_entry(encoding: Encoding) -> dict[str, Any]:
    return {"bitwidth": encoding.bitwidth, "dtype": "int", "is_symmetric": str(encoding.symmetric),
            "max": encoding.max, "min": encoding.min, "offset": encoding.offset, "scale": encoding.scale}


def _layout_061(compiled: Compiled) -> dict[str, Any]:
    plan = compiled.plan
    return {
        "version": "0.6.1",
        "activation_encodings": {p.tensor: [_v061_entry(e) for e in encodings(p)] for p in _sorted(plan.activations())},
        "param_encodings": {p.tensor: [_v061_entry(e) for e in encodings(p)] for p in _sorted(plan.weights())},
        "excluded_layers": [],
        "quantizer_args": _quantizer_args(compiled),
    }


def _v100_entry(point: QuantPoint) -> dict[str, Any]:
    found = encodings(point)
    return {"name": point.tensor, "dtype": "INT", "enc_type": "PER_CHANNEL" if point.axis is not None else "PER_TENSOR",
            "bw": point.spec.bits, "is_sym": point.spec.symmetric,
            "scale": [e.scale for e in found], "offset": [e.offset for e in found]}


def _layout_100(compiled: Compiled) -> dict[str, Any]:
    plan = compiled.plan
    return {
        "version": "1.0.0",
        "activation_encodings": [_v100_entry(p) for p in _sorted(plan.activations())],
        "param_encodings": [_v100_entry(p) for p in _sorted(plan.weights())],
        "excluded_layers": [],
        "quantizer_args": _quantizer_args(compiled),
    }


def _v200_entry(point: QuantPoint) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": point.tensor, "output_dtype": f"{'int' if point.grid.signed else 'uint'}{point.spec.bits}"}
    scale, zero_point = np.asarray(point.scale, np.float32), np.asarray(point.zero_point).astype(np.int64)
    entry["y_scale"] = [float(s) for s in scale] if scale.ndim else float(scale)
    entry["y_zero_point"] = [int(z) for z in zero_point] if zero_point.ndim else int(zero_point)
    if point.axis is not None:
        entry["axis"] = point.axis
    return entry


def _layout_200(compiled: Compiled) -> dict[str, Any]:
    points = _sorted(compiled.plan.activations()) + _sorted(compiled.plan.weights())
    return {"version": "2.0.0", "encodings": [_v200_entry(p) for p in points]}


def _quantizer_args(compiled: Compiled) -> dict[str, Any]:
    backend = compiled.backend
    weight, activation = backend.quantizers[backend.weights], backend.quantizers[backend.activations]
    return {"activation_bitwidth": activation.bits, "param_bitwidth": weight.bits, "dtype": "int",
            "is_symmetric": weight.symmetric and activation.symmetric,
            "per_channel_quantization": weight.granularity == "per_channel", "quant_scheme": "post_training_tf"}


def _sorted(points: list[QuantPoint]) -> list[QuantPoint]:
    return sorted(points, key=lambda p: p.tensor)


LAYOUTS = {"0.6.1": _layout_061, "1.0.0": _layout_100, "2.0.0": _layout_200}
