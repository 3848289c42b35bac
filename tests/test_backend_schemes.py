"""Each backend's fake-quant MobileNetV2 has its scheme's structure (BACKENDS.md sections 1-2).

RUN: qcompile mobilenetv2_bn.onnx --backend B --calib photos.npy --out OUT
Then OUT/model.qdq.onnx is checked structurally and run against the float model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qcompiler import runtime
from qcompiler.measure.report import sqnr_db

MIN_SQNR_DB = {"academic": 10, "tensorrt": 10, "snpe": 10, "fbgemm": 10, "acl": 10, "tvm": 2}


class QDQModel:
    """Index of a Q/DQ model: producers, consumers, initializers."""

    def __init__(self, path: Path):
        self.model = onnx.load(str(path))
        graph = self.model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.nodes = list(graph.node)

    def of(self, op: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.op_type == op]

    def quantized(self, tensor: str) -> bool:
        """Whether ``tensor`` is the output of a DequantizeLinear (or of the Clip after one)."""
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "Clip" and node.input[0] in self.producer:
            node = self.producer[node.input[0]]
        return node is not None and node.op_type == "DequantizeLinear"

    def quantizer_of(self, tensor: str) -> onnx.NodeProto:
        node = self.producer[tensor]
        return self.producer[node.input[0]] if node.op_type == "Clip" else node


@pytest.fixture(scope="module")
def photos(mobilenet_photos):
    return mobilenet_photos


@pytest.fixture(scope="module")
def compiled(mobilenet_compiled):
    return lambda backend: QDQModel(mobilenet_compiled(backend) / "model.qdq.onnx")


@pytest.mark.parametrize("backend", sorted(MIN_SQNR_DB))
def test_fake_quant_model_runs_close_to_float(backend, compiled, photos, shared):
    qdq = compiled(backend)
    onnx.checker.check_model(qdq.model)
    assert all(o.version >= 13 for o in qdq.model.opset_import if o.domain in ("", "ai.onnx"))
    _, held_out = photos
    (expected,) = runtime.run(shared.model("mobilenetv2_bn.onnx"), {"input": held_out})
    (actual,) = runtime.run(qdq.model, {"input": held_out})
    assert sqnr_db(expected, actual) > MIN_SQNR_DB[backend]


def test_academic_keeps_bn_and_leaves_add_float(compiled):
    qdq = compiled("academic")
    assert len(qdq.of("BatchNormalization")) == 52
    for add in qdq.of("Add"):
        assert not any(qdq.quantized(t) for t in add.input)
    for conv in qdq.of("Conv"):
        assert qdq.quantized(conv.input[0]) and qdq.quantized(conv.input[1])


def test_tensorrt_int8_zero_point_zero_per_channel_axis0_and_skip_only(compiled):
    qdq = compiled("tensorrt")
    for q in qdq.of("QuantizeLinear"):
        zero_point = qdq.inits[q.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    for conv in qdq.of("Conv"):
        weight_q = qdq.quantizer_of(conv.input[1])
        assert weight_q.attribute[0].name == "axis" and weight_q.attribute[0].i == 0
        assert qdq.inits[weight_q.input[1]].shape == (qdq.inits[weight_q.input[1]].size,)
        assert qdq.quantized(conv.input[0])
    assert len(qdq.of("Add")) == 10
    for add in qdq.of("Add"):
        from_conv = [t for t in add.input if qdq.producer[t].op_type == "Conv"]
        assert len(from_conv) == 1 and not qdq.quantized(from_conv[0])
        skip = [t for t in add.input if t not in from_conv]
        assert len(skip) == 1 and qdq.quantized(skip[0])


def test_snpe_uint8_asymmetric_per_tensor_and_every_add_quantized(compiled):
    qdq = compiled("snpe")
    for q in qdq.of("QuantizeLinear"):
        assert qdq.inits[q.input[1]].ndim == 0 and qdq.inits[q.input[2]].dtype == np.uint8
    assert any(qdq.inits[q.input[2]] not in (0, 128) for q in qdq.of("QuantizeLinear"))  # asymmetric
    for add in qdq.of("Add"):
        assert all(qdq.quantized(t) for t in add.input)
        assert all(c.op_type == "QuantizeLinear" for c in qdq.nodes if add.output[0] in c.input)


def test_fbgemm_uint8_activations_in_0_127_and_int8_per_channel_weights(compiled, mobilenet_compiled):
    qdq = compiled("fbgemm")
    weights = {c.input[1] for c in qdq.of("Conv") + qdq.of("Gemm")}
    for q in qdq.of("QuantizeLinear"):
        scale, zero_point = qdq.inits[q.input[1]], qdq.inits[q.input[2]]
        if q.input[0] in qdq.inits:  # a weight
            assert zero_point.dtype == np.int8 and not zero_point.any() and scale.ndim == 1
        else:
            assert zero_point.dtype == np.uint8 and zero_point <= 127
    # the calibrated range maps onto [0, 127]; beyond it values saturate at 255, as in FBGEMM: no Clip
    assert not qdq.of("Clip") or all(qdq.producer[c.input[0]].op_type != "DequantizeLinear" for c in qdq.of("Clip"))
    qparams = json.loads((mobilenet_compiled("fbgemm") / "qparams.json").read_text())["quantizers"]
    activations = [q for q in qparams if q["kind"] == "activation"]
    assert activations and all((q["qmin"], q["qmax"], q["reduce_range"]) == (0, 127, True) for q in activations)
    assert weights


def test_tvm_scales_are_powers_of_two_symmetric_per_tensor(compiled):
    qdq = compiled("tvm")
    for q in qdq.of("QuantizeLinear"):
        scale = float(qdq.inits[q.input[1]])
        assert scale == 2.0 ** np.round(np.log2(scale))
        assert qdq.inits[q.input[2]].dtype == np.int8 and int(qdq.inits[q.input[2]]) == 0


def test_acl_weighted_ops_only_int8_symmetric_per_channel_weights_asymmetric_activations(compiled):
    qdq = compiled("acl")
    consumers = {t: [n for n in qdq.nodes if t in n.input] for n in qdq.of("DequantizeLinear") for t in n.output}
    assert {c.op_type for users in consumers.values() for c in users} == {"Conv", "Gemm"}
    for conv in qdq.of("Conv"):
        weight_q = qdq.quantizer_of(conv.input[1])
        assert qdq.inits[weight_q.input[1]].ndim == 1 and not qdq.inits[weight_q.input[2]].any()
    gemm_q = qdq.quantizer_of(qdq.of("Gemm")[0].input[1])
    assert qdq.inits[gemm_q.input[1]].ndim == 0  # Gemm weights per-tensor on Ascend
    activations = [q for q in qdq.of("QuantizeLinear") if q.input[0] not in qdq.inits]
    assert all(qdq.inits[q.input[2]].dtype == np.int8 for q in activations)
    assert any(int(qdq.inits[q.input[2]]) != 0 for q in activations)
