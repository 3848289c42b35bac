"""qcompile eval and the image preprocessing flags."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from PIL import Image

from qcompiler import runtime
from qcompiler.cli import build_eval_parser, main, preprocess_from
from qcompiler.data.images import Preprocess
from qcompiler.data.sources import InputSpec, open_data
from qcompiler.errors import UsageError
from qcompiler.measure.evaluate import evaluate
from qcompiler.measure.report import sqnr_db
from qcompiler.testing.models import TEST_MODELS


def test_eval_reports_agreement_and_sqnr(tmp_path, capsys):
    _compiled(TEST_MODELS["gemm_head"](), np.random.default_rng(0).standard_normal((20, 32, 4, 4)), "fbgemm", tmp_path)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "float.onnx"), str(tmp_path / "float.onnx"), "--data",
                 str(tmp_path / "data.npy")]) == 0
    assert capsys.readouterr().out == "fc3: SQNR inf dB, top-1 agreement 100.0%, top-5 agreement 100.0% (20 samples)\n"
    assert main(["eval", str(tmp_path / "float.onnx"), str(tmp_path / "out" / "model.qdq.onnx"), "--data",
                 str(tmp_path / "data.npy"), "--data-size", "10"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("fc3: SQNR ") and line.endswith("(10 samples)\n")
    assert float(line.split()[2]) > 20


def test_eval_runs_qdq_as_the_spec_defines_it_unless_told(tmp_path):
    model = TEST_MODELS["mobilenetv2_inverted_residual"]()
    data = np.random.default_rng(1).standard_normal((8, 16, 8, 8)).astype(np.float32)
    _compiled(model, data, "tensorrt", tmp_path)
    quant = onnx.load(str(tmp_path / "out" / "model.qdq.onnx"))
    source = open_data(str(tmp_path / "data.npy"), InputSpec.of_model(model), None, None)
    (expected,) = runtime.session(model, optimize=False).run(None, {"x": data})
    (actual,) = runtime.session(quant, optimize=False).run(None, {"x": data})
    (spec,) = evaluate(model, quant, source).outputs
    assert spec.sqnr_db == pytest.approx(sqnr_db(expected, actual), abs=1e-3)
    (fused,) = evaluate(model, quant, source, onnxruntime_kernels=True).outputs
    assert fused.samples == 8 and math.isfinite(fused.sqnr_db)


def _compiled(model: onnx.ModelProto, data: np.ndarray, backend: str, tmp_path) -> None:
    """``model`` saved as float.onnx and ``data`` as data.npy in ``tmp_path``, compiled for ``backend`` into out/."""
    onnx.save(model, str(tmp_path / "float.onnx"))
    np.save(tmp_path / "data.npy", data.astype(np.float32))
    assert main([str(tmp_path / "float.onnx"), "-b", backend, "-o", str(tmp_path / "out"),
                 "--calib", str(tmp_path / "data.npy"), "-q"]) == 0

def test_eval_errors_are_one_line(tmp_path, capsys):
    onnx.save(TEST_MODELS["gemm_head"](), str(tmp_path / "float.onnx"))
    assert main(["eval", str(tmp_path / "float.onnx"), str(tmp_path / "float.onnx")]) == 2
    assert "give the data to compare on" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "float.onnx"), str(tmp_path / "nope.onnx"), "--data", "x.npy"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_preprocess_flags_over_a_yaml_file(tmp_path):
    (tmp_path / "pre.yaml").write_text("resize_shorter: 256\ncrop: [224, 224]\nmean: [1, 2, 3]\n")
    args = build_eval_parser().parse_args(["f.onnx", "q.onnx", "--preprocess", str(tmp_path / "pre.yaml"),
                                           "--std", "2,2,2", "--bgr"])
    assert preprocess_from(args) == Preprocess(resize_shorter=256, crop=(224, 224), mean=(1.0, 2.0, 3.0),
                                               std=(2.0, 2.0, 2.0), channels="BGR")
    assert preprocess_from(build_eval_parser().parse_args(["f.onnx", "q.onnx"])) is None
    (tmp_path / "bad.yaml").write_text("resize_shortr: 256\n")
    with pytest.raises(UsageError, match="preprocess: resize_shortr: unknown key"):
        preprocess_from(build_eval_parser().parse_args(["f", "q", "--preprocess", str(tmp_path / "bad.yaml")]))
    with pytest.raises(UsageError, match="'224' is not HxW"):
        build_eval_parser().parse_args(["f", "q", "--crop", "224"])


def test_images_are_resized_cropped_and_normalized(tmp_path):
    from qcompiler.data.images import load_image

    pixels = np.zeros((300, 400, 3), np.uint8)
    pixels[..., 0] = 200
    Image.fromarray(pixels).save(tmp_path / "red.png")
    image = load_image(tmp_path / "red.png", Preprocess(resize_shorter=256, crop=(224, 224), mean=(100, 0, 0),
                                                        std=(50, 1, 1)))
    assert image.shape == (3, 224, 224)
    np.testing.assert_allclose(image[0], 2.0)
    np.testing.assert_allclose(image[1:], 0.0)
    nhwc = load_image(tmp_path / "red.png", Preprocess(resize=(32, 48), channels="BGR", layout="NHWC"))
    assert nhwc.shape == (32, 48, 3) and nhwc[0, 0, 2] == 200


def test_sqnr_of_tensors_whose_energy_overflows_float32():
    rng = np.random.default_rng(0)
    reference = (rng.standard_normal(100_000) * 1e18).astype(np.float32)  # sum of squares ~1e41
    quantized = reference * np.float32(1.01)
    assert sqnr_db(reference, quantized) == pytest.approx(40.0, abs=1e-3)
    small = rng.standard_normal(1000).astype(np.float32)
    assert sqnr_db(small, small * np.float32(1.01)) == pytest.approx(40.0, abs=1e-3)
    assert sqnr_db(np.zeros(4, np.float32), np.zeros(4, np.float32)) == math.inf
