"""Bad input is refused before work starts, in one line, and nothing is left behind.

RUN: qcompile <model> -b <backend> -o OUT --calib <data> [flags], with one thing wrong each time;
every case asserts the exit code (2: the invocation or an input, 1: a valid model that fails to
compile), the message, and that OUT, the dump folder and every staging folder are absent and the
input is unchanged.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from qcompiler.cli import main
from qcompiler.data.images import Preprocess
from qcompiler.data.sources import InputSpec, open_data
from qcompiler.errors import first_line
from qcompiler.passes.fold_bn import FoldBN
from qcompiler.testing.cli import digest, qcompile
from qcompiler.testing.models import TEST_MODELS, ModelBuilder


def nothing_left(folder: Path) -> bool:
    """Nothing of a compile in ``folder``: no out/, no dump/, no staging folder."""
    return not [p.name for p in folder.iterdir() if p.name.startswith((".o.", "o", ".dump.", "dump"))]


@pytest.fixture
def rgb_model(model_file):
    """A small image model: [N, 3, 8, 8] -> Conv -> Relu -> Conv."""
    b = ModelBuilder("rgb", 7)
    y = b.conv("head", b.relu("relu", b.conv("stem", b.input("x", ["N", 3, 8, 8]), 3, 8)), 8, 4, kernel=1)
    return model_file(b.build([(y, ["N", 4, 8, 8])]), "rgb.onnx")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(folder / f"p{index}.png")
    return folder


def single_op_model(op: str, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="only")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dtype, ["N", 4])],
                              [helper.make_tensor_value_info("y", dtype, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def custom_op_model() -> onnx.ModelProto:
    """Gemm, then an op of a domain onnxruntime does not know."""
    b = ModelBuilder("custom", 5)
    y = b.gemm("fc", b.input("x", ["N", 4]), 4, 4)
    b.nodes.append(helper.make_node("MyOp", [y], ["y"], name="mine", domain="my.custom"))
    graph = helper.make_graph(b.nodes, "custom", b.inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.custom", 1)])


# --- the model's batch -----------------------------------------------------------

def test_a_model_with_a_fixed_batch_compiles_and_evaluates_at_that_batch(capsys, model_file, calib, tmp_path):
    model = TEST_MODELS["resnet_basic_block"]()
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1  # torch.onnx's default export
    path = model_file(model, "fixed.onnx")
    code, out, _ = qcompile(capsys, path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib)
    assert code == 0 and "calibrate" in out and "samples=12" in out
    code, out, err = qcompile(capsys, "eval", path, tmp_path / "o" / "model.qdq.onnx", "--data", calib)
    assert code == 0 and "(12 samples)" in out, err
    code, _, err = qcompile(capsys, "eval", path, tmp_path / "o" / "model.qdq.onnx", "--data", calib,
                            "--batch-size", "4")
    assert code == 2 and "fix the batch at 1" in err


# --- preprocessing -------------------------------------------------------------

def test_mean_and_std_alone_keep_the_resize_to_the_input(capsys, rgb_model, photos, tmp_path):
    code, _, err = qcompile(capsys, rgb_model, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", photos,
                            "--mean", "120,120,120", "--std", "60,60,60", "-q")
    assert code == 0 and "warning" not in err


def test_a_size_that_does_not_fit_names_the_flag_that_fixes_it(capsys, rgb_model, photos, tmp_path):
    code, _, err = qcompile(capsys, rgb_model, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", photos,
                            "--resize-shorter", "16")
    assert code == 2 and err.count("\n") == 1 and "size them with --resize 8x8 or --crop 8x8" in err
    assert nothing_left(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--mean", "1,2"], "mean has 2 values; give 3 (R,G,B) or 1 for all channels"),
    (["--std", "0,1,1"], "std [0.0, 1.0, 1.0]: every value divides the pixels, so each must be positive"),
    (["--scale", "0"], "scale 0.0: give a positive factor"),
])
def test_bad_preprocessing_flags_are_one_line_usage_errors(capsys, rgb_model, photos, tmp_path, flags, message):
    code, _, err = qcompile(capsys, rgb_model, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", photos, *flags)
    assert code == 2 and err.count("\n") == 1 and message in err and "Warning" not in err
    assert nothing_left(tmp_path)


def test_a_one_channel_model_reads_photos_in_grayscale(capsys, model_file, photos, tmp_path):
    b = ModelBuilder("gray", 7)
    y = b.conv("head", b.relu("relu", b.conv("stem", b.input("x", ["N", 1, 8, 8]), 1, 8)), 8, 4, kernel=1)
    model = b.build([(y, ["N", 4, 8, 8])])
    feed = open_data(str(photos), InputSpec.of_model(model), Preprocess(mean=(100.0,), std=(50.0,))).head(2)
    first = Image.open(photos / "p0.png").convert("L").resize((8, 8), Image.BILINEAR)
    np.testing.assert_array_equal(feed["x"][0, 0], (np.asarray(first, np.float32) - 100) / 50)
    code, _, err = qcompile(capsys, model_file(model, "gray.onnx"), "-b", "tensorrt", "-o", tmp_path / "o",
                            "--calib", photos, "--mean", "100", "--std", "50", "-q")
    assert code == 0 and err == ""


@pytest.mark.parametrize("image, mode", [
    (lambda rng: Image.fromarray(rng.integers(0, 65535, (24, 32), dtype=np.uint16)), "I;16"),
    (lambda rng: Image.fromarray(rng.random((24, 32), dtype=np.float32)), "F"),
])
def test_images_deeper_than_8_bits_are_refused_not_clipped(capsys, rgb_model, tmp_path, image, mode):
    folder = tmp_path / "deep"
    folder.mkdir()
    image(np.random.default_rng(0)).save(folder / "a.tiff")
    code, _, err = qcompile(capsys, rgb_model, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", folder,
                            "--mean", "0")
    assert code == 2 and err == (f"qcompile: error: a.tiff has pixels of mode {mode} (16-bit or float); qcompile "
                                 "reads 8-bit images: convert it, or give the inputs as .npy\n")
    assert nothing_left(tmp_path)


def test_a_preprocess_file_that_is_not_yaml_says_where(capsys, rgb_model, photos, tmp_path):
    spec = tmp_path / "pre.yaml"
    spec.write_text("mean: [1, 2\n")
    code, _, err = qcompile(capsys, rgb_model, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", photos,
                            "--preprocess", spec)
    assert code == 2 and err == (f"qcompile: error: --preprocess {spec} is not valid YAML (line 2, column 1: "
                                 "expected ',' or ']', but got '<stream end>'); fix it there\n")
    assert nothing_left(tmp_path)


# --- the README's own --set example ---------------------------------------------------

def test_the_readme_set_example_works_on_a_pass_listed_by_name(capsys, model_path, calib, tmp_path):
    code, _, _ = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib, "-q",
                          "--set", "pipeline[0].options.standalone=keep")
    assert code == 0 and "'standalone': 'keep'" in (tmp_path / "o" / "pipeline.txt").read_text()


# --- nothing left behind ------------------------------------------------------

def test_a_failed_compile_with_its_dump_inside_out_leaves_neither(capsys, model_path, calib, tmp_path, monkeypatch):
    monkeypatch.setattr(FoldBN, "run", lambda self, graph, ctx: 1 / 0)
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--dump-dir",
                            tmp_path / "o" / "dump", "--calib", calib)
    assert code == 1 and "ZeroDivisionError" in err
    assert nothing_left(tmp_path)


def test_an_interrupt_says_so_and_writes_nothing(capsys, model_path, calib, tmp_path, monkeypatch):
    def interrupted(self, graph, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(FoldBN, "run", interrupted)
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--dump-dir",
                            tmp_path / "o" / "dump", "--calib", calib)
    assert code == 1 and err == f"qcompile: error: interrupted; nothing was written ({tmp_path / 'o'} is as it was)\n"
    assert nothing_left(tmp_path)


def test_a_dump_outside_out_is_moved_in_with_the_outputs(capsys, model_path, calib, tmp_path):
    code, _, _ = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--dump-dir",
                          tmp_path / "deep" / "dump", "--calib", calib, "-q")
    assert code == 0 and (tmp_path / "deep" / "dump" / "001_fold_bn.qir").is_file()
    assert not [p for p in tmp_path.rglob(".*.partial")]


def test_a_staging_folder_left_by_a_killed_run_is_removed_by_the_next(capsys, model_path, calib, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / ".o.0123456789ab.partial"
    stale.mkdir()
    (stale / ".qcompile-owner").write_text(str(dead.pid))
    (stale / "model.onnx").write_bytes(b"half")
    alive = tmp_path / ".o.ba9876543210.partial"  # another run's, still going
    alive.mkdir()
    (alive / ".qcompile-owner").write_text(str(os.getpid()))
    assert qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib, "-q")[0] == 0
    assert not stale.exists() and alive.exists()


def test_sigterm_during_a_compile_leaves_nothing(model_path, tmp_path):
    (tmp_path / "slow_feeds.py").write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        import numpy as np
        def feeds():
            Path({str(tmp_path / 'started')!r}).touch()
            time.sleep(60)
            yield {{"x": np.zeros((1, 16, 16, 16), np.float32)}}
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "qcompiler", str(model_path), "-b", "tensorrt", "-o",
                                str(tmp_path / "o"), "--dump-dir", str(tmp_path / "o" / "dump"), "--calib",
                                "slow_feeds:feeds"], env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "interrupted; nothing was written" in err
    assert nothing_left(tmp_path)


# --- output folders -------------------------------------------------------------

@pytest.mark.parametrize("out, message", [
    ("/proc/qcompile-out", "cannot write into /proc"),
    ("{tmp}/calib.npy/out", "is a file, so"),
    ("{tmp}", "holds the input"),
])
def test_an_output_folder_that_cannot_be_written_fails_before_any_work(capsys, model_path, calib, tmp_path,
                                                                        out, message):
    code, out_text, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", out.format(tmp=tmp_path),
                                   "--calib", calib)
    assert code == 2 and err.count("\n") == 1 and message in err and "internal error" not in err
    assert out_text == ""  # not even the import ran


def test_a_dump_folder_that_is_the_output_folder_is_refused(capsys, model_path, calib, tmp_path):
    code, out_text, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib,
                                   "--dump-dir", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1
    assert f"give the dump its own folder, e.g. --dump-dir {tmp_path}/o/dump" in err
    assert out_text == "" and nothing_left(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--emit-option", "trt_version=ten"], "--trt-version 'ten': give major.minor[.patch]"),
    (["--trt-version", "6.0"], "calibration caches in this format start at TensorRT 7"),
])
def test_an_emitter_option_it_cannot_use_fails_before_any_work(capsys, model_path, calib, tmp_path, flags, message):
    code, out_text, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib,
                                   *flags)
    assert code == 2 and err.count("\n") == 1 and message in err and "calibrate" not in err
    assert out_text == "" and nothing_left(tmp_path)


def test_the_data_is_protected_like_the_model(capsys, model_path, tmp_path):
    data = tmp_path / "o" / "calib.npy"
    data.parent.mkdir()
    np.save(data, np.zeros((2, 16, 16, 16), np.float32))
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", data)
    assert code == 2 and "holds the input calib.npy" in err


# --- degenerate data warns; --strict fails ------------------------------------------------

def test_all_zero_calibration_data_warns_in_one_line_and_in_the_report(capsys, model_path, tmp_path):
    zeros = tmp_path / "zeros.npy"
    np.save(zeros, np.zeros((12, 16, 16, 16), np.float32))
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", zeros, "-q")
    warning = "qcompile: warning: calibration input x is 0 in every sample"
    assert code == 0 and err.startswith(warning) and err.count("\n") == 1
    assert json.loads((tmp_path / "o" / "report.json").read_text())["warnings"][0].startswith(warning[19:])
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o2", "--calib", zeros, "--strict")
    assert code == 2 and "--strict makes it an error" in err and not (tmp_path / "o2").exists()


def test_photos_without_preprocessing_warn_and_strict_refuses_them_before_import(capsys, rgb_model, photos,
                                                                                   tmp_path):
    code, _, err = qcompile(capsys, rgb_model, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", photos, "-q")
    assert code == 0 and err.startswith("qcompile: warning: no image preprocessing given") and err.count("\n") == 1
    assert "no image preprocessing given" in json.loads((tmp_path / "o" / "report.json").read_text())["warnings"][0]
    code, out, err = qcompile(capsys, rgb_model, "-b", "tensorrt", "-o", tmp_path / "o2", "--calib", photos,
                              "--strict", "--dump-dir", tmp_path / "dump")
    assert code == 2 and err.count("\n") == 1 and "--strict makes it an error" in err and out == ""
    assert not (tmp_path / "o2").exists() and not (tmp_path / "dump").exists()


def test_too_few_samples_warn(capsys, model_path, tmp_path):
    two = tmp_path / "two.npy"
    np.save(two, np.random.default_rng(0).standard_normal((2, 16, 16, 16)).astype(np.float32))
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", two, "-q")
    assert code == 0 and "calibration saw 2 sample(s), fewer than the 8 its estimators need" in err
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o2", "--calib", two, "-q",
                            "--set", "calibration.activations.estimator=minmax")
    assert code == 0 and err == ""  # minmax is the whole data's range from one sample on


def test_an_activation_the_data_never_reaches_warns(capsys, model_file, tmp_path):
    b = ModelBuilder("dead", 3)
    x = b.input("x", ["N", 4])
    dead = b.node("Mul", "dead", [x, b.const("zero", np.zeros(4, np.float32))])  # a branch switched off
    model = b.build([(b.gemm("fc", dead, 4, 3), ["N", 3])])
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32))
    code, _, err = qcompile(capsys, model_file(model), "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib, "-q")
    assert code == 0 and "1 activation(s) have a zero range, e.g. dead" in err


# --- one-line messages, one exit-code rule -------------------------------------------------

@pytest.mark.parametrize("model, code, message", [
    (custom_op_model, 1, "onnxruntime cannot load the model"),
    (lambda: single_op_model("Relu"), 1, "nothing to quantize in this model for backend tensorrt: it has no float32"),
    (lambda: single_op_model("Relu", TensorProto.FLOAT16), 1, "its tensors are float16"),
])
def test_models_qcompile_cannot_compile_say_why_in_one_line(capsys, model_file, tmp_path, model, code, message):
    path = model_file(model(), "m.onnx")
    calib = tmp_path / "c.npy"
    dtype = np.float16 if "float16" in message else np.float32
    np.save(calib, np.ones((12, 4), dtype))
    result, _, err = qcompile(capsys, path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib)
    assert result == code and err.count("\n") == 1 and message in err and "internal error" not in err
    assert "onnxruntime_src" not in err  # onnxruntime's own words, without its C++ source locations
    assert not (tmp_path / "o").exists()


def invalid_onnx_model() -> bytes:
    """A Relu reading a tensor nothing defines: a message onnx parses but its checker refuses."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["ghost"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def matmul_model(shape: list, opset: int = 17) -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    weight = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


