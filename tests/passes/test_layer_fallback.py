"""layer_fallback: float layers that are exactly float, a target met with layers any backend still runs, the
search recorded, the held-out samples kept out of calibration."""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from qcompiler import runtime
from qcompiler.cli import main
from qcompiler.config.loader import load_backend
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.emit.registry import checkers
from qcompiler.errors import UsageError
from qcompiler.measure.targets import Target
from qcompiler.quant.fallback import fallback_layers, revert, reverted_copy
from qcompiler.testing.models import TEST_MODELS

BACKENDS = ["academic", "tensorrt", "snpe", "fbgemm", "tvm", "acl"]
# the models whose quantized layers all compute (conv_transpose_block's ConvTranspose has no integer form)
MODELS = ["resnet_basic_block", "mobilenetv2_inverted_residual", "inception_concat_block", "gemm_head"]


def _data(model: onnx.ModelProto, path, count: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    values = (scale * np.random.default_rng(seed).standard_normal([count, *shape[1:]])).astype(np.float32)
    np.save(path, values)
    return values


def _compile(model_path, backend, calib, *overrides, **request):
    request = {"out": None, **request}
    return compile_model(CompileRequest(model=model_path, backend=backend, calib=str(calib), overrides=list(overrides),
                                        **request))


def _option(backend: str, assignment: str) -> str:
    """``--set`` of a layer_fallback option of ``backend``'s pipeline."""
    names = [entry.name for entry in load_backend(backend).pipeline]
    return f"pipeline[{names.index('layer_fallback')}].options.{assignment}"


def _outputs(graph, samples: np.ndarray) -> list[np.ndarray]:
    session = runtime.graph_session(graph, fuse_qdq=False)
    return session.run(None, {graph.inputs[0].name: samples})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_name", MODELS)
def test_every_layer_in_float_is_the_float_model(model_name, backend, model_file, tmp_path):
    model = TEST_MODELS[model_name]()
    calib = tmp_path / "calib.npy"
    samples = _data(model, calib, 16)
    result = _compile(model_file(model), backend, calib, stop_after="bias_correct")
    layers = fallback_layers(result.graph, result.ctx.plan, result.backend)
    assert layers
    everything = reverted_copy(result.graph, result.ctx.plan, layers)
    assert not [node.op for node in everything.nodes if node.op in ("QuantizeLinear", "DequantizeLinear")]
    for expected, actual in zip(_outputs(result.float_graph, samples), _outputs(everything, samples)):
        assert runtime.relative_error(expected, actual) < 1e-5


@pytest.mark.parametrize("backend", ["tensorrt", "snpe"])
def test_revert_leaves_the_graph_its_copy_measured_and_keeps_the_plan_true(backend, model_file, tmp_path):
    model = TEST_MODELS["resnet_basic_block"]()
    calib = tmp_path / "calib.npy"
    samples = _data(model, calib, 16)
    result = _compile(model_file(model), backend, calib, stop_after="bias_correct")
    graph, plan = result.graph, result.ctx.plan
    layers = fallback_layers(graph, plan, result.backend)
    chosen = layers[:2]
    measured = _outputs(reverted_copy(graph, plan, chosen), samples)
    points_before = len(plan.points)
    revert(graph, plan, {layer: "a test" for layer in chosen})
    for expected, actual in zip(measured, _outputs(graph, samples)):
        np.testing.assert_array_equal(expected, actual)
    assert set(plan.float_layers) == {layer.name for layer in chosen}
    assert not set(plan.float_biases) & set(plan.float_layers)
    assert len(plan.points) < points_before
    nodes = {node.name: node for node in graph.nodes}
    for point in plan.points.values():
        assert all(name in nodes for name in point.nodes)
        assert point.consumers == [reader.name for reader in nodes[point.nodes[-1]].outputs[0].outputs]
        assert not set(point.consumers) & set(plan.float_layers)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_sqnr_target_is_met_and_every_backend_file_still_keeps_its_rules(backend, model_file, tmp_path):
    model = TEST_MODELS["inception_concat_block"]()
    calib = tmp_path / "calib.npy"
    _data(model, calib, 24)
    path = model_file(model)
    quantized = _compile(path, backend, calib, target="sqnr_db>=0")   # met as it is: what SQNR it has
    goal = round(quantized.report["layer_fallback"]["quantized"]["sqnr_db"] + 3.0, 1)
    result = _compile(path, backend, calib, target=f"sqnr_db>={goal}", out=tmp_path / "out",
                      explain=["layer_fallback"])
    search = result.report["layer_fallback"]
    assert search["met"] and search["final"]["sqnr_db"] >= goal and search["reverted"]
    assert [step["layer"] for step in search["steps"] if step["kept"]] == search["reverted"]
    assert set(result.ctx.plan.float_layers) == set(search["reverted"])
    explained = {e.node for e in result.ctx.explanations_of("layer_fallback") if e.applied}
    assert explained == set(search["reverted"])
    written = {path.name for path in result.outputs}
    assert {"model.qdq.onnx", "report.json"} <= written
    # each emitter's own model (model.qdq.onnx where the backend's rules are its constraints alone)
    core = {"model.onnx", "model.qdq.onnx", "model.int.onnx"}
    for name in [n for n in written if n.endswith(".onnx") and n not in core] or ["model.qdq.onnx"]:
        for check in checkers(result.backend):
            assert not check(onnx.load(str(tmp_path / "out" / name)), result.backend).violations, name
    for name in written:
        if name.endswith(".onnx"):
            runtime.session(tmp_path / "out" / name)   # every model the compile wrote loads in onnxruntime


def test_the_quantized_model_that_meets_the_target_keeps_every_layer(model_path, calib):
    result = _compile(model_path, "tensorrt", calib, target="sqnr_db>=0")
    search = result.report["layer_fallback"]
    assert search["met"] and search["reverted"] == [] and search["steps"] == []
    assert search["stopped"] == "the quantized model meets the target"
    assert not result.ctx.plan.float_layers


def test_without_a_target_nothing_changes_and_nothing_is_held_out(model_path, calib):
    result = _compile(model_path, "tensorrt", calib)
    record = next(r for r in result.records if r.name == "layer_fallback")
    assert record.status == "ran" and not record.changed
    assert result.ctx.eval_data is None and "layer_fallback" not in result.report
    assert next(r for r in result.records if r.name == "calibrate").stats["samples"] == 12


def test_a_target_out_of_reach_stops_at_the_cap_and_says_so(model_path, calib, caplog):
    result = _compile(model_path, "snpe", calib, _option("snpe", "max_layers=2"), target="sqnr_db>=200")
    search = result.report["layer_fallback"]
    assert not search["met"] and len(search["reverted"]) <= 2
    assert search["stopped"] in ("max_layers (2) reached", "every layer was tried")
    assert any("target sqnr_db>=200 not met" in warning for warning in result.ctx.warnings)


def test_the_held_out_samples_never_set_a_range(model_file, tmp_path):
    """Every fourth sample is 100x larger: the input's calibrated range must not have seen them."""
    model = TEST_MODELS["resnet_basic_block"]()
    values = _data(model, tmp_path / "calib.npy", 16)
    values[3::4] *= 100.0
    np.save(tmp_path / "calib.npy", values)
    result = _compile(model_file(model), "tensorrt", tmp_path / "calib.npy",
                      "calibration.activations.estimator=minmax", target="sqnr_db>=0")
    point = result.ctx.plan.points[result.float_graph.inputs[0].name]
    kept = np.delete(values, np.s_[3::4], axis=0)
    assert float(np.max(point.hi)) == pytest.approx(float(np.abs(kept).max()), rel=1e-6)
    assert result.report["layer_fallback"]["eval_samples"] == 4
    assert next(r for r in result.records if r.name == "calibrate").stats["samples"] == 12


def test_eval_data_replaces_the_held_out_share(model_path, calib, tmp_path):
    evaluation = tmp_path / "eval.npy"
    np.save(evaluation, np.random.default_rng(5).standard_normal((6, 16, 16, 16)).astype(np.float32))
    result = _compile(model_path, "tensorrt", calib, target="sqnr_db>=0", eval_data=str(evaluation))
    assert result.report["layer_fallback"]["eval_samples"] == 6
    assert next(r for r in result.records if r.name == "calibrate").stats["samples"] == 12


def test_a_users_metric_is_called_with_the_outputs_of_every_sample(model_path, calib, tmp_path, monkeypatch):
    (tmp_path / "my_metric.py").write_text(
        "import numpy as np\n"
        "calls = []\n"
        "def closeness(float_outputs, quant_outputs):\n"
        "    calls.append(sorted(float_outputs))\n"
        "    (name, f), = float_outputs.items()\n"
        "    return float(-np.abs(f - quant_outputs[name]).max())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = _compile(model_path, "tensorrt", calib, target="my_metric:closeness>=-0.0001")
    search = result.report["layer_fallback"]
    assert sys.modules["my_metric"].calls and search["evaluations"] >= 2
    assert search["final"]["metric"] >= search["quantized"]["metric"]


def test_quantize_one_ranks_too(model_path, calib):
    result = _compile(model_path, "snpe", calib, _option("snpe", "sensitivity=quantize_one"),
                      target="sqnr_db>=200")
    assert result.report["layer_fallback"]["sensitivity"] == "quantize_one"


def test_the_dump_says_why_each_float_layer_is_float(model_path, calib, tmp_path):
    result = _compile(model_path, "snpe", calib, target="sqnr_db>=200", dump_dir=tmp_path / "dump")
    plan = (tmp_path / "dump" / "quant_plan.yaml").read_text()
    assert "float_layers:" in plan
    for layer in result.ctx.plan.float_layers:
        assert f"layer: {layer}" in plan
    assert json.loads(json.dumps(result.report["layer_fallback"])) == result.report["layer_fallback"]


@pytest.mark.parametrize("text, target", [
    ("top1_agreement>=0.98", Target("top1_agreement", ">=", 0.98)),
    ("sqnr_db >= 30", Target("sqnr_db", ">=", 30.0)),
    ("drop(top1_agreement)<=0.01", Target("top1_agreement", "<=", 0.01, drop=True)),
    ("pkg.metrics:error<=1e-3", Target("pkg.metrics:error", "<=", 1e-3)),
])
def test_targets_parse(text, target):
    assert Target.parse(text) == target
    assert Target.parse(str(target)) == target


@pytest.mark.parametrize("text", ["top1_agreement>0.98", "top1>=0.9", "drop(top1_agreement)>=0.1",
                                  "drop(sqnr_db)<=3", "sqnr_db>=", ">=3"])
def test_a_bad_target_is_a_usage_error(text):
    with pytest.raises(UsageError):
        Target.parse(text)


def test_drop_is_measured_from_the_float_models_own_score():
    target = Target.parse("drop(top1_agreement)<=0.02")
    assert target.met(0.98, 1.0) and not target.met(0.979, 1.0)


def test_cli_refuses_eval_data_without_a_target_and_a_bad_target(model_path, calib, tmp_path, capsys):
    assert main([str(model_path), "--backend", "tensorrt", "--calib", str(calib), "--out", str(tmp_path / "a"),
                 "--eval-data", str(calib)]) == 2
    assert "give --target too" in capsys.readouterr().err
    assert main([str(model_path), "--backend", "tensorrt", "--calib", str(calib), "--out", str(tmp_path / "b"),
                 "--target", "accuracy>=0.9"]) == 2
    error = capsys.readouterr().err
    assert "unknown metric 'accuracy'" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_prints_the_search_in_one_line(model_path, calib, tmp_path, capsys):
    assert main([str(model_path), "--backend", "snpe", "--calib", str(calib), "--out", str(tmp_path / "out"),
                 "--target", "sqnr_db>=200", "--set", _option("snpe", "max_layers=1")]) == 0
    out = capsys.readouterr().out
    assert "layer_fallback: target sqnr_db>=200 not met" in out and "3 held-out samples" in out


def test_cli_refuses_a_target_for_a_pipeline_without_layer_fallback(model_path, calib, tmp_path, capsys):
    backend = tmp_path / "mine.yaml"
    backend.write_text("extends: tensorrt\nname: mine\npipeline: [fold_bn, insert_quantizers, calibrate]\n")
    assert main([str(model_path), "--backend", str(backend), "--calib", str(calib), "--out", str(tmp_path / "o"),
                 "--target", "sqnr_db>=30"]) == 2
    assert "has no layer_fallback in its pipeline" in capsys.readouterr().err


def test_mobilenetv2_tensorrt_returns_layers_to_float_for_a_real_target(shared, mobilenet_photos, tmp_path):
    calib, held_out = mobilenet_photos
    evaluation = tmp_path / "eval.npy"
    np.save(evaluation, held_out[:4])
    model = shared.model("mobilenetv2_bn.onnx")
    overrides = [_option("snpe", "max_layers=2"), "pipeline[5].options.ranking_samples=2"]
    result = _compile(model, "tensorrt", calib, *overrides, target="sqnr_db>=200", out=tmp_path / "out",
                      eval_data=str(evaluation))
    search = result.report["layer_fallback"]
    assert search["eval_samples"] == 4 and len(search["reverted"]) == 2
    assert search["final"]["sqnr_db"] > search["quantized"]["sqnr_db"]
    quantized, weighted = result.quantized_ops()
    assert weighted - quantized == sum(1 for step in search["steps"] if step["kept"] and step["op"] == "Conv")
    runtime.session(tmp_path / "out" / "model.int.onnx")



@pytest.mark.parametrize("backend", BACKENDS)
def test_every_layer_may_return_to_float_and_every_file_is_still_written(backend, model_path, calib, tmp_path):
    result = _compile(model_path, backend, calib, _option(backend, "max_layers=100"), target="sqnr_db>=200",
                      out=tmp_path / "out")
    search = result.report["layer_fallback"]
    assert len(search["reverted"]) == search["layers"] and not result.ctx.plan.points
    assert result.quantized_ops()[0] == 0
    for name in (path.name for path in result.outputs):
        if name.endswith(".onnx"):
            runtime.session(tmp_path / "out" / name)
