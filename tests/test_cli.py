"""The qcompile command: outputs, instruments, exit codes, one-line errors, nothing lost."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from qcompiler.passes.fold_bn import FoldBN

from qcompiler.testing.cli import digest, qcompile


def test_compile_writes_model_and_pipeline(capsys, model_path, calib, tmp_path):
    code, out, err = qcompile(capsys, model_path, "--backend", "tensorrt", "--out", tmp_path / "out", "--calib", calib)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "calibration.cache", "dynamic_range.json", "model.int.onnx", "model.onnx", "model.qdq.onnx",
        "model.trt.onnx", "pipeline.txt", "qparams.json", "report.json"]
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    assert {n.op_type for n in model.graph.node} == {"Conv", "Relu", "Add"}  # the float model, BN folded
    assert "001 fold_bn: ran, changed" in (tmp_path / "out" / "pipeline.txt").read_text()
    assert "001_fold_bn" in out and "folded=3" in out


def test_float_stages_only_without_calibration(capsys, model_path, tmp_path):
    code, _, _ = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "out", "--stop-after", "fold_bn")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "pipeline.txt"]


def test_dump_dir_holds_every_stage(capsys, model_path, calib, tmp_path):
    code, _, _ = qcompile(capsys, model_path, "-b", "snpe", "-o", tmp_path / "out", "--dump-dir", tmp_path / "d",
                          "--calib", calib)
    assert code == 0
    stages = ["000_import", "001_fold_bn", "002_insert_quantizers", "003_calibrate", "004_share_scales",
              "005_bias_correct", "006_layer_fallback", "007_integer_weights", "008_integer_ops", "009_fuse_requant"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(
        [f"{s}.{ext}" for s in stages for ext in ("onnx", "qir")]
        + ["explain.txt", "pipeline.txt", "quant_plan.yaml", "timing.txt"])
    assert "fold_bn: bn1: applied: folded into Conv conv1" in (tmp_path / "d" / "explain.txt").read_text()


def test_same_inputs_same_bytes(capsys, model_path, calib, tmp_path):
    for run in ("a", "b"):
        assert qcompile(capsys, model_path, "-b", "tvm", "-o", tmp_path / run, "--dump-dir", tmp_path / f"d{run}",
                        "--calib", calib)[0] == 0
    for name in ("model.onnx", "model.qdq.onnx", "model.int.onnx", "qparams.json", "report.json", "pipeline.txt"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name)
    for name in ("000_import.onnx", "001_fold_bn.onnx", "005_share_scales.qir", "quant_plan.yaml"):
        assert digest(tmp_path / "da" / name) == digest(tmp_path / "db" / name)


def test_print_instruments(capsys, model_path, tmp_path):
    stop = ("--stop-after", "fold_bn")
    _, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o1", "--print-after", "fold_bn", "-q", *stop)
    assert err.startswith("; *** QIR after 001_fold_bn ***\nqir 1\n")
    _, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o2", "--print-after-all", "-q", *stop)
    assert err.count("; *** QIR after") == 1
    _, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o3", "--print-changed", "-q", *stop)
    assert "QIR after 001_fold_bn" in err


def test_print_changed_is_silent_when_nothing_changed(capsys, model_file, tmp_path):
    path = model_file(onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)]))
    code, _, err = qcompile(capsys, path, "-b", "tensorrt", "-o", tmp_path / "o", "--print-changed", "-q",
                            "--stop-after", "fold_bn")
    assert code == 0 and err == ""


def test_disable_stop_after_and_explain(capsys, model_path, calib, tmp_path):
    code, out, _ = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--disable", "fold_bn",
                            "--calib", calib)
    assert code == 0 and "001_fold_bn" in out and "disabled" in out
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(tmp_path / "o" / "model.onnx")).graph.node}
    code, out, _ = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o2", "--stop-after", "fold_bn",
                            "--explain", "fold_bn", "-q")
    assert code == 0
    assert sorted(out.splitlines()) == [
        "fold_bn: bn1: applied: folded into Conv conv1",
        "fold_bn: bn2: applied: folded into Conv conv2",
        "fold_bn: downsample.bn: applied: folded into Conv downsample.conv",
    ]


def test_listing_and_showing(capsys):
    code, out, _ = qcompile(capsys, "--list-backends")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == \
        ["academic", "acl", "fbgemm", "snpe", "tensorrt", "tvm"]
    code, out, _ = qcompile(capsys, "--list-passes")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == \
        ["align_channels", "bias_correct", "calibrate", "fold_bn", "fuse_requant", "insert_quantizers", "integer_ops",
         "integer_weights", "layer_fallback", "share_scales"]
    code, out, _ = qcompile(capsys, "--show-backend", "tvm", "--set", "quantizers.weight.bits=4")
    assert code == 0 and yaml.safe_load(out)["quantizers"]["weight"]["bits"] == 4


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "missing MODEL, --backend, --out"),
    (["{model}", "-b", "tensorrt", "-o", "{tmp}/o", "--frobnicate"], 2, "unrecognized arguments: --frobnicate"),
    (["{tmp}/absent.onnx", "-b", "tensorrt", "-o", "{tmp}/o"], 2, "no such model file"),
    (["{model}", "-b", "tensorrtt", "-o", "{tmp}/o"], 2, "unknown backend 'tensorrtt'"),
    (["{model}", "-b", "tensorrt", "-o", "{tmp}/o", "--print-after", "align_channels"], 2,
     "--print-after align_channels: not in this backend's pipeline (fold_bn, insert_quantizers, calibrate, "
     "share_scales, bias_correct, layer_fallback, integer_weights, integer_ops, fuse_requant)"),
    (["{model}", "-b", "academic", "-o", "{tmp}/o", "--stop-after", "fold_bn"], 2,
     "--stop-after fold_bn: not in this backend's pipeline (insert_quantizers"),
    (["{model}", "-b", "tensorrt", "-o", "{tmp}/o", "--set", "scheme=9"], 2, "backend tensorrt: scheme: 9 is not one of"),
    (["{model}", "-b", "tensorrt", "-o", "{tmp}/o"], 2, "backend tensorrt calibrates; pass --calib"),
    (["{model}", "-b", "tvm", "-o", "{tmp}/o", "--calib", "{tmp}"], 2, "holds no images"),
    (["{model}", "-b", "tvm", "-o", "{tmp}/o", "--calib", "{tmp}/none.npy"], 2, "not a folder of images, an .npy"),
    (["{model}", "-b", "tensorrt", "-o", "{tmp}", "--stop-after", "fold_bn"], 2, "holds the input model.onnx"),
    (["{model}", "-b", "tensorrt", "-o", "{model}", "--stop-after", "fold_bn"], 2, "is a file; give a directory"),
])
def test_usage_errors_are_one_line_exit_2(capsys, model_path, tmp_path, args, code, message):
    args = [a.format(model=model_path, tmp=tmp_path) for a in args]
    before = digest(model_path)
    result, out, err = qcompile(capsys, *args)
    assert result == code
    assert err.count("\n") == 1 and err.startswith("qcompile: error: ") and message in err
    assert digest(model_path) == before
    assert not (tmp_path / "o").exists()


def test_misspelt_key_and_unknown_pass_in_a_user_file(capsys, model_path, tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("extends: tensorrt\nquantizers:\n  activation:\n    symetric: true\n")
    code, _, err = qcompile(capsys, model_path, "-b", user, "-o", tmp_path / "o")
    assert code == 2 and "quantizers.activation.symetric: unknown key" in err
    user.write_text("extends: tensorrt\npipeline: [fold_bn, calibrat]\n")
    code, _, err = qcompile(capsys, model_path, "-b", user, "-o", tmp_path / "o")
    assert code == 2 and "unknown pass 'calibrat'; known passes: align_channels, bias_correct, calibrate, fold_bn" in err


def test_invalid_and_quantized_models_are_input_errors(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf" * 3)
    code, _, err = qcompile(capsys, bad, "-b", "tensorrt", "-o", tmp_path / "o", "--stop-after", "fold_bn")
    assert code == 2 and err.count("\n") == 1
    q = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"], name="dq")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.UINT8, [2])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(q, str(tmp_path / "q.onnx"))
    code, _, err = qcompile(capsys, tmp_path / "q.onnx", "-b", "tensorrt", "-o", tmp_path / "o", "--stop-after", "fold_bn")
    assert code == 2 and "already quantized" in err and not (tmp_path / "o").exists()


def test_failed_compile_leaves_no_output_dir(capsys, model_path, calib, tmp_path, monkeypatch):
    def explode(self, graph, ctx):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(FoldBN, "run", explode)
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib)
    assert code == 1 and "pass fold_bn failed (after import): RuntimeError: simulated failure" in err
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_existing_output_dir_keeps_other_files(capsys, model_path, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model.onnx").write_text("stale")
    assert qcompile(capsys, model_path, "-b", "tensorrt", "-o", out, "-q", "--stop-after", "fold_bn")[0] == 0
    assert (out / "notes.txt").read_text() == "mine"
    onnx.checker.check_model(str(out / "model.onnx"))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_outputs_get_the_users_umask_like_any_file(capsys, model_path, calib, tmp_path, umask):
    previous = os.umask(umask)
    try:
        code, _, _ = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib, "-q")
        code_again, _, _ = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib, "-q")
    finally:
        os.umask(previous)
    assert code == code_again == 0
    assert stat.S_IMODE((tmp_path / "o").stat().st_mode) == 0o777 & ~umask
    modes = {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "o").iterdir() if p.is_file()}
    assert modes == {0o666 & ~umask}  # written into a new folder, then over the same files in an existing one


def test_console_script_is_installed(tmp_path):
    beside_python = Path(sys.executable).with_name("qcompile")
    exe = str(beside_python) if beside_python.exists() else shutil.which("qcompile")
    if exe is None:
        pytest.skip("the qcompile console script is not installed beside this Python")
    done = subprocess.run([exe, "--list-passes"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "fold_bn" in done.stdout
    done = subprocess.run([sys.executable, "-m", "qcompiler", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("qcompile ")


@pytest.mark.parametrize("backend, override, rule", [
    ("tensorrt", "quantizers.activation.symmetric=false", "constraints.activations.symmetric allows only true"),
    ("tvm", "quantizers.activation.scale=float", "constraints.activations.scale allows only power_of_two"),
])
def test_a_contradiction_of_the_constraints_is_exit_2_before_the_model_is_read(capsys, tmp_path, backend, override,
                                                                                rule):
    unreadable = tmp_path / "model.onnx"
    unreadable.write_bytes(b"not protobuf at all" * 4)  # reading it would fail with exit 1
    code, _, err = qcompile(capsys, unreadable, "-b", backend, "--set", override, "-o", tmp_path / "o",
                            "--calib", tmp_path / "none.npy")
    assert code == 2 and err.count("\n") == 1 and rule in err and f"backend {backend}: quantizers.activation" in err
    assert not (tmp_path / "o").exists()


def test_check_takes_a_file_that_extends_a_shipped_backend(capsys, model_path, calib, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: tensorrt\nname: mine\n")
    assert qcompile(capsys, model_path, "-b", mine, "-o", tmp_path / "o", "--calib", calib, "-q")[0] == 0
    code, out, _ = qcompile(capsys, "check", "--backend", mine, tmp_path / "o" / "model.trt.onnx")
    assert code == 0 and out.startswith("mine: 0 violation(s); 3 of 3 weighted ops will run in int8")
    # the same model against a file whose constraints it breaks: uint8 activations only
    uint8 = tmp_path / "uint8.yaml"
    uint8.write_text("extends: tensorrt\nname: uint8\nquantizers: {activation: {signedness: unsigned}}\n"
                     "constraints: {activations: {signedness: [unsigned]}}\n")
    code, out, _ = qcompile(capsys, "check", "--backend", uint8, tmp_path / "o" / "model.trt.onnx")
    assert code == 1 and "int8 activations; uint8 takes uint8 activations (constraints.activations.signedness)" in out


def test_check_a_backend_without_rules_is_a_usage_error(capsys, model_path):
    code, _, err = qcompile(capsys, "check", "--backend", "academic", model_path)
    assert code == 2 and "no rules to check" in err and "backends with rules: acl, fbgemm, snpe, tensorrt, tvm" in err


def test_snpe_has_no_checker_of_its_own_but_its_constraints_are_checked(capsys, model_path, calib, tmp_path):
    assert qcompile(capsys, model_path, "-b", "snpe", "-o", tmp_path / "o", "--calib", calib, "-q")[0] == 0
    code, out, _ = qcompile(capsys, "check", "--backend", "snpe", tmp_path / "o" / "model.qdq.onnx")
    assert code == 0 and out.startswith("snpe: 0 violation(s)")
    assert qcompile(capsys, model_path, "-b", "fbgemm", "-o", tmp_path / "f", "--calib", calib, "-q")[0] == 0
    code, out, _ = qcompile(capsys, "check", "--backend", "snpe", tmp_path / "f" / "model.qdq.onnx")
    assert code == 0  # QNN also takes int8 symmetric per-channel weights
    code, out, _ = qcompile(capsys, "check", "--backend", "tvm", tmp_path / "f" / "model.qdq.onnx")
    assert code == 1 and "a scale that is not a power of two; tvm takes power-of-two scales" in out


@pytest.mark.parametrize("flags", [["--emit-option", "trt_version=8.6.1"], ["--trt-version", "8.6.1"]])
def test_emitter_options_from_the_command_line(capsys, model_path, calib, tmp_path, flags):
    assert qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib, "-q", *flags)[0] == 0
    assert (tmp_path / "o" / "calibration.cache").read_text().startswith("TRT-8601-EntropyCalibration2\n")


@pytest.mark.parametrize("backend, flags, message", [
    ("tensorrt", ["--emit-option", "trt_versoin=8.6.1"],
     "--emit-option trt_versoin: this backend emits tensorrt, none of which reads --emit-option trt_versoin"),
    ("snpe", ["--encodings-version", "3.0.0"], "emit[0].options.encodings_version: '3.0.0' is not one of"),
    ("snpe", ["--emit-option", "encodings_version"], "expected KEY=VALUE"),
])
def test_bad_emitter_options_are_one_line_exit_2(capsys, model_path, calib, tmp_path, backend, flags, message):
    code, _, err = qcompile(capsys, model_path, "-b", backend, "-o", tmp_path / "o", "--calib", calib, *flags)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_a_compile_in_memory_makes_every_file_and_writes_none(model_path, calib, tmp_path, monkeypatch):
    from qcompiler.driver import CompileRequest, compile_model

    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = compile_model(CompileRequest(model=model_path, backend="tensorrt", out=None, calib=str(calib)))
    assert sorted(tmp_path.rglob("*")) == before and result.outputs == []
    assert sorted(result.files) == ["calibration.cache", "dynamic_range.json", "model.int.onnx", "model.onnx",
                                    "model.qdq.onnx", "model.trt.onnx", "pipeline.txt", "qparams.json", "report.json"]
    assert result.files["model.qdq.onnx"] is result.graph and result.files["model.onnx"] is result.float_graph
    assert result.files["model.int.onnx"] is result.integer_graph
    written = compile_model(CompileRequest(model=model_path, backend="tensorrt", out=tmp_path / "o", calib=str(calib)))
    assert (tmp_path / "o" / "qparams.json").read_text() == result.files["qparams.json"]
    assert [p.name for p in written.outputs] == list(result.files)


def test_a_model_past_the_protobuf_limit_is_written_with_external_data(capsys, model_path, calib, tmp_path,
                                                                       monkeypatch):
    from qcompiler import runtime
    from qcompiler.driver import CompileRequest, compile_model
    from qcompiler.graph import serialize
    from qcompiler.graph.importer import import_model

    monkeypatch.setattr(serialize, "EXTERNAL_DATA_BYTES", 20_000)  # the test model's float weights: 47 kB
    out = tmp_path / "out"
    result = compile_model(CompileRequest(model=model_path, backend="tensorrt", out=out, calib=str(calib)))
    names = [p.name for p in result.outputs]
    assert {"model.onnx.data", "model.qdq.onnx.data"} <= set(names) and (out / "model.onnx.data").is_file()
    assert names.index("model.onnx.data") == names.index("model.onnx") + 1
    assert (out / "model.onnx").stat().st_size < 10_000  # the weights are beside it, not in it
    onnx.checker.check_model(str(out / "model.qdq.onnx"))
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 16, 16, 16)).astype(np.float32)}
    for name, graph in (("model.onnx", result.float_graph), ("model.qdq.onnx", result.graph)):
        (from_file,) = runtime.run(out / name, feeds)
        (from_graph,) = runtime.run(graph, feeds)
        np.testing.assert_array_equal(from_file, from_graph)
    again, _ = import_model(out / "model.onnx")  # read back, external data and all
    assert {t.name for t in again.tensors().values()} >= {c.name for c in result.float_graph.tensors().values()
                                                          if c.__class__.__name__ == "Constant"}
    assert qcompile(capsys, "check", "--backend", "tensorrt", out / "model.trt.onnx")[0] == 0
    code, text, _ = qcompile(capsys, "eval", out / "model.onnx", out / "model.qdq.onnx", "--data", calib)
    assert code == 0 and "SQNR" in text
