"""Golden QIR of every pipeline stage, per test model and backend; each stage also runs.

RUN: qcompile <test model> --backend <backend> --out OUT --dump-dir D
Then D/000_import.qir is compared with golden/qir/<model>/000_import.qir (the
same for every backend) and D/NNN_<pass>.qir with
golden/qir/<model>/<backend>/NNN_<pass>.qir.
"""
from __future__ import annotations

import pytest

from qcompiler import runtime
from qcompiler.backend import shipped_backends
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.testing.models import TEST_MODELS

CASES = [(model, backend) for model in sorted(TEST_MODELS) for backend in shipped_backends()]


@pytest.mark.parametrize("model_name, backend", CASES)
def test_stage_goldens(model_name, backend, tmp_path, model_file, golden):
    model = TEST_MODELS[model_name]()
    dump = tmp_path / "dump"
    compile_model(CompileRequest(model=model_file(model), backend=backend, out=tmp_path / "out", dump_dir=dump))
    stages = sorted(dump.glob("*.qir"))
    assert stages[0].name == "000_import.qir"
    golden.check(f"qir/{model_name}/000_import.qir", stages[0].read_text())
    for stage in stages[1:]:
        golden.check(f"qir/{model_name}/{backend}/{stage.name}", stage.read_text())

    reference = runtime.session(model)
    feeds = runtime.random_feeds(reference, seed=1, dims={"N": 2})
    expected = runtime.run(reference, feeds)
    for stage in sorted(dump.glob("*.onnx")):
        for e, a in zip(expected, runtime.run(stage, feeds)):
            assert runtime.relative_error(e, a) < 1e-5, stage.name
