"""TensorRT files: model.trt.onnx passes the parser's rules and runs like model.qdq.onnx; the cache reads back.

RUN: qcompile mobilenetv2_bn.onnx --backend tensorrt --calib photos.npy --out OUT
Then OUT holds model.trt.onnx, calibration.cache and dynamic_range.json, and
``qcompile check --backend tensorrt`` passes model.trt.onnx but lists each
deliberately broken copy's violation.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from qcompiler.backends import tensorrt

from qcompiler import runtime
from qcompiler.cli import main
from qcompiler.errors import QCompileError
from qcompiler.measure.report import sqnr_db
from qcompiler.testing.models import TEST_MODELS, single_node_model


@pytest.fixture(scope="module")
def out(mobilenet_compiled):
    return mobilenet_compiled("tensorrt")


def test_every_artifact_is_written_and_the_checker_passes(out, capsys):
    for name in ("model.trt.onnx", "calibration.cache", "dynamic_range.json", "model.qdq.onnx"):
        assert (out / name).is_file(), name
    assert main(["check", "--backend", "tensorrt", str(out / "model.trt.onnx")]) == 0
    assert "0 violation(s); 53 of 53 weighted ops will run in int8" in capsys.readouterr().out


def test_trt_model_stores_int8_weights_and_computes_what_the_qdq_model_computes(out, mobilenet_photos):
    model = onnx.load(str(out / "model.trt.onnx"))
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert len(weights) == 52  # every Conv weight is an int8 initializer read by a DQ
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in {i.name for i in model.graph.initializer}
                   for n in model.graph.node)
    _, held_out = mobilenet_photos
    (trt,) = runtime.run(model, {"input": held_out})
    (qdq,) = runtime.run(out / "model.qdq.onnx", {"input": held_out})
    assert sqnr_db(qdq, trt) > 60  # the same integers; only float summation order may differ


def test_cache_reads_back_as_the_amax_of_every_activation_quantizer(out):
    cache = (out / "calibration.cache").read_text()
    assert cache.splitlines()[0] == "TRT-101300-EntropyCalibration2"
    ranges = json.loads((out / "dynamic_range.json").read_text())
    assert tensorrt.read_calibration_cache(cache) == ranges
    qparams = json.loads((out / "qparams.json").read_text())["quantizers"]
    activations = {q["tensor"]: q["scale"] for q in qparams if q["kind"] == "activation"}
    assert set(ranges) == set(activations)
    for name, scale in activations.items():
        assert ranges[name] == float(np.float32(scale) * np.float32(127))


@pytest.mark.parametrize("version, header", [
    ("8.6.1", "TRT-8601-EntropyCalibration2"),
    ("10.9.0", "TRT-100900-EntropyCalibration2"),
    ("10.13", "TRT-101300-EntropyCalibration2"),
    ("11.0", None),
])
def test_cache_header_per_version(version, header):
    assert tensorrt.cache_header(version) == header


def test_cache_lines_are_big_endian_float32_of_amax_over_127():
    text = tensorrt.calibration_cache({"a": 0.5, "b": 2.0}, "TRT-8601-EntropyCalibration2")
    assert text == "TRT-8601-EntropyCalibration2\na: 3b810204\nb: 3c810204\n"


def test_a_colon_in_a_tensor_name_is_refused_with_how_to_rename():
    with pytest.raises(QCompileError, match="rename it"):
        tensorrt.calibration_cache({"input:0": 1.0}, "TRT-8601-EntropyCalibration2")


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def _first(model: onnx.ModelProto, op: str, activation: bool = True) -> onnx.NodeProto:
    constants = {i.name for i in model.graph.initializer}
    return next(n for n in model.graph.node if n.op_type == op and (n.input[0] not in constants) == activation)


def _nonzero_zero_point(model):
    q = _first(model, "QuantizeLinear")
    _initializer(model, q.input[2]).CopyFrom(numpy_helper.from_array(np.array(3, np.int8), q.input[2]))


def _per_channel_activation(model):
    q = _first(model, "QuantizeLinear")
    scale = numpy_helper.to_array(_initializer(model, q.input[1]))
    _initializer(model, q.input[1]).CopyFrom(numpy_helper.from_array(np.full(3, scale, np.float32), q.input[1]))
    _initializer(model, q.input[2]).CopyFrom(numpy_helper.from_array(np.zeros(3, np.int8), q.input[2]))
    q.attribute.append(helper.make_attribute("axis", 1))


def _wrong_weight_axis(model):
    dq = _first(model, "DequantizeLinear", activation=False)
    weight = numpy_helper.to_array(_initializer(model, dq.input[0]))
    scale = numpy_helper.to_array(_initializer(model, dq.input[1]))[0]
    _initializer(model, dq.input[1]).CopyFrom(numpy_helper.from_array(np.full(weight.shape[1], scale), dq.input[1]))
    _initializer(model, dq.input[2]).CopyFrom(numpy_helper.from_array(np.zeros(weight.shape[1], np.int8), dq.input[2]))
    next(a for a in dq.attribute if a.name == "axis").i = 1


def _qlinear_op(model):
    model.graph.node.append(helper.make_node("QLinearConv", ["a", "b", "c", "d", "e", "f", "g", "h"], ["y"],
                                             name="stray_qlinear"))


def _old_opset(model):
    next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 12


@pytest.mark.parametrize("break_it, violation", [
    (_nonzero_zero_point, "non-zero zero point"),
    (_per_channel_activation, "per-channel activation"),
    (_wrong_weight_axis, "weight quantized on axis 1"),
    (_qlinear_op, "QLinearConv is not parsed"),
    (_old_opset, "opset 12"),
])
def test_checker_catches_a_broken_copy(out, break_it, violation):
    model = onnx.load(str(out / "model.trt.onnx"))
    break_it(model)
    report = tensorrt.check(model)
    assert any(violation in v for v in report.violations), report.violations


@pytest.mark.parametrize("op", ["QLinearConv", "QGemm", "QLinearSoftmax", "ConvInteger", "MatMulInteger16",
                                "DynamicQuantizeLinear"])
def test_checker_rejects_every_integer_op(op):
    assert tensorrt.check(single_node_model(op)).violations == [
        f"stray_{op}: {op} is not parsed by TensorRT; use QuantizeLinear/DequantizeLinear"]


def test_checker_catches_concat_inputs_on_different_scales(tmp_path, model_file):
    path = model_file(TEST_MODELS["inception_concat_block"]())
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 16, 8, 8)).astype(np.float32))
    assert main([str(path), "-b", "tensorrt", "-o", str(tmp_path / "out"), "--calib", str(calib), "-q"]) == 0
    model = onnx.load(str(tmp_path / "out" / "model.trt.onnx"))
    assert tensorrt.check(model).violations == []
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = producer[concat.input[0]]
    fresh = dq.input[1] + "/broken"
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), fresh))
    dq.input[1] = fresh
    assert any("different scales" in v for v in tensorrt.check(model).violations)
