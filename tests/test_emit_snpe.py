"""SNPE/QNN model.encodings: every activation and weight, in each layout, agrees with qparams.json.

RUN: qcompile mobilenetv2_bn.onnx --backend snpe --calib photos.npy --out OUT [--encodings-version V]
Then OUT/model.encodings names tensors and initializers of OUT/model.onnx,
and its min, max, scale and offset follow QNN's unsigned-offset convention.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from qcompiler.cli import main


@pytest.fixture(scope="module")
def out(mobilenet_compiled):
    return mobilenet_compiled("snpe")


@pytest.fixture(scope="module")
def qparams(out):
    return {q["tensor"]: q for q in json.loads((out / "qparams.json").read_text())["quantizers"]}


def _expected(q: dict) -> list[tuple[float, int, float, float]]:
    """(scale, offset, min, max) per channel, from a qparams.json entry."""
    scales, zero_points = np.atleast_1d(q["scale"]), np.atleast_1d(q["zero_point"])
    shift = 2 ** (q["bits"] - 1) if q["signed"] else 0
    rows = []
    for scale, zero_point in zip(scales, np.broadcast_to(zero_points, scales.shape)):
        offset = -(int(zero_point) + shift)
        rows.append((float(scale), offset, offset * scale, (offset + 2 ** q["bits"] - 1) * scale))
    return rows


def test_encodings_061_agree_with_qparams_for_every_tensor(out, qparams):
    encodings = json.loads((out / "model.encodings").read_text())
    assert encodings["version"] == "0.6.1"
    model = onnx.load(str(out / "model.onnx"))
    tensors = {t for n in model.graph.node for t in [*n.input, *n.output]}
    initializers = {i.name for i in model.graph.initializer}
    assert set(encodings["activation_encodings"]) <= tensors
    assert set(encodings["param_encodings"]) <= initializers
    listed = {**encodings["activation_encodings"], **encodings["param_encodings"]}
    assert set(listed) == set(qparams)
    assert encodings["param_encodings"]  # weights are there too
    for name, entries in listed.items():
        expected = _expected(qparams[name])
        assert len(entries) == len(expected)
        for entry, (scale, offset, low, high) in zip(entries, expected):
            assert entry["scale"] == scale and entry["offset"] == offset and entry["offset"] <= 0
            assert entry["min"] == pytest.approx(low, rel=1e-6) and entry["max"] == pytest.approx(high, rel=1e-6)
            assert entry["is_symmetric"] == str(qparams[name]["symmetric"]) and entry["bitwidth"] == 8


def test_signed_symmetric_weights_have_offset_minus_128(mobilenet_photos, shared, tmp_path):
    calib, _ = mobilenet_photos
    out = tmp_path / "out"
    assert main([str(shared.model("mobilenetv2_bn.onnx")), "-b", "snpe", "-o", str(out), "--calib", str(calib), "-q",
                 "--set", "quantizers.weight.signedness=signed", "--set", "quantizers.weight.symmetric=true",
                 "--encodings-version", "1.0.0"]) == 0
    encodings = json.loads((out / "model.encodings").read_text())
    assert encodings["version"] == "1.0.0"
    for entry in encodings["param_encodings"]:
        assert entry["is_sym"] is True and set(entry["offset"]) == {-128}
    qparams = {q["tensor"]: q for q in json.loads((out / "qparams.json").read_text())["quantizers"]}
    for entry in encodings["activation_encodings"] + encodings["param_encodings"]:
        expected = _expected(qparams[entry["name"]])
        assert entry["scale"] == [e[0] for e in expected] and entry["offset"] == [e[1] for e in expected]


def test_encodings_200_are_onnx_style_scale_and_zero_point(mobilenet_photos, shared, tmp_path):
    calib, _ = mobilenet_photos
    out = tmp_path / "out"
    assert main([str(shared.model("mobilenetv2_bn.onnx")), "-b", "snpe", "-o", str(out), "--calib", str(calib), "-q",
                 "--encodings-version", "2.0.0"]) == 0
    encodings = json.loads((out / "model.encodings").read_text())
    qparams = {q["tensor"]: q for q in json.loads((out / "qparams.json").read_text())["quantizers"]}
    assert encodings["version"] == "2.0.0" and len(encodings["encodings"]) == len(qparams)
    for entry in encodings["encodings"]:
        q = qparams[entry["name"]]
        assert entry["y_scale"] == q["scale"] and entry["y_zero_point"] == q["zero_point"]
        assert entry["output_dtype"] == "uint8"


def test_a_flag_no_emitter_reads_is_a_usage_error(mobilenet_photos, shared, tmp_path, capsys):
    calib, _ = mobilenet_photos
    code = main([str(shared.model("mobilenetv2_bn.onnx")), "-b", "tensorrt", "-o", str(tmp_path / "o"),
                 "--calib", str(calib), "--encodings-version", "1.0.0"])
    assert code == 2 and "none of which reads --encodings-version" in capsys.readouterr().err
