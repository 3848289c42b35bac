"""fold_bn: every BN that can fold does, outputs stay within 1e-5, and refusals are explained."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from qcompiler.passes.fold_bn import BN_FOLDED, FoldBN, FoldBNOptions

from qcompiler import runtime
from qcompiler.graph import ir
from qcompiler.graph.importer import import_model
from qcompiler.graph.verify import verified
from qcompiler.pipeline.pass_base import PassContext
from qcompiler.testing.models import TEST_MODELS, ModelBuilder

TOLERANCE = 1e-5


def fold(path, options=None):
    graph, _ = import_model(path)
    ctx = PassContext()
    ctx.current_pass = "fold_bn"
    result = FoldBN(options).run(graph, ctx)
    return verified(graph), ctx, result


def assert_same_outputs(original: onnx.ModelProto, graph, batch: int = 3) -> None:
    reference = runtime.session(original)
    feeds = runtime.random_feeds(reference, seed=7, dims={"N": batch})
    expected = runtime.run(reference, feeds)
    actual = runtime.run(ir.to_model(graph), feeds)
    for e, a in zip(expected, actual):
        assert runtime.relative_error(e, a) < TOLERANCE


def op_types(graph) -> list[str]:
    return [node.op for node in graph.nodes]


def reasons(ctx) -> dict[str, str]:
    return {e.node: e.reason for e in ctx.explanations}


@pytest.mark.parametrize("name", sorted(TEST_MODELS))
def test_folds_every_bn_of_test_models_and_keeps_outputs(name, model_file):
    model = TEST_MODELS[name]()
    graph, ctx, result = fold(model_file(model))
    assert "BatchNormalization" not in op_types(graph)
    assert result.stats["folded"] == sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert BN_FOLDED.violation(graph, None) is None
    assert_same_outputs(model, graph)


def test_matmul_with_bn_becomes_one_gemm(model_file):
    graph, _, _ = fold(model_file(TEST_MODELS["gemm_head"]()))
    assert "MatMul" not in op_types(graph)
    fc1 = next(n for n in graph.nodes if n.name == "fc1")
    assert fc1.op == "Gemm" and fc1.outputs[0].name == "fc1.bn"


def test_folded_tensors_have_derived_names(model_file):
    graph, _, _ = fold(model_file(TEST_MODELS["resnet_basic_block"]()))
    conv1 = next(n for n in graph.nodes if n.name == "conv1")
    assert [t.name for t in conv1.inputs[1:]] == ["conv1.weight/folded", "bn1.bias/folded"]
    assert conv1.outputs[0].name == "bn1"


def test_gemm_beta_and_row_bias_are_absorbed(model_file):
    b = ModelBuilder("gemm_beta", 11)
    x = b.input("x", ["N", 6])
    weight = b.const("fc.weight", b.rng.normal(size=(6, 4)).astype(np.float32))
    bias = b.const("fc.bias", b.rng.normal(size=(1, 4)).astype(np.float32))
    y = b.node("Gemm", "fc", [x, weight, bias], alpha=0.7, beta=0.5)
    model = b.build([(b.bn("bn", y, 4), ["N", 4])])
    graph, _, result = fold(model_file(model))
    assert result.stats["folded"] == 1
    assert_same_outputs(model, graph)


def test_bn_chain_folds_twice(model_file):
    b = ModelBuilder("chain", 12)
    x = b.input("x", ["N", 3, 6, 6])
    model = b.build([(b.bn("bn2", b.bn("bn1", b.conv("conv", x, 3, 5), 5), 5), ["N", 5, 6, 6])])
    graph, _, result = fold(model_file(model))
    assert result.stats["folded"] == 2 and op_types(graph) == ["Conv"]
    assert_same_outputs(model, graph)


def test_shared_weight_is_left_alone_with_reason(model_file):
    b = ModelBuilder("shared_weight", 13)
    x = b.input("x", ["N", 4, 6, 6])
    weight = b.const("w", b.rng.normal(size=(4, 4, 3, 3)).astype(np.float32))
    y1 = b.bn("bn1", b.node("Conv", "conv1", [x, weight], pads=[1, 1, 1, 1]), 4)
    y2 = b.bn("bn2", b.node("Conv", "conv2", [x, weight], pads=[1, 1, 1, 1]), 4)
    model = b.build([(y1, ["N", 4, 6, 6]), (y2, ["N", 4, 6, 6])])
    graph, ctx, result = fold(model_file(model))
    assert result.stats == {"folded": 0, "to_mul_add": 0, "kept": 2}
    assert "weight w is shared with conv2" in reasons(ctx)["bn1"]
    assert_same_outputs(model, graph)


def test_conv_with_two_consumers_is_left_alone(model_file):
    b = ModelBuilder("two_consumers", 14)
    x = b.input("x", ["N", 3, 6, 6])
    y = b.conv("conv", x, 3, 4)
    model = b.build([(b.bn("bn", y, 4), ["N", 4, 6, 6]), (b.relu("relu", y), ["N", 4, 6, 6])])
    graph, ctx, _ = fold(model_file(model))
    assert "BatchNormalization" in op_types(graph)
    assert reasons(ctx)["bn"] == "Conv conv output conv has 2 consumers"
    assert_same_outputs(model, graph)


def test_non_constant_bn_parameters_are_left_alone(model_file):
    b = ModelBuilder("dynamic_gamma", 15)
    x = b.input("x", ["N", 3, 6, 6])
    gamma = b.input("gamma", [4])
    params = [b.const(f"bn.{p}", v) for p, v in
              (("bias", np.zeros(4, np.float32)), ("mean", np.zeros(4, np.float32)), ("var", np.ones(4, np.float32)))]
    y = b.node("BatchNormalization", "bn", [b.conv("conv", x, 3, 4), gamma, *params])
    graph, ctx, _ = fold(model_file(b.build([(y, ["N", 4, 6, 6])])))
    assert "BatchNormalization" in op_types(graph)
    assert reasons(ctx)["bn"] == "BN parameters are not constants"


def test_standalone_bn_becomes_mul_add(model_file):
    b = ModelBuilder("standalone", 16)
    x = b.input("x", ["N", 4, 5, 5])
    model = b.build([(b.bn("bn", b.relu("relu", x), 4), ["N", 4, 5, 5])])
    graph, ctx, result = fold(model_file(model))
    assert op_types(graph) == ["Relu", "Mul", "Add"] and result.stats["to_mul_add"] == 1
    assert graph.outputs[0].name == "bn"
    assert_same_outputs(model, graph)
    graph, ctx, _ = fold(model_file(model, "again.onnx"), FoldBNOptions(standalone="keep"))
    assert "BatchNormalization" in op_types(graph)
    assert "standalone: keep" in reasons(ctx)["bn"]


def test_matmul_on_rank3_input_is_not_folded(model_file):
    b = ModelBuilder("matmul3d", 17)
    x = b.input("x", ["N", 4, 6])
    model = b.build([(b.bn("bn", b.matmul("mm", x, 6, 5), 4), ["N", 4, 5])])
    graph, ctx, _ = fold(model_file(model))
    assert "MatMul input has rank 3" in reasons(ctx)["bn"]
    assert_same_outputs(model, graph)


def test_property_reports_a_foldable_bn(model_file):
    graph, _ = import_model(model_file(TEST_MODELS["resnet_bottleneck"]()))
    violation = BN_FOLDED.violation(graph, None)
    assert violation is not None and "could still fold into Conv" in violation