@pytest.mark.parametrize("content, message", [
    (lambda: b"", "m.onnx is empty (0 bytes); give an .onnx model file"),
    (lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "m.onnx could not be read as ONNX"),
    (lambda: helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString(),
     "m.onnx holds no graph (no nodes)"),
    (invalid_onnx_model, "m.onnx is not a valid ONNX model"),
    (lambda: matmul_model(["N", 4], opset=onnx.defs.onnx_opset_version() + 2),
     f"newer than the {onnx.defs.onnx_opset_version()} that onnx {onnx.__version__} knows; export it at opset"),
    (lambda: matmul_model([0, 4]), "input x has shape [0, 4]: a dimension of 0 holds no data"),
])
def test_a_model_file_that_is_not_a_model_is_an_input_error(capsys, tmp_path, content, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(content())
    calib = tmp_path / "c.npy"
    np.save(calib, np.ones((12, 4), np.float32))
    before = digest(path)
    code, _, err = qcompile(capsys, path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib)
    assert code == 2 and err.count("\n") == 1 and message in err and "internal error" not in err
    assert digest(path) == before and nothing_left(tmp_path)


@pytest.mark.parametrize("array, message", [
    (np.full((4, 16, 16, 16), np.nan, np.float32), "holds NaN or Inf values; drop those samples"),
    (np.zeros((4, 16, 9, 16), np.float32), "does not fit input x"),
    (np.zeros((4, 16, 16, 16), np.float64), "dtype float64, but input x takes float32; convert it"),
])
def test_bad_data_is_exit_2_before_the_model_is_imported(capsys, model_path, tmp_path, array, message):
    data = tmp_path / "bad.npy"
    np.save(data, array)
    before = digest(model_path)
    code, out, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", data)
    assert code == 2 and err.count("\n") == 1 and message in err and out == ""
    assert digest(model_path) == before and nothing_left(tmp_path)


def test_a_calibration_size_of_zero_is_refused(capsys, model_path, calib, tmp_path):
    code, _, err = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib,
                            "--calib-size", "0")
    assert code == 2 and "--calib-size 0: give a positive number of samples" in err


