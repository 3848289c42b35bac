"""QIR text: canonical (independent of node-list order), sorted, rounded, hashed."""
from __future__ import annotations

import random

import numpy as np

from qcompiler.graph import qir
from qcompiler.graph.importer import import_model
from qcompiler.testing.models import TEST_MODELS, ModelBuilder


def test_text_does_not_depend_on_node_list_order(model_file):
    graph, _ = import_model(model_file(TEST_MODELS["inception_concat_block"]()))
    expected = qir.to_text(graph)
    for seed in range(3):
        random.Random(seed).shuffle(graph.nodes)
        assert qir.to_text(graph) == expected


def test_node_line_format(model_file):
    b = ModelBuilder("tiny", 0)
    x = b.input("x", ["N", 3, 4, 4])
    weight = b.const("w", np.full((2, 3, 3, 3), 0.1, np.float32))
    shape = b.const("shape", np.array([0, -1], np.int64))
    y = b.node("Conv", "conv", [x, weight], strides=[1, 1], pads=[1, 1, 1, 1], group=1)
    out = b.node("Reshape", "flat", [y, shape])
    graph, _ = import_model(model_file(b.build([(out, ["N", 32])])))
    lines = qir.to_text(graph).splitlines()
    digest = qir.tensor_digest(np.full((2, 3, 3, 3), 0.1, np.float32))
    assert lines == [
        "qir 1",
        "opset ai.onnx=17",
        "input %x: f32[N,3,4,4]",
        f"const @w: f32[2,3,3,3] #{digest}",
        "const @shape: i64[2] = [0, -1]",
        "conv: %conv: f32[N,2,4,4] = Conv(%x, @w) {group=1, pads=[1,1,1,1], strides=[1,1]}",
        "flat: %flat: f32[N,32] = Reshape(%conv, @shape)",
        "output %flat: f32[N,32]",
    ]


def test_floats_are_rounded_to_six_digits():
    assert qir.format_float(0.1 + 0.2) == "0.3"
    assert qir.format_float(1 / 3) == "0.333333"
    assert qir.format_float(-0.0) == "0"
    assert qir.format_float(1e-12) == "1e-12"


def test_digest_sees_values_shape_and_dtype():
    values = np.arange(12, dtype=np.float32)
    assert qir.tensor_digest(values) == qir.tensor_digest(values.copy())
    assert qir.tensor_digest(values) != qir.tensor_digest(values.reshape(3, 4))
    assert qir.tensor_digest(values) != qir.tensor_digest(values.astype(np.float64))
    changed = values.copy()
    changed[5] += 1e-6
    assert qir.tensor_digest(values) != qir.tensor_digest(changed)


def test_short_vectors_are_printed_rounded_and_longer_constants_hashed(model_file):
    b = ModelBuilder("vectors", 0)
    x = b.input("x", ["N", 12])
    scale = b.const("scale", np.linspace(0.01, 0.02, 12, dtype=np.float32))
    shift = b.const("shift", np.full(12, 0.5, np.float32))
    y = b.node("Add", "add", [b.node("Mul", "mul", [x, scale]), shift])
    graph, _ = import_model(model_file(b.build([(y, ["N", 12])]), "vectors.onnx"))
    lines = {line.split(":")[0]: line for line in qir.to_text(graph).splitlines() if line.startswith("const")}
    assert lines["const @scale"].startswith("const @scale: f32[12] = [0.01, 0.0109091, 0.0118182, ")
    assert lines["const @shift"] == "const @shift: f32[12] = all 0.5"
    assert qir._value(np.zeros(12, np.int8)) == "i8[12] = all 0"
    big = np.arange(65, dtype=np.float32)
    assert qir._value(big) == f"f32[65] #{qir.tensor_digest(big)}"
    assert qir._value(np.zeros((4, 4), np.float32)) == f"f32[4,4] #{qir.tensor_digest(np.zeros((4, 4), np.float32))}"
    assert qir._value(np.zeros(3, np.int8)) == "i8[3] = [0, 0, 0]"  # short ones stay as they were
