"""Goldens of every pipeline stage, the quant plan and the qparams, per test model and backend.

RUN: qcompile <test model> --backend <backend> --calib calib.npy --out OUT --dump-dir D
(calib.npy: 16 seeded standard-normal samples). Compared with golden/, a
stage's QIR only where the stage changed the graph (an unchanged stage must
print what the stage before it printed):
- D/000_import.qir with qir/<model>/000_import.qir (the same for every backend);
- D/NNN_<pass>.qir of a float stage (before any quantizer: fold_bn) with
  qir/<model>/NNN_<pass>.qir, the same for every backend that runs it;
- D/NNN_<pass>.qir of the stages after with qir/<model>/<backend>/NNN_<pass>.qir;
- D/quant_plan.yaml and OUT/qparams.json (floats to 6 digits) with
  quant/<model>/<backend>.quant_plan.yaml and .qparams.json;
- each backend's text artifacts (calibration.cache, dynamic_range.json,
  model.encodings, scale_offset_record.txt, torch_qparams.json) with
  artifacts/<model>/<backend>/<file>, floats to 6 digits (the cache's hex
  scales shown as the float they encode, so a last-bit difference between
  CPUs does not fail the run; the hex encoding has its own exact tests).
Every stage also runs: float stages match the model within 1e-5, and the
quantized model reaches MIN_SQNR_DB against it.
"""
from __future__ import annotations

import json
import re
import struct

import numpy as np
import onnx
import pytest

from qcompiler import runtime
from qcompiler.config.loader import shipped_backends
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.measure.report import sqnr_db
from qcompiler.testing.models import TEST_MODELS

CASES = [(model, backend) for model in sorted(TEST_MODELS) for backend in shipped_backends()]
MIN_SQNR_DB = 20.0  # 8-bit quantization of one block; typical results are 28-40 dB


def calibration_file(model: onnx.ModelProto, path):
    dims = [d.dim_value or 16 for d in model.graph.input[0].type.tensor_type.shape.dim]
    np.save(path, np.random.default_rng(0).standard_normal(dims).astype(np.float32))
    return path


def rounded(text: str) -> str:
    def fix(value):
        if isinstance(value, float):
            return float(f"{value:.6g}")
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    return json.dumps(fix(json.loads(text)), indent=1) + "\n"


# the text files emitters write (the rest of OUT has goldens above, or is binary)
TEXT_ARTIFACTS = (
    "calibration.cache", "dynamic_range.json", "model.encodings", "scale_offset_record.txt", "torch_qparams.json",
)


def rounded_artifact(name: str, text: str) -> str:
    if name.endswith((".json", ".encodings")):
        return rounded(text)
    if name.endswith(".cache"):
        hex_scale = re.compile(r": ([0-9a-f]{8})$", re.M)
        return hex_scale.sub(lambda m: f": scale {struct.unpack('>f', bytes.fromhex(m.group(1)))[0]:.6g}", text)
    return re.sub(r"-?\d+\.\d+(?:e-?\d+)?", lambda m: f"{float(m.group(0)):.6g}", text)


@pytest.mark.parametrize("model_name, backend", CASES)
def test_stage_goldens(model_name, backend, tmp_path, model_file, golden):
    model = TEST_MODELS[model_name]()
    dump, out = tmp_path / "dump", tmp_path / "out"
    calib = calibration_file(model, tmp_path / "calib.npy")
    result = compile_model(CompileRequest(model=model_file(model), backend=backend, out=out, dump_dir=dump,
                                          calib=str(calib)))
    stages = sorted(dump.glob("*.qir"))
    assert stages[0].name == "000_import.qir"
    golden.check(f"qir/{model_name}/000_import.qir", stages[0].read_text())
    changed = {record.label: record.changed for record in result.records}
    previous = stages[0].read_text()
    for stage in stages[1:]:
        text = stage.read_text()
        shared = f"qir/{model_name}/{stage.name}"
        own = f"qir/{model_name}/{backend}/{stage.name}"
        if not changed[stage.stem]:
            assert text == previous, f"{stage.name} reports no change but prints another graph"
            golden.check_absent(own)
        elif "= QuantizeLinear(" in text:
            golden.check(own, text)
        else:
            golden.check(shared, text)
            golden.check_absent(own)
        previous = text
    golden.check(f"quant/{model_name}/{backend}.quant_plan.yaml", (dump / "quant_plan.yaml").read_text())
    golden.check(f"quant/{model_name}/{backend}.qparams.json", rounded((out / "qparams.json").read_text()))
    for name in TEXT_ARTIFACTS:
        if (out / name).exists():
            golden.check(f"artifacts/{model_name}/{backend}/{name}", rounded_artifact(name, (out / name).read_text()))

    reference = runtime.session(model)
    feeds = runtime.random_feeds(reference, seed=1, dims={"N": 2})
    expected = runtime.run(reference, feeds)
    for stage in sorted(dump.glob("*.onnx")):
        if any(n.op_type == "QuantizeLinear" for n in onnx.load(str(stage)).graph.node):
            continue
        for e, a in zip(expected, runtime.run(stage, feeds)):
            assert runtime.relative_error(e, a) < 1e-5, stage.name
    for e, q in zip(expected, runtime.run(out / "model.qdq.onnx", feeds)):
        assert sqnr_db(e, q) > MIN_SQNR_DB
