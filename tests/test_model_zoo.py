"""Real models: onnx's light model zoo for every backend, and the pretrained models in ../shared.

RUN: qcompile <model> --backend <backend> --out OUT [--dump-dir D]
and compare OUT/model.onnx with the input model in onnxruntime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from qcompiler import runtime
from qcompiler.cli import main
from qcompiler.config.loader import load_backend, shipped_backends
from qcompiler.data.images import Preprocess, load_batch
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.measure.report import sqnr_db

LIGHT_ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.name for p in LIGHT_ZOO.glob("light_*.onnx"))
TOLERANCE = 1e-4

IMAGENET = Preprocess(resize_shorter=256, crop=(224, 224), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
PPOCR = Preprocess(resize=(48, 192), scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def assert_matches(original, compiled, feeds):
    for expected, actual in zip(runtime.run(original, feeds), runtime.run(compiled, feeds)):
        assert runtime.relative_error(expected, actual) < TOLERANCE


def test_light_zoo_has_nine_models():
    assert len(LIGHT_MODELS) == 9


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_zoo_model_compiles_for_every_backend(name, tmp_path):
    path = LIGHT_ZOO / name
    reference = runtime.session(path)
    feeds = runtime.random_feeds(reference, seed=0)
    expected = runtime.run(reference, feeds)
    for backend in shipped_backends():
        out = tmp_path / backend
        float_passes = [e.name for e in load_backend(backend).pipeline if e.name == "fold_bn"]
        result = compile_model(CompileRequest(model=path, backend=backend, out=out,
                                              overrides=[f"pipeline={float_passes}"]))
        assert result.graph.opset >= 13
        compiled = onnx.load(str(out / "model.onnx"))
        if any(entry.name == "fold_bn" for entry in result.backend.pipeline):
            assert "BatchNormalization" not in {n.op_type for n in compiled.graph.node}
        for e, a in zip(expected, runtime.run(compiled, feeds)):
            assert runtime.relative_error(e, a) < TOLERANCE, backend
        (out / "model.onnx").unlink()  # the large ones would add up


@pytest.mark.parametrize("model_name, preprocess, input_name", [
    ("mobilenetv2_bn.onnx", IMAGENET, "input"),
    ("ppocr_cls_v2.onnx", PPOCR, "x"),
])
def test_pretrained_model_on_real_photos(model_name, preprocess, input_name, shared, tmp_path):
    """Folding keeps the float model exact; the TensorRT fake-quant model stays close to it."""
    path = shared.model(model_name)
    photos = shared.images(24)
    calib = tmp_path / "calib.npy"
    np.save(calib, load_batch(photos[:16], preprocess))
    out, dump = tmp_path / "out", tmp_path / "dump"
    assert main([str(path), "--backend", "tensorrt", "--out", str(out), "--dump-dir", str(dump),
                 "--calib", str(calib), "-q"]) == 0
    names = {p.name for p in dump.iterdir()}
    assert {"000_import.qir", "000_import.onnx", "001_fold_bn.qir", "001_fold_bn.onnx", "pipeline.txt"} <= names
    compiled = onnx.load(str(out / "model.onnx"))
    assert "BatchNormalization" not in {n.op_type for n in compiled.graph.node}
    feeds = {input_name: load_batch(photos[16:], preprocess)}
    assert_matches(path, out / "model.onnx", feeds)
    (expected,), (quantized,) = runtime.run(path, feeds), runtime.run(out / "model.qdq.onnx", feeds)
    assert sqnr_db(expected, quantized) > 12.0  # measured 14.6 dB (MobileNetV2), see benchmarks/
