"""The integer model (model.int.onnx) each deployable backend writes, against the fake-quant model and onnxruntime.

- Every test model and MobileNetV2, every deployable backend: each integer
  tensor, its layer fed the fake-quant model's integers, within 1 LSB of it; at least
  99% of values exact where the backend's arithmetic is the ONNX one (float32
  multiplier, ties to even), and where it differs by design the report names
  how and the share stays high.
- Bit-exact against onnxruntime's own integer kernels: with onnxruntime's
  arithmetic (int32 bias, float32 multiplier, half to even), each MobileNetV2
  Conv of model.int.onnx equals the QLinearConv onnxruntime fuses from
  model.int8.onnx, fed the same integers.
- A bias past int32 saturates, is counted and warned about; never wraps.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from qcompiler import runtime
from qcompiler.backends import fbgemm
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.graph import ir
from qcompiler.measure.deployment_gap import layer_gaps, layer_values
from qcompiler.testing.models import TEST_MODELS, ModelBuilder
from qcompiler.testing.units import conv_units

DEPLOYABLE = ["tensorrt", "snpe", "fbgemm", "tvm", "acl"]
ONNX_ARITHMETIC = {"tensorrt", "fbgemm", "acl"}   # float32 multipliers rounding half to even, as Q/DQ computes


def _compile(model_path, backend, calib, *overrides, explain=()):
    return compile_model(CompileRequest(model=model_path, backend=backend, out=None, calib=str(calib),
                                        overrides=list(overrides), explain=list(explain)))


def _samples(result, data):
    name = result.float_graph.inputs[0].name
    return [{name: data[i:i + 1]} for i in range(len(data))]


@pytest.mark.parametrize("backend", DEPLOYABLE)
@pytest.mark.parametrize("model_name", sorted(TEST_MODELS))
def test_each_layer_within_one_lsb_of_the_fake_quant_model(model_name, backend, model_file, tmp_path):
    model = TEST_MODELS[model_name]()
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.standard_normal([24, *shape[1:]]).astype(np.float32))
    result = _compile(model_file(model), backend, tmp_path / "calib.npy")
    held_out = rng.standard_normal([8, *shape[1:]]).astype(np.float32)
    gaps = layer_gaps(result.graph, result.integer_graph, _samples(result, held_out))
    if model_name == "conv_transpose_block":  # ONNX has no integer ConvTranspose: it stays float, as Q/DQ has it
        assert gaps and all(gap.max_lsb == 0 for gap in gaps)
        return
    assert gaps and all(gap.max_lsb <= 1 for gap in gaps), [(g.tensor, g.max_lsb) for g in gaps]
    exact = sum(g.exact for g in gaps) / sum(g.values for g in gaps)
    assert exact >= (0.99 if backend in ONNX_ARITHMETIC else 0.9)


def test_conv_transpose_stays_float_and_says_why(model_file, tmp_path):
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal([8, 8, 4, 4]).astype(np.float32))
    result = _compile(model_file(TEST_MODELS["conv_transpose_block"]()), "tensorrt", tmp_path / "calib.npy",
                      explain=["fuse_requant"])
    reasons = [str(e) for e in result.ctx.explanations_of("fuse_requant")]
    assert reasons and all("ONNX has no integer ConvTranspose" in r for r in reasons)
    assert {n.op for n in result.integer_graph.nodes} >= {"ConvTranspose"}


@pytest.fixture(scope="module")
def mobilenet_results(shared, mobilenet_photos):
    calib, held_out = mobilenet_photos
    model = shared.model("mobilenetv2_bn.onnx")
    return {backend: _compile(model, backend, calib) for backend in DEPLOYABLE}, held_out


@pytest.mark.parametrize("backend", DEPLOYABLE)
def test_mobilenetv2_integer_model_per_backend(mobilenet_results, backend):
    results, held_out = mobilenet_results
    result = results[backend]
    gaps = layer_gaps(result.graph, result.integer_graph, _samples(result, held_out[:4]))
    assert len(gaps) >= 40   # the Convs whose outputs are quantized, the Adds and the pooling
    assert max(g.max_lsb for g in gaps) <= 1
    exact = sum(g.exact for g in gaps) / sum(g.values for g in gaps)
    assert exact >= (0.99 if backend in ONNX_ARITHMETIC else 0.95), exact
    gap = result.report["deployment_gap"]
    assert gap["layers"] == len(gaps) and gap["max_lsb"] <= 1
    if backend not in ONNX_ARITHMETIC:
        assert gap["differs_from_qdq"], "the report says how this backend's arithmetic differs from Q/DQ"
    integer_ops = {n.op for n in result.integer_graph.nodes}
    assert "ConvInteger" in integer_ops and "MatMulInteger" in integer_ops and "Conv" not in integer_ops


def test_mobilenetv2_bit_exact_against_onnxruntime_qlinearconv(shared, mobilenet_photos, tmp_path):
    """onnxruntime's arithmetic (int32 bias): each Conv of model.int.onnx equals onnxruntime's fused QLinearConv."""
    calib, held_out = mobilenet_photos
    result = compile_model(CompileRequest(model=shared.model("mobilenetv2_bn.onnx"), backend="fbgemm",
                                          out=tmp_path / "out", calib=str(calib), overrides=["arithmetic.bias=int32"]))
    int8_model = onnx.load(str(tmp_path / "out" / "model.int8.onnx"))
    units = conv_units(int8_model)
    assert len(units) == 52
    extractor = onnx.utils.Extractor(int8_model)
    kernels = {}
    for source, target in units:
        unit = extractor.extract_model([source], [target])
        assert runtime.optimized_ops(unit)["QLinearConv"] == 1
        kernels[source, target] = runtime.session(unit)
    sources = sorted({source.removesuffix("/clipped") for source, _ in units})   # the same integers, unclipped
    fake_quant = runtime.graph_session(result.graph, sources, fuse_qdq=False)
    samples = _samples(result, held_out[:2])
    for sample, (_, ours) in zip(samples, layer_values(result.graph, result.integer_graph, samples)):
        inputs = dict(zip(sources, fake_quant.run(sources, sample)))
        for (source, target), kernel in kernels.items():
            (theirs,) = kernel.run(None, {source: inputs[source.removesuffix("/clipped")]})
            np.testing.assert_array_equal(ours[target.removesuffix("/clipped")], theirs, err_msg=target)


def _big_bias_model() -> onnx.ModelProto:
    builder = ModelBuilder("big_bias", seed=7)
    x = builder.input("x", ["N", 4, 6, 6])
    weight = builder.const("conv.weight", np.full((8, 4, 1, 1), 1e-4, np.float32))
    bias = builder.const("conv.bias", np.array([3e4, -3e4, 1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3], np.float32))
    y = builder.node("Conv", "conv", [x, weight, bias])
    z = builder.node("Relu", "relu", [y])
    return builder.build([(z, ["N", 8, 6, 6])])


@pytest.mark.parametrize("backend", ["tensorrt", "acl", "fbgemm"])
def test_an_overflowing_bias_saturates_is_counted_and_warned(backend, model_file, tmp_path, caplog):
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).uniform(0, 1e-3, [8, 4, 6, 6]).astype(np.float32))
    result = _compile(model_file(_big_bias_model()), backend, tmp_path / "calib.npy", "arithmetic.bias=int32")
    stats = next(r.stats for r in result.records if r.name == "fuse_requant")
    assert stats["saturated_biases"] == 2
    assert any("2 int32 biases saturate" in w for w in result.ctx.warnings)
    if backend == "fbgemm":   # model.int8.onnx's own int32 biases: saturated, never wrapped, and check says so
        int8 = result.files["model.int8.onnx"]
        biases = [t.values for t in int8.tensors().values() if getattr(t, "dtype", None) == np.int32
                  and hasattr(t, "values") and t.values.ndim == 1]
        assert any(b[0] == np.iinfo(np.int32).max and b[1] == np.iinfo(np.int32).min for b in biases)
        assert any("int32 biases saturate" in record.getMessage() for record in caplog.records)
        report = fbgemm.check(ir.to_model(int8))
        assert not report.violations and any("2 of its 8 int32 biases saturate" in n for n in report.notes)
        assert "note: conv: 2 of its 8 int32 biases saturate" in report.text("fbgemm")


def test_cli_writes_the_integer_model_and_its_gap(model_path, calib, tmp_path, capsys):
    from qcompiler.cli import main

    out = tmp_path / "out"
    assert main([str(model_path), "-b", "snpe", "-o", str(out), "--calib", str(calib)]) == 0
    text = capsys.readouterr().out
    assert "integer model:" in text and "LSB of the fake-quant model" in text
    report = json.loads((out / "report.json").read_text())
    gap = report["deployment_gap"]
    assert gap["arithmetic"]["multiplier"] == "fixed_point" and gap["max_lsb"] <= 1 and gap["per_layer"]
    model = onnx.load(str(out / "model.int.onnx"))
    assert {"ConvInteger"} <= {n.op_type for n in model.graph.node}
    (actual,) = runtime.session(model).run(None, {"x": np.load(calib)[:2]})
    (fake,) = runtime.session(onnx.load(str(out / "model.qdq.onnx"))).run(None, {"x": np.load(calib)[:2]})
    assert np.abs(actual - fake).max() < 0.1 * np.abs(fake).max()
