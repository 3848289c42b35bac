"""Ascend and TVM files: each checker passes our output and lists a broken copy's violation.

RUN: qcompile mobilenetv2_bn.onnx --backend acl|tvm --calib photos.npy --out OUT
ACL: OUT/model.acl.onnx keeps AMCT's constraints and scale_offset_record.txt
parses against the record schema and matches qparams.json. TVM:
OUT/model.tvm.onnx has power-of-two scales only; where apache-tvm is
installed, its ONNX frontend imports it, compiles for llvm and matches
onnxruntime.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from qcompiler.backends import acl, tvm

from qcompiler import runtime
from qcompiler.cli import main
from qcompiler.measure.report import sqnr_db
from qcompiler.testing.models import single_node_model


@pytest.fixture(scope="module")
def acl_out(mobilenet_compiled):
    return mobilenet_compiled("acl")


@pytest.fixture(scope="module")
def tvm_out(mobilenet_compiled):
    return mobilenet_compiled("tvm")


def _initializer(model, name):
    return next(i for i in model.graph.initializer if i.name == name)


def test_acl_model_passes_amct_constraints(acl_out, capsys):
    assert main(["check", "--backend", "acl", str(acl_out / "model.acl.onnx")]) == 0
    assert "0 violation(s); 53 of 53 weighted ops" in capsys.readouterr().out


def test_acl_record_parses_and_matches_qparams(acl_out):
    record = acl.parse_record((acl_out / "scale_offset_record.txt").read_text())
    qparams = {q["tensor"]: q for q in json.loads((acl_out / "qparams.json").read_text())["quantizers"]}
    model = onnx.load(str(acl_out / "model.acl.onnx"))
    nodes = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    assert len(record.record) == 53
    for entry in record.record:
        node = nodes[entry.key]  # keyed by node name
        data_q = producer[producer[node.input[0]].input[0]]
        weight_q = producer[producer[node.input[1]].input[0]]
        data, weight = qparams[data_q.input[0]], qparams[weight_q.input[0]]
        assert entry.value.scale_d == np.float32(data["scale"]) and entry.value.offset_d == data["zero_point"]
        assert list(entry.value.scale_w) == [np.float32(s) for s in np.atleast_1d(weight["scale"])]
        assert list(entry.value.offset_w) == [0] * len(entry.value.scale_w)


def test_acl_record_schema_refuses_unknown_fields():
    with pytest.raises(Exception, match="scale_x"):
        acl.parse_record('record { key: "conv" value { scale_x: 1.0 } }')


def _asymmetric_weight(model):
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0].endswith("weight/folded"))
    zero = numpy_helper.to_array(_initializer(model, q.input[2])).copy()
    zero[0] = 2
    _initializer(model, q.input[2]).CopyFrom(numpy_helper.from_array(zero, q.input[2]))


def _mismatched_pair(model):
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("input"))
    fresh = dq.input[1] + "/other"
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.25, np.float32), fresh))
    dq.input[1] = fresh


def _per_channel_gemm(model):
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = producer[gemm.input[1]]
    q = producer[dq.input[0]]
    rows = numpy_helper.to_array(_initializer(model, q.input[0])).shape[0]
    scale = numpy_helper.to_array(_initializer(model, q.input[1]))
    _initializer(model, q.input[1]).CopyFrom(numpy_helper.from_array(np.full(rows, scale, np.float32), q.input[1]))
    _initializer(model, q.input[2]).CopyFrom(numpy_helper.from_array(np.zeros(rows, np.int8), q.input[2]))
    for node in (q, dq):
        node.attribute.append(onnx.helper.make_attribute("axis", 0))


@pytest.mark.parametrize("break_it, violation", [
    (_asymmetric_weight, "weights must be symmetric"),
    (_mismatched_pair, "a pair must match"),
    (_per_channel_gemm, "Gemm weights must be per-tensor"),
])
def test_acl_checker_catches_a_broken_copy(acl_out, break_it, violation):
    model = onnx.load(str(acl_out / "model.acl.onnx"))
    break_it(model)
    assert any(violation in v for v in acl.check(model).violations)


def test_tvm_model_has_power_of_two_scales_and_runs_like_the_qdq_model(tvm_out, mobilenet_photos):
    model = onnx.load(str(tvm_out / "model.tvm.onnx"))
    assert tvm.check(model).violations == []
    _, held_out = mobilenet_photos
    (ours,) = runtime.run(model, {"input": held_out})
    (qdq,) = runtime.run(tvm_out / "model.qdq.onnx", {"input": held_out})
    assert sqnr_db(qdq, ours) > 60


def test_tvm_checker_catches_a_scale_that_is_not_a_power_of_two(tvm_out):
    model = onnx.load(str(tvm_out / "model.tvm.onnx"))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    scale = numpy_helper.to_array(_initializer(model, q.input[1]))
    _initializer(model, q.input[1]).CopyFrom(numpy_helper.from_array(np.float32(scale * 1.5), q.input[1]))
    assert any("not a power of two" in v for v in tvm.check(model).violations)


def test_apache_tvm_imports_compiles_and_matches_onnxruntime(tvm_out, mobilenet_photos):
    tvm_pkg = pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install apache-tvm)")
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(tvm_out / "model.tvm.onnx"))
    _, held_out = mobilenet_photos
    batch = held_out[:2]
    module = from_onnx(model, shape_dict={"input": list(batch.shape)}, keep_params_in_input=False)
    module = relax.transform.DecomposeOpsForInference()(module)
    module = relax.transform.LegalizeOps()(module)
    executable = tvm_pkg.compile(module, target="llvm")
    machine = relax.VirtualMachine(executable, tvm_pkg.cpu())
    # onnxruntime running the Q/DQ graph as written (its integer kernels round and saturate their own way)
    (expected,) = runtime.session(model, optimize=False).run(None, {"input": batch})
    actual = machine["main"](tvm_pkg.runtime.tensor(batch))
    assert sqnr_db(expected, actual.numpy()) > 100  # measured: 148 dB, the same float simulation


INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QGemm", "ConvInteger", "MatMulInteger",
               "MatMulInteger16", "DynamicQuantizeLinear")


@pytest.mark.parametrize("op", INTEGER_OPS)
def test_tvm_checker_flags_exactly_the_integer_ops_relax_cannot_import(op):
    violations = tvm.check(single_node_model(op)).violations
    assert bool(violations) == (op not in tvm.RELAX_INTEGER_OPS), violations
    assert all(f"{op} is rejected by TVM's ONNX frontend" in v for v in violations)


def test_relax_integer_ops_match_the_installed_apache_tvm():
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install apache-tvm)")
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    imported = set(_get_convert_map())
    assert {op for op in INTEGER_OPS if op in imported} == set(tvm.RELAX_INTEGER_OPS)
