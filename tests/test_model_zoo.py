"""Real models: onnx's light model zoo quantized for every backend, and the pretrained models in ../shared.

RUN: qcompile <model> --backend <backend> --calib calib.npy --out OUT [--dump-dir D]
(calib.npy: a few seeded standard-normal samples). The compile runs the
Q/DQ model in onnxruntime against the float model for report.json; the test
runs the float model against the input model, once per distinct float
pipeline (the five backends that fold BN share one). The zoo compiles in
memory (CompileRequest.out=None: every output made and checked, none
written): VGG-19's models are 550 MB each, and that a written file holds its
graph byte for byte is tests/test_runtime.py's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from qcompiler import runtime
from qcompiler.cli import main
from qcompiler.config.loader import shipped_backends
from qcompiler.data.images import Preprocess, load_batch
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.measure.report import sqnr_db

LIGHT_ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mobilenetv2"
# onnx ships nine; the list is written out so that a zoo gone missing fails instead of running no case
LIGHT_MODELS = ["light_bvlc_alexnet.onnx", "light_densenet121.onnx", "light_inception_v1.onnx",
                "light_inception_v2.onnx", "light_resnet50.onnx", "light_shufflenet.onnx", "light_squeezenet.onnx",
                "light_vgg19.onnx", "light_zfnet512.onnx"]
CALIBRATION_SAMPLES = 2
FLOAT_PASSES = ("fold_bn",)
EMITTED = {"tensorrt": ["model.trt.onnx", "dynamic_range.json", "calibration.cache"], "snpe": ["model.encodings"],
           "fbgemm": ["model.int8.onnx", "torch_qparams.json"], "tvm": ["model.tvm.onnx"],
           "acl": ["model.acl.onnx", "scale_offset_record.txt"]}
TOLERANCE = 1e-4

IMAGENET = Preprocess(resize_shorter=256, crop=(224, 224), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
PPOCR = Preprocess(resize=(48, 192), scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def assert_matches(original, compiled, feeds):
    for expected, actual in zip(runtime.run(original, feeds), runtime.run(compiled, feeds)):
        assert runtime.relative_error(expected, actual) < TOLERANCE


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_zoo_model_quantizes_for_every_backend(name, tmp_path):
    path = LIGHT_ZOO / name
    reference = runtime.session(path)
    (data_input,) = reference.get_inputs()
    feeds = runtime.random_feeds(reference, seed=0)
    expected = runtime.run(reference, feeds)
    sample_shape = [d if isinstance(d, int) else 1 for d in data_input.shape][1:]
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(1).standard_normal([CALIBRATION_SAMPLES, *sample_shape]).astype(np.float32))
    float_pipelines_checked = set()
    for backend in shipped_backends():
        result = compile_model(CompileRequest(model=path, backend=backend, out=None, calib=str(calib)))
        assert result.ctx.plan.weights() and all(p.calibrated for p in result.ctx.plan.points.values())
        emitted = {name for entry in result.backend.emit for name in EMITTED[entry.name]}
        assert {"model.onnx", "model.qdq.onnx", "report.json", *emitted} <= set(result.files)
        report = json.loads(result.files["report.json"])
        assert report["calibration_samples"] == CALIBRATION_SAMPLES
        sqnr = [entry["sqnr_db"] for entry in report["outputs"] + report["layers"]]
        assert report["layers"] and all(value == "inf" or np.isfinite(value) for value in sqnr), sqnr  # "inf": exact
        float_pipeline = tuple(record.name for record in result.records[1:] if record.name in FLOAT_PASSES)
        if "fold_bn" in float_pipeline:
            assert "BatchNormalization" not in {n.op for n in result.float_graph.nodes}
        if float_pipeline not in float_pipelines_checked:
            for e, a in zip(expected, runtime.run(result.float_graph, feeds)):
                assert runtime.relative_error(e, a) < TOLERANCE, backend
            float_pipelines_checked.add(float_pipeline)
    assert len(float_pipelines_checked) == 2  # academic keeps its BN; the others fold it


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


def test_a_model_exported_with_a_fixed_batch_of_1_compiles_for_every_backend(capsys, tmp_path):
    """MobileNetV2 as torch.onnx exports it without dynamic_axes: [1, 3, 224, 224]. Nine photos would make an
    automatic batch of 2; calibration, report.json and eval all run at the batch of 1 the model fixes."""
    model = onnx.load(str(EXAMPLE / "mobilenetv2_bn.onnx"))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "mobilenetv2_b1.onnx"
    onnx.save(model, str(path))
    photos, preprocess = EXAMPLE / "photos", EXAMPLE / "preprocess.yaml"
    for backend in shipped_backends():
        out = tmp_path / backend
        code = main([str(path), "-b", backend, "-o", str(out), "--calib", str(photos), "--preprocess", str(preprocess)])
        printed, err = capsys.readouterr()
        assert code == 0 and err == "", err
        assert printed.splitlines()[-1].startswith(f"{backend}: 53 of 53 weighted ops quantized; end-to-end SQNR ")
        assert json.loads((out / "report.json").read_text())["calibration_samples"] == 9
    assert main(["eval", str(path), str(tmp_path / "tensorrt" / "model.qdq.onnx"), "--data", str(photos),
                 "--preprocess", str(preprocess)]) == 0
    printed, err = capsys.readouterr()
    assert err == "" and "(9 samples)" in printed


@pytest.mark.parametrize("backend, median_ratio", [("snpe", 0.6), ("tensorrt", 1.0)])
def test_bias_correction_on_mobilenetv2_shrinks_the_layer_shifts_and_raises_sqnr(backend, median_ratio, shared,
                                                                                 tmp_path):
    """With and without bias_correct, on held-out photos: each weighted layer's per-channel mean output shift
    against the float model (median ratio over the 53 layers: snpe 0.40, tensorrt 0.87 with 93 photos, see
    benchmarks/results/calibration_suite.md) and the logits' SQNR."""
    from qcompiler.data.sources import InputSpec, open_data
    from qcompiler.measure.evaluate import evaluate, mean_output_shifts

    path, photos = shared.model("mobilenetv2_bn.onnx"), shared.images(48)
    np.save(tmp_path / "calib.npy", load_batch(photos[0::2], IMAGENET))
    np.save(tmp_path / "held.npy", load_batch(photos[1::2], IMAGENET))
    results = {}
    for correct in (False, True):
        pipeline = "fold_bn, insert_quantizers, calibrate, share_scales" + (", bias_correct" if correct else "")
        out = tmp_path / str(correct)
        result = compile_model(CompileRequest(model=path, backend=backend, out=out, calib=str(tmp_path / "calib.npy"),
                                              overrides=[f"pipeline=[{pipeline}]"]))
        layers = sorted({n for p in result.ctx.plan.weights() for n in p.consumers})
        tensors = [n.outputs[0].name for n in result.graph.nodes if n.name in layers]
        float_model, quantized = onnx.load(out / "model.onnx"), onnx.load(out / "model.qdq.onnx")
        held = open_data(str(tmp_path / "held.npy"), InputSpec.of_model(float_model))
        results[correct] = (mean_output_shifts(float_model, quantized, tensors, held),
                            evaluate(float_model, quantized, held).outputs[0].sqnr_db)
    (before, sqnr_before), (after, sqnr_after) = results[False], results[True]
    ratios = [np.abs(after[t]).mean() / np.abs(before[t]).mean() for t in before]
    assert len(ratios) == 53 and np.median(ratios) < median_ratio
    assert sqnr_after > sqnr_before
