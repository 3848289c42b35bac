"""Import: the graph every pass starts from is clean, named, folded and still computes the same."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompiler import runtime
from qcompiler.errors import QCompileError, UsageError
from qcompiler.graph import ir
from qcompiler.graph.importer import import_model
from qcompiler.testing.models import TEST_MODELS


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=8):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def value(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def assert_imported_matches(original, graph, dims=None):
    reference = runtime.session(original)
    feeds = runtime.random_feeds(reference, seed=3, dims=dims or {"N": 2})
    for expected, actual in zip(runtime.run(reference, feeds), runtime.run(ir.to_model(graph), feeds)):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)


def ops(graph):
    return [node.op for node in graph.nodes]


def test_constant_nodes_become_initializers(model_file):
    w = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(np.full((2, 2), 0.5, np.float32)))
    mm = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    model = make_model([w, mm], [value("x", ["N", 2])], [value("y", ["N", 2])])
    graph, stats = import_model(model_file(model))
    assert ops(graph) == ["MatMul"]
    assert ir.constant_value(graph.nodes[0].inputs[1]) is not None
    assert stats.counts["constant_nodes_to_initializers"] == 1
    assert_imported_matches(model, graph)


def test_identity_and_dropout_are_removed_and_output_names_kept(model_file):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["i"], name="id"),
        helper.make_node("Dropout", ["i"], ["d"], name="drop"),
        helper.make_node("Identity", ["d"], ["out"], name="id_out"),
    ]
    model = make_model(nodes, [value("x", ["N", 3])], [value("out", ["N", 3])])
    graph, stats = import_model(model_file(model))
    assert ops(graph) == ["Relu"]
    assert [t.name for t in graph.outputs] == ["out"]
    assert stats.counts["identities_removed"] == 2 and stats.counts["dropouts_removed"] == 1
    assert_imported_matches(model, graph)


def test_identity_between_input_and_output_stays(model_file):
    model = make_model([helper.make_node("Identity", ["x"], ["y"], name="id")],
                       [value("x", [2])], [value("y", [2])])
    graph, _ = import_model(model_file(model))
    assert ops(graph) == ["Identity"]


def test_training_dropout_is_kept(model_file):
    training = numpy_helper.from_array(np.array(True), "training")
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), "ratio")
    nodes = [helper.make_node("Dropout", ["x", "ratio", "training"], ["y"], name="drop")]
    model = make_model(nodes, [value("x", [2])], [value("y", [2])], [ratio, training])
    graph, _ = import_model(model_file(model))
    assert ops(graph) == ["Dropout"]


def test_constant_subgraphs_fold_and_dynamic_batch_survives(model_file):
    """ConstantOfShape weights, shape arithmetic and a computed Pad all fold away."""
    shape = numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "w_shape")
    pads_a = numpy_helper.from_array(np.array([0, 0, 1, 1], np.int64), "pads_a")
    pads_b = numpy_helper.from_array(np.array([0, 0, 1, 1], np.int64), "pads_b")
    nodes = [
        helper.make_node("ConstantOfShape", ["w_shape"], ["w"], name="make_w",
                         value=numpy_helper.from_array(np.array([0.25], np.float32))),
        helper.make_node("Concat", ["pads_a", "pads_b"], ["pads"], name="pads", axis=0),
        helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad"),
        helper.make_node("Conv", ["padded", "w"], ["y"], name="conv"),
    ]
    model = make_model(nodes, [value("x", ["N", 3, 6, 6])], [value("y", ["N", 4, 6, 6])], [shape, pads_a, pads_b])
    graph, _ = import_model(model_file(model))
    assert ops(graph) == ["Pad", "Conv"]
    assert all(ir.constant_value(t) is not None for t in graph.nodes[0].inputs[1:] + graph.nodes[1].inputs[1:])
    assert graph.inputs[0].shape[0] == "N"
    assert_imported_matches(model, graph, dims={"N": 3})


def test_shape_arithmetic_on_a_dynamic_batch_stays_dynamic(model_file):
    minus_one = numpy_helper.from_array(np.array([-1], np.int64), "minus_one")
    start = numpy_helper.from_array(np.array([0], np.int64), "start")
    end = numpy_helper.from_array(np.array([1], np.int64), "end")
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "start", "end"], ["batch"], name="batch"),
        helper.make_node("Concat", ["batch", "minus_one"], ["new_shape"], name="new_shape", axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["y"], name="flatten"),
    ]
    model = make_model(nodes, [value("x", ["N", 2, 3])], [value("y", ["N", 6])], [minus_one, start, end])
    graph, _ = import_model(model_file(model))
    assert "Reshape" in ops(graph)
    assert_imported_matches(model, graph, dims={"N": 5})


def test_old_opset_is_upgraded(model_file):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=1)]
    model = make_model(nodes, [value("x", [2, 5])], [value("y", [2, 5])], opset=11, ir_version=6)
    graph, stats = import_model(model_file(model))
    assert graph.opset == 13 and stats.counts["opset_upgraded_from_11"] == 1
    assert_imported_matches(model, graph)


def test_initializers_listed_as_inputs_become_constants(model_file):
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make_model(nodes, [value("x", [1, 3]), value("w", [3, 3])], [value("y", [1, 3])], [w], opset=9, ir_version=3)
    graph, stats = import_model(model_file(model))
    assert [t.name for t in graph.inputs] == ["x"]
    assert stats.counts["initializer_inputs_removed"] == 1


def test_unnamed_and_duplicate_nodes_get_unique_derived_names(model_file):
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Neg", ["a"], ["b"], name="dup"),
             helper.make_node("Abs", ["b"], ["c"], name="dup")]
    model = make_model(nodes, [value("x", [2])], [value("c", [2])])
    graph, _ = import_model(model_file(model))
    assert [n.name for n in graph.nodes] == ["a", "dup", "c"]


def test_negative_dim_value_becomes_symbolic(model_file):
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")],
                       [value("x", [-1, 3])], [value("y", [-1, 3])])
    graph, _ = import_model(model_file(model))
    assert graph.inputs[0].shape == ["x_dim0", 3]


@pytest.mark.parametrize("op", ["QuantizeLinear", "QLinearConv", "ConvInteger", "DynamicQuantizeLinear"])
def test_quantized_models_are_refused(op, model_file):
    model = make_model([helper.make_node(op, ["x"], ["y"], name="q")], [value("x", [2])], [value("y", [2])])
    with pytest.raises(QCompileError, match=f"already quantized \\({op}"):
        import_model(model_file(model))


def test_external_data_is_loaded(tmp_path):
    model = TEST_MODELS["gemm_head"]()
    path = tmp_path / "external.onnx"
    onnx.save(TEST_MODELS["gemm_head"](), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.data", size_threshold=0)
    graph, _ = import_model(path)
    assert_imported_matches(model, graph)


def test_missing_and_garbage_files_fail_cleanly(tmp_path):
    with pytest.raises(UsageError, match="no such model file"):
        import_model(tmp_path / "absent.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model at all\xff" * 10)
    with pytest.raises(QCompileError) as info:
        import_model(garbage)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
