"""Compile time and peak memory against one float onnxruntime pass, as models grow past protobuf's 2 GB.

Run by hand (not in CI):

    python benchmarks/scale.py [--samples 32] [--out benchmarks/results/scale.md]

Models: onnx's light ResNet-50 and VGG-19 (98 MB and 549 MB of weights,
made at load from ConstantOfShape; a fixed batch of 1), and a generated MLP
with 2.4 GB of weights kept in external data, as such models come. Each
command runs as a fresh process under /usr/bin/time, so that interpreter
start, imports and session creation count on both sides: the float pass is
benchmarks/float_pass.py over the same samples at batch 1, the compile
``qcompile MODEL -b tensorrt --calib samples.npy`` (every backend for the
MLP, whose Q/DQ model is then run in onnxruntime from the written files).
Times are the best of two runs, memory the peak resident set. Anything a
run prints on stderr is a failure: no warning may reach the user.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from qcompiler.config.loader import shipped_backends
from qcompiler.data.sources import InputSpec

REPO = Path(__file__).resolve().parents[1]
LIGHT_ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
FLOAT_PASS = REPO / "benchmarks" / "float_pass.py"
MLP_WIDTH = 12288   # four 12288 x 12288 float32 Gemm weights: 2.4 GB
MLP_LAYERS = 4


def mlp_past_two_gigabytes(folder: Path) -> Path:
    """An MLP whose weights (2.4 GB) are in mlp.onnx.data beside mlp.onnx, written without protobuf copies."""
    path, data = folder / "mlp.onnx", folder / "mlp.onnx.data"
    rng = np.random.default_rng(0)
    initializers, nodes, offset, x = [], [], 0, "x"
    with data.open("wb") as out:
        for index in range(MLP_LAYERS):
            weight = (rng.standard_normal((MLP_WIDTH, MLP_WIDTH), np.float32) / np.sqrt(MLP_WIDTH)).astype(np.float32)
            weight.tofile(out)
            tensor = TensorProto(name=f"fc{index}.weight", data_type=TensorProto.FLOAT, dims=weight.shape,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(weight.nbytes))):
                tensor.external_data.add(key=key, value=value)
            offset += weight.nbytes
            bias = helper.make_tensor(f"fc{index}.bias", TensorProto.FLOAT, [MLP_WIDTH], np.zeros(MLP_WIDTH).tolist())
            initializers += [tensor, bias]
            y = f"fc{index}"
            nodes.append(helper.make_node("Gemm", [x, tensor.name, bias.name], [y], name=y, transB=1))
            if index < MLP_LAYERS - 1:
                nodes.append(helper.make_node("Relu", [y], [f"{y}.relu"], name=f"{y}.relu"))
                y = f"{y}.relu"
            x = y
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, MLP_WIDTH])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, MLP_WIDTH])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB and stderr of ``command`` run under /usr/bin/time."""
    with tempfile.NamedTemporaryFile(suffix=".time") as report:
        done = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%e %M", *command],
                              capture_output=True, text=True)
        seconds, kilobytes = Path(report.name).read_text().split()[-2:]
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(seconds), float(kilobytes) / 1024, done.stderr


def best_of_two(command: list[str]) -> tuple[float, float, str]:
    runs = [timed(command) for _ in range(2)]
    return min(r[0] for r in runs), max(r[1] for r in runs), "".join(r[2] for r in runs)


def samples_for(model: Path, count: int, folder: Path) -> Path:
    """``count`` seeded standard-normal samples of the model's one input (initializers listed as inputs aside)."""
    (spec,) = InputSpec.of_model(onnx.load(str(model), load_external_data=False))
    path = folder / f"{model.stem}.samples.npy"
    np.save(path, np.random.default_rng(1).standard_normal([count, *spec.shape[1:]]).astype(np.float32))
    return path


def compare(model: Path, samples: Path, backends: list[str], work: Path) -> list[tuple]:
    float_seconds, float_mib, float_err = best_of_two([sys.executable, str(FLOAT_PASS), str(model), str(samples),
                                                       "--batch", "1"])
    rows = []
    for backend in backends:
        out = work / f"{model.stem}.{backend}"
        seconds, mib, err = best_of_two([sys.executable, "-m", "qcompiler", str(model), "-b", backend, "-o", str(out),
                                         "--calib", str(samples), "-q"])
        ran = run_written_qdq(out, samples) if model.stem == "mlp" else ""
        rows.append((model.name, backend, float_seconds, float_mib, seconds, mib, (float_err + err).strip(), ran))
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return rows


def run_written_qdq(out: Path, samples: Path) -> str:
    """Runs out/model.qdq.onnx (and its external data) in onnxruntime on one sample; says what it wrote."""
    from qcompiler import runtime

    files = sorted(p.name for p in out.iterdir())
    (result,) = runtime.run(out / "model.qdq.onnx", {"x": np.load(samples)[:1]})
    assert np.isfinite(result).all()
    return "ran; wrote " + ", ".join(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=REPO.parent) as folder:
        work = Path(folder)
        for model in (LIGHT_ZOO / "light_resnet50.onnx", LIGHT_ZOO / "light_vgg19.onnx"):
            rows += compare(model, samples_for(model, args.samples, work), ["tensorrt"], work)
        mlp = mlp_past_two_gigabytes(work)
        rows += compare(mlp, samples_for(mlp, args.samples, work), shipped_backends(), work)
    lines = [f"# Compile time and peak memory against one float pass ({args.samples} samples, batch 1)", "",
             "| model | backend | float pass | qcompile | ratio time / memory | notes |", "|---|---|---|---|---|---|"]
    for name, backend, fs, fm, qs, qm, stderr, notes in rows:
        warned = f"stderr: {stderr[:80]!r}" if stderr else "no warnings"
        lines.append(f"| {name} | {backend} | {fs:.2f} s / {fm:.0f} MiB | {qs:.2f} s / {qm:.0f} MiB | "
                     f"{qs / fs:.2f}x / {qm / fm:.2f}x | {warned}{'; ' + notes if notes else ''} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