def test_eval_refuses_its_models_swapped_or_unrelated(capsys, model_path, model_file, calib, tmp_path):
    assert qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib, "-q")[0] == 0
    quantized = tmp_path / "o" / "model.qdq.onnx"
    code, out, err = qcompile(capsys, "eval", quantized, model_path, "--data", calib)
    assert code == 2 and out == "" and "model.qdq.onnx is quantized; eval compares a quantized model" in err
    other = model_file(TEST_MODELS["gemm_head"](), "other.onnx")
    np.save(other_data := tmp_path / "other.npy", np.ones((2, 32, 4, 4), np.float32))
    code, out, err = qcompile(capsys, "eval", other, quantized, "--data", other_data)
    assert code == 2 and out == "" and err.count("\n") == 1 and "the models' outputs differ" in err


def test_onnxruntime_messages_lose_their_cpp_source_locations():
    message = ("[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/"
               "model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::"
               "unordered_map<std::string, int>&, bool) Opset 30 is under development.")
    assert first_line(RuntimeError(message)) == "Load model from m.onnx failed: Opset 30 is under development."
    assert first_line(RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions")) == \
        "Got invalid dimensions"
    assert first_line(ValueError("a plain message\nand more")) == "a plain message"


def test_check_refuses_a_float_model(capsys, model_path):
    code, _, err = qcompile(capsys, "check", "--backend", "tensorrt", model_path)
    assert code == 2 and "is a float model (no quantizer, no integer op)" in err


def test_help_names_eval_and_check(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "qcompile eval" in text and "qcompile check" in text


def test_a_compile_ends_with_one_summary_line(capsys, model_path, calib, tmp_path):
    code, out, _ = qcompile(capsys, model_path, "-b", "tensorrt", "-o", tmp_path / "o", "--calib", calib)
    last = out.splitlines()[-1]
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    sqnr = report["outputs"][0]["sqnr_db"]
    assert code == 0 and last == (f"tensorrt: 3 of 3 weighted ops quantized; end-to-end SQNR {sqnr} dB on 4 samples "
                                  "(report.json)")
