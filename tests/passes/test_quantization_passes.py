"""insert_quantizers, calibrate and share_scales on small models, each result executed."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from qcompiler.passes import registry

from qcompiler import runtime
from qcompiler.calibration.batching import auto_batch_size, read_ahead
from qcompiler.config.backend import EstimatorConfig, PipelineEntry
from qcompiler.config.loader import load_backend
from qcompiler.data.sources import CalibrationData
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.errors import QCompileError, UsageError
from qcompiler.graph.importer import import_model
from qcompiler.measure.report import sqnr_db
from qcompiler.pipeline.manager import PassManager, StageRecord, bind_pipeline
from qcompiler.pipeline.pass_base import PassContext
from qcompiler.testing.models import TEST_MODELS, ModelBuilder


def compile_with(model, backend, tmp_path, *overrides, explain=()):
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    dims = [d.dim_value or 8 for d in model.graph.input[0].type.tensor_type.shape.dim]
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal(dims).astype(np.float32))
    result = compile_model(CompileRequest(model=path, backend=backend, out=tmp_path / "out",
                                          calib=str(tmp_path / "calib.npy"), overrides=list(overrides)))
    qdq = onnx.load(str(tmp_path / "out" / "model.qdq.onnx"))
    return result, qdq


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


@pytest.mark.parametrize("backend", ["academic", "tensorrt", "snpe", "fbgemm", "tvm", "acl"])
def test_never_a_quantizer_between_conv_and_its_relu(backend, tmp_path):
    _, qdq = compile_with(TEST_MODELS["mobilenetv2_inverted_residual"](), backend, tmp_path)
    made_by = producers(qdq)
    quantized_inputs = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    activations = [n for n in qdq.graph.node if n.op_type in ("Relu", "Clip") and not n.name.endswith("/clip")]
    assert activations
    for node in activations:
        assert made_by[node.input[0]].op_type in ("Conv", "BatchNormalization")
        assert node.input[0] not in quantized_inputs


def test_maxpool_passes_its_input_quantizer_through(tmp_path):
    result, qdq = compile_with(TEST_MODELS["inception_concat_block"](), "tensorrt", tmp_path)
    plan = result.ctx.plan
    assert "b4.pool" not in plan.points
    assert "b4.pool" in plan.points["x"].consumers
    reasons = {e.node: e.reason for e in result.ctx.explanations_of("insert_quantizers")}
    assert reasons["b4.pool"] == "passes the quantized x through; no new quantizer"


def test_concat_members_share_one_pair_of_initializers(tmp_path):
    result, qdq = compile_with(TEST_MODELS["inception_concat_block"](), "snpe", tmp_path)
    concat = next(n for n in qdq.graph.node if n.op_type == "Concat")
    made_by = producers(qdq)
    dequants = [made_by[made_by[t].input[0]] if made_by[t].op_type == "Clip" else made_by[t] for t in concat.input]
    assert all(d.op_type == "DequantizeLinear" for d in dequants)
    assert len({(d.input[1], d.input[2]) for d in dequants}) == 1
    members = [p for p in result.ctx.plan.points.values() if p.scale_group == "b1.relu"]
    assert len(members) == 4
    shared_lo, shared_hi = members[0].lo, members[0].hi
    for member in members:
        assert member.lo == shared_lo and member.hi == shared_hi


def test_layer_overrides_skip_and_bits(tmp_path):
    result, _ = compile_with(TEST_MODELS["resnet_bottleneck"](), "tensorrt", tmp_path,
                             "layers=[{match: {name: conv2}, skip: true}, {match: {position: last_weighted}, bits: 4}]")
    plan = result.ctx.plan
    assert "conv2.weight/folded" not in plan.points and "relu1" not in plan.points
    assert plan.points["conv3.weight/folded"].spec.bits == 4
    assert plan.points["relu2"].spec.bits == 4  # conv3's activation input
    assert plan.points["conv1.weight/folded"].spec.bits == 8
    assert {e.node: e.reason for e in result.ctx.explanations_of("insert_quantizers")}["conv2"] == "layer override: skip"


def test_shared_weight_gets_one_quantizer_and_activation_matmul_none(tmp_path):
    b = ModelBuilder("shared", 20)
    x = b.input("x", ["N", 4, 6, 6])
    weight = b.const("w", b.rng.normal(size=(4, 4, 3, 3)).astype(np.float32))
    y1 = b.node("Conv", "conv1", [x, weight], pads=[1, 1, 1, 1])
    y2 = b.node("Conv", "conv2", [x, weight], pads=[1, 1, 1, 1])
    flat1 = b.node("Flatten", "flat1", [y1], axis=1)
    flat2 = b.node("Flatten", "flat2", [y2], axis=1)
    out = b.node("MatMul", "mm", [b.node("Transpose", "t", [flat1]), flat2])
    result, _ = compile_with(b.build([(out, [144, 144])]), "tensorrt", tmp_path)
    assert sorted(result.ctx.plan.points["w"].consumers) == ["conv1", "conv2"]
    reasons = {e.node: e.reason for e in result.ctx.explanations_of("insert_quantizers")}
    assert reasons["mm"] == "MatMul mm has no constant weight"


def test_integer_tensors_are_never_quantized(tmp_path):
    b = ModelBuilder("shapes", 21)
    x = b.input("x", ["N", 4, 6, 6])
    shape = b.node("Shape", "shape", [x])
    batch = b.node("Slice", "batch", [shape, b.const("s0", np.array([0])), b.const("s1", np.array([1]))])
    new_shape = b.node("Concat", "new_shape", [batch, b.const("rest", np.array([-1]))], axis=0)
    y = b.node("Reshape", "flatten", [b.conv("conv", x, 4, 4), new_shape])
    result, qdq = compile_with(b.build([(b.gemm("fc", y, 144, 3), ["N", 3])]), "snpe", tmp_path)
    assert "new_shape" not in result.ctx.plan.points and "batch" not in result.ctx.plan.points
    assert all(p.tensor in ("x", "conv", "conv.weight", "fc.weight") for p in result.ctx.plan.points.values())


def test_calibrated_scales_follow_the_rules(tmp_path):
    model = TEST_MODELS["resnet_basic_block"]()
    result, qdq = compile_with(model, "tensorrt", tmp_path, "calibration.activations.estimator=minmax")
    inits = initializers(qdq)
    weight = result.ctx.plan.points["conv1.weight/folded"]
    folded = inits["conv1.weight/folded"]
    np.testing.assert_allclose(inits[weight.scale_tensor], np.abs(folded).reshape(32, -1).max(1) / 127, rtol=1e-6)
    calib = np.load(tmp_path / "calib.npy")
    activation = result.ctx.plan.points["x"]
    assert inits[activation.scale_tensor] == np.float32(np.abs(calib).max() / 127)


@pytest.mark.parametrize("estimator", ["minmax", "mean_max", "percentile"])
def test_calibration_does_not_depend_on_the_batch_size(estimator, tmp_path):
    model = TEST_MODELS["resnet_basic_block"]()
    scales = []
    for batch_size in (1, 3, "auto"):
        folder = tmp_path / str(batch_size)
        folder.mkdir()
        result, _ = compile_with(model, "snpe", folder, f"calibration.activations.estimator={estimator}",
                                 f"calibration.batch_size={batch_size}")
        scales.append({name: (p.scale, p.zero_point) for name, p in result.ctx.plan.points.items()})
    for other in scales[1:]:
        for name, (scale, zero_point) in scales[0].items():
            np.testing.assert_allclose(other[name][0], scale, rtol=1e-6, err_msg=name)
            np.testing.assert_array_equal(other[name][1], zero_point, err_msg=name)


@pytest.mark.parametrize("shape, batch_size", [
    ((3, 224, 224), 2),      # ImageNet photos: 0.6 MB a sample
    ((3, 48, 192), 13),      # text lines for the PaddleOCR classifier
    ((16,), 16),             # tiny samples: capped
    ((3, 1024, 1024), 1),    # one sample is already past the budget
])
def test_auto_batch_size_follows_the_input_size(shape, batch_size):
    sample = np.zeros((4, *shape), np.float32)
    data = CalibrationData("test", 4, lambda n: iter([{"x": sample[i: i + n]} for i in range(0, 4, n)]))
    assert auto_batch_size(data) == batch_size


def test_read_ahead_keeps_the_order_and_raises_the_readers_error():
    def batches():
        yield {"x": np.zeros(1)}
        yield {"x": np.ones(1)}
        raise UsageError("sample 2 has NaN")

    seen = []
    with pytest.raises(UsageError, match="sample 2 has NaN"):
        for feed in read_ahead(batches()):
            seen.append(float(feed["x"][0]))
    assert seen == [0.0, 1.0]


def test_a_batch_size_below_one_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="calibration.batch_size is 0; give a positive number or auto"):
        compile_with(TEST_MODELS["gemm_head"](), "tensorrt", tmp_path, "calibration.batch_size=0")


def test_report_measures_the_qdq_model_as_the_spec_defines_it(tmp_path):
    # onnxruntime's fused integer kernels round and saturate their own way; the report must not measure them
    model = TEST_MODELS["mobilenetv2_inverted_residual"]()
    result, qdq = compile_with(model, "tensorrt", tmp_path)
    feeds = {"x": np.load(tmp_path / "calib.npy")[:4]}
    float_model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    (expected,) = runtime.session(float_model, optimize=False).run(None, feeds)
    (actual,) = runtime.session(qdq, optimize=False).run(None, feeds)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["outputs"][0]["sqnr_db"] == pytest.approx(sqnr_db(expected, actual), abs=2e-3)


def test_fake_quant_error_shrinks_with_more_bits(tmp_path):
    model = TEST_MODELS["resnet_bottleneck"]()
    feeds = {"x": np.random.default_rng(5).standard_normal((4, 64, 8, 8)).astype(np.float32)}
    (expected,) = runtime.run(model, feeds)
    sqnr = {}
    for bits in (4, 6, 8):
        folder = tmp_path / str(bits)
        folder.mkdir()
        _, qdq = compile_with(model, "tensorrt", folder, f"quantizers.weight.bits={bits}",
                              f"quantizers.activation.bits={bits}")
        sqnr[bits] = sqnr_db(expected, runtime.run(qdq, feeds)[0])
    assert sqnr[4] + 6 < sqnr[6] and sqnr[6] + 6 < sqnr[8]


def test_contracts_are_enforced(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(TEST_MODELS["gemm_head"](), str(path))
    graph, _ = import_model(path)
    ctx = PassContext(backend=load_backend("tensorrt"))
    start = StageRecord(0, "import", status="ran")
    with pytest.raises(QCompileError, match="calibrate needs quantizers; run insert_quantizers first"):
        PassManager(bind_pipeline([PipelineEntry("calibrate")], registry())).run(graph, ctx, start)
    with pytest.raises(UsageError, match="calibrate needs calibration data"):
        PassManager(bind_pipeline([PipelineEntry("insert_quantizers"), PipelineEntry("calibrate")],
                                  registry())).run(graph, ctx, start)
    with pytest.raises(QCompileError, match="quantizers are already placed"):
        PassManager(bind_pipeline([PipelineEntry("insert_quantizers")], registry())).run(graph, ctx, start)


def test_a_layer_override_sets_the_estimator_of_the_activations_it_quantizes(tmp_path):
    override = "layers=[{match: {name: conv2}, estimator: {estimator: percentile, percentile: 0.9}}]"
    result, _ = compile_with(TEST_MODELS["resnet_bottleneck"](), "tensorrt", tmp_path, override)
    estimators = {name: p.estimator for name, p in result.ctx.plan.points.items() if p.kind == "activation"}
    assert estimators.pop("relu1") == EstimatorConfig("percentile", percentile=0.9)  # conv2's input
    assert set(estimators.values()) == {EstimatorConfig("percentile")}  # the backend's default everywhere else
    qparams = {q["tensor"]: q for q in json.loads((tmp_path / "out" / "qparams.json").read_text())["quantizers"]}
    assert qparams["relu1"]["estimator"] == "percentile" and qparams["x"]["estimator"] == "percentile"
    (tmp_path / "default").mkdir()
    default, _ = compile_with(TEST_MODELS["resnet_bottleneck"](), "tensorrt", tmp_path / "default")
    clipped, full = result.ctx.plan.points["relu1"], default.ctx.plan.points["relu1"]
    assert clipped.scale < full.scale  # the 90th percentile clips where the 99.99th does not
    assert result.ctx.plan.points["relu2"].scale == default.ctx.plan.points["relu2"].scale


def test_a_model_with_a_fixed_batch_calibrates_at_that_batch(tmp_path):
    model = TEST_MODELS["mobilenetv2_inverted_residual"]()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # torch.onnx's default export
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((8, 16, 8, 8)).astype(np.float32))

    def compile_at(*overrides):
        return compile_model(CompileRequest(model=tmp_path / "model.onnx", backend="tensorrt", out=tmp_path / "out",
                                            calib=str(tmp_path / "calib.npy"), overrides=list(overrides)))

    result = compile_at()  # 'auto' would otherwise pick 16 for these small inputs
    assert next(r for r in result.records if r.name == "calibrate").stats["samples"] == 8
    with pytest.raises(UsageError, match="calibration.batch_size is 4, but the model's inputs fix the batch at 1; "
                                         "set calibration.batch_size=1 or auto"):
        compile_at("calibration.batch_size=4")
