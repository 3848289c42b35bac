"""FBGEMM files: model.int8.onnx runs in onnxruntime's integer kernels, within 1 LSB of its Q/DQ semantics.

RUN: qcompile mobilenetv2_bn.onnx --backend fbgemm --calib photos.npy --out OUT
OUT/model.int8.onnx: every weighted op fuses into QLinearConv / QGemm; each
fused unit, fed the same integers, gives what its Q/DQ form gives to 1 LSB;
before the biases go int32 the rewrite computes exactly model.qdq.onnx.
OUT/torch_qparams.json carries every quantizer of qparams.json by module name.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from qcompiler.backends import fbgemm

from qcompiler import runtime
from qcompiler.cli import main
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.graph import ir
from qcompiler.measure.report import sqnr_db
from qcompiler.testing.models import TEST_MODELS, ModelBuilder
from qcompiler.testing.units import conv_units


@pytest.fixture(scope="module")
def out(mobilenet_compiled):
    return mobilenet_compiled("fbgemm")


@pytest.fixture(scope="module")
def int8_model(out):
    return onnx.load(str(out / "model.int8.onnx"))


def test_every_weighted_op_runs_in_integer_kernels(int8_model):
    ops = runtime.optimized_ops(int8_model)
    assert ops["QLinearConv"] == 52 and ops["QGemm"] == 1 and ops["QLinearAdd"] == 10
    assert ops["QLinearGlobalAveragePool"] == 1
    assert not ops["Conv"] and not ops["Gemm"] and not ops["DequantizeLinear"]
    # the RGB stem padded to 4 channels, into onnxruntime's fast u8s8 convolution
    assert list(_integer_weight(int8_model, "features.0.0.weight").dims) == [32, 4, 3, 3] and ops["Pad"] == 1


def test_checker_passes_ours_and_lists_what_blocks_fusion(out, int8_model, tmp_path, capsys):
    assert main(["check", "--backend", "fbgemm", str(out / "model.int8.onnx")]) == 0
    assert "0 violation(s); 53 of 53 weighted ops" in capsys.readouterr().out

    # the plain Q/DQ model: float biases and float Clips keep onnxruntime from fusing
    report = fbgemm.check(onnx.load(str(out / "model.qdq.onnx")))
    assert report.int8_ops == 0
    assert any("a float bias" in v for v in report.violations)
    assert any("sits between it and its QuantizeLinear" in v for v in report.violations)

    broken = onnx.ModelProto()
    broken.CopyFrom(int8_model)
    weight_zero_point = next(i for i in broken.graph.initializer if i.name.endswith("weight/folded/zero_point"))
    weight_zero_point.CopyFrom(numpy_helper.from_array(
        numpy_helper.to_array(weight_zero_point) + np.int8(1), weight_zero_point.name))
    input_zero_point = next(i for i in broken.graph.initializer if i.name == "input/zero_point")
    input_zero_point.CopyFrom(numpy_helper.from_array(np.int8(0), input_zero_point.name))
    path = tmp_path / "broken.onnx"
    onnx.save(broken, str(path))
    assert main(["check", "--backend", "fbgemm", str(path)]) == 1
    text = capsys.readouterr().out
    assert "weights must be symmetric" in text and "takes uint8 activations" in text


def test_rewrite_computes_exactly_the_qdq_model(shared, mobilenet_photos, tmp_path):
    calib, held_out = mobilenet_photos
    result = compile_model(CompileRequest(model=shared.model("mobilenetv2_bn.onnx"), backend="fbgemm",
                                          out=tmp_path / "out", calib=str(calib)))
    exact = ir.to_model(fbgemm.int8_graph(result.graph, result.ctx.plan, bias_in_int32=False))
    feeds = {"input": held_out[:4]}
    (expected,) = runtime.run(runtime.session(ir.to_model(result.graph), optimize=False), feeds)
    (actual,) = runtime.run(runtime.session(exact, optimize=False), feeds)
    np.testing.assert_array_equal(actual, expected)


def test_integer_kernels_match_qdq_semantics_within_one_lsb_per_layer(int8_model, mobilenet_photos):
    """Each QLinearConv unit, fed the integers the Q/DQ run gives it, lands within 1 LSB of that run."""
    _, held_out = mobilenet_photos
    units = conv_units(int8_model)
    tensors = sorted({t for unit in units for t in unit})
    reference = runtime.session(runtime.with_outputs(int8_model, tensors), optimize=False)
    values = dict(zip(tensors, reference.run(tensors, {"input": held_out[:2]})))
    extractor = onnx.utils.Extractor(int8_model)
    exact = 0
    for source, result in units:
        unit = extractor.extract_model([source], [result])
        assert runtime.optimized_ops(unit)["QLinearConv"] == 1
        (integer,) = runtime.run(runtime.session(unit), {source: values[source]})
        lsb = np.abs(integer.astype(np.int32) - values[result].astype(np.int32))
        assert lsb.max() <= 1, result
        exact += np.mean(lsb == 0)
    assert exact / len(units) > 0.99


def test_torch_qparams_carry_every_quantizer_by_module_name(out):
    torch_qparams = json.loads((out / "torch_qparams.json").read_text())["modules"]
    qparams = {q["tensor"]: q for q in json.loads((out / "qparams.json").read_text())["quantizers"]}
    seen = set()
    for name, module in torch_qparams.items():
        if "weight" in module:
            weight = module["weight"]
            assert name + ".weight/folded" == weight["tensor"] or name + ".weight" == weight["tensor"]
            assert weight["scales"] == [float(np.float32(s)) for s in qparams[weight["tensor"]]["scale"]]
            assert weight["zero_points"] == [0] * len(weight["scales"]) and weight["ch_axis"] == 0
            assert weight["qscheme"] == "per_channel_symmetric" and weight["dtype"] == "qint8"
            seen.add(weight["tensor"])
        for activation in [module.get("input"), module.get("output"), *module.get("inputs", [])]:
            if activation is None:
                continue
            expected = qparams[activation["tensor"]]
            assert activation["scale"] == float(np.float32(expected["scale"]))
            assert activation["zero_point"] == expected["zero_point"]
            assert (activation["dtype"], activation["quant_min"], activation["quant_max"]) == ("quint8", 0, 127)
            seen.add(activation["tensor"])
    assert seen == set(qparams)
    assert {"features.0.0", "features.1.conv.0.0", "features.3.add", "classifier.1"} <= set(torch_qparams)


def _compiled(model: Path, calibration: np.ndarray, tmp_path: Path) -> Path:
    """``model`` compiled for fbgemm on ``calibration`` (saved as calib.npy); the output folder."""
    np.save(tmp_path / "calib.npy", calibration)
    out = tmp_path / "out"
    compile_model(CompileRequest(model=model, backend="fbgemm", out=out, calib=str(tmp_path / "calib.npy")))
    return out


@pytest.mark.parametrize("model_name", sorted(TEST_MODELS))
def test_int8_model_of_each_test_model_runs_fused_and_close_to_qdq(model_name, model_file, tmp_path):
    model = TEST_MODELS[model_name]()
    dims = [d.dim_value or 16 for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    out = _compiled(model_file(model), rng.standard_normal(dims).astype(np.float32), tmp_path)
    int8 = onnx.load(str(out / "model.int8.onnx"))
    report = fbgemm.check(int8)
    ops = runtime.optimized_ops(int8)
    assert not report.violations and report.int8_ops == ops["QLinearConv"] + ops["QGemm"]  # the checker's count is true
    feeds = {model.graph.input[0].name: rng.standard_normal([2, *dims[1:]]).astype(np.float32)}
    (expected,) = runtime.run(runtime.session(out / "model.qdq.onnx", optimize=False), feeds)
    (actual,) = runtime.run(runtime.session(int8), feeds)
    assert sqnr_db(expected, actual) > 25


@pytest.mark.parametrize("c_in, c_out, group, padded_to", [(3, 16, 1, 4), (6, 32, 1, 8), (4, 16, 1, None),
                                                            (3, 12, 1, None), (6, 24, 3, None)])
def test_conv_input_channels_padded_only_into_the_fast_kernel_and_exactly(c_in, c_out, group, padded_to,
                                                                        model_file, tmp_path):
    b = ModelBuilder("stem", 0)
    y = b.relu("relu", b.conv("conv", b.input("x", ["N", c_in, 8, 8]), c_in, c_out, stride=2, group=group))
    y = b.conv("head", y, c_out, 8, kernel=1)
    rng = np.random.default_rng(0)
    out = _compiled(model_file(b.build([(y, ["N", 8, 4, 4])])), rng.standard_normal([8, c_in, 8, 8]).astype(np.float32),
                    tmp_path)
    int8 = onnx.load(str(out / "model.int8.onnx"))
    assert _integer_weight(int8, "conv.weight").dims[1] == (padded_to or c_in // group)
    assert runtime.optimized_ops(int8)["QLinearConv"] == 1  # the head's output stays float
    if padded_to is None:
        return
    feeds = {"x": rng.standard_normal([2, c_in, 8, 8]).astype(np.float32)}
    (padded,) = runtime.run(runtime.session(int8), feeds)
    (unpadded,) = runtime.run(runtime.session(_without_channel_padding(int8)), feeds)
    np.testing.assert_array_equal(padded, unpadded)


def _without_channel_padding(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its Pad bypassed and the padded weight cut back to the channels the Pad added."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    (pad,) = [n for n in graph.node if n.op_type == "Pad"]
    added = int(numpy_helper.to_array(next(i for i in graph.initializer if i.name == pad.input[1]))[5])
    for node in graph.node:
        node.input[:] = [pad.input[0] if name == pad.output[0] else name for name in node.input]
    graph.node.remove(pad)
    weight = _integer_weight(model, "conv.weight")
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[:, :-added], weight.name))
    del graph.value_info[:]
    return model


def _integer_weight(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    """The int8 initializer behind the weight ``name``."""
    (weight,) = [i for i in model.graph.initializer
                 if i.name.startswith(name) and i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    return weight


def test_a_float_model_output_after_a_fused_relu_is_no_violation(model_file, tmp_path):
    """Conv -> Relu as the model's output: the Conv runs in float (its output is not quantized); no broken fusion."""
    b = ModelBuilder("features", 0)
    y = b.relu("relu", b.conv("conv", b.input("x", ["N", 3, 8, 8]), 3, 16))
    calibration = np.random.default_rng(0).standard_normal([4, 3, 8, 8]).astype(np.float32)
    out = _compiled(model_file(b.build([(y, ["N", 16, 8, 8])])), calibration, tmp_path)
    int8 = onnx.load(str(out / "model.int8.onnx"))
    report = fbgemm.check(int8)
    assert (report.violations, report.int8_ops, report.weighted_ops) == ([], 0, 1)
    assert "Pad" not in {node.op_type for node in int8.graph.node}  # a float Conv gains nothing from padding
