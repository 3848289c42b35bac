"""MobileNetV2 on every backend: fidelity, compile time and memory, against onnxruntime's quantize_static.

Run by hand (not in CI), from the checkout with ../shared beside it:

    python benchmarks/mobilenetv2_backends.py [--ort-methods MinMax Percentile] [--out benchmarks/results/mobilenetv2_backends.md]

Calibration: the even-numbered photos of ../shared/images (sorted by name);
evaluation: the odd-numbered ones. For every backend it reports top-1 / top-5
agreement with the float model and logit SQNR, next to quantize_static in
the closest setting onnxruntime offers (for TVM: its scales, and the weights
with them, rounded up to powers of two afterwards, since quantize_static has
no such option); then qcompile's wall time divided by one plain onnxruntime
float pass over the same photos (benchmarks/float_pass.py). Both are timed
the same way: a fresh process, so interpreter start, imports, session
creation and image decoding count on both sides; best of two. Last, wall
time and peak memory with 64 and 512 calibration samples, from the photo
folder and from a preprocessed .npy.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qcompiler.config.loader import shipped_backends
from qcompiler.data.images import Preprocess, list_images, load_batch
from qcompiler.data.sources import InputSpec, open_data
from qcompiler.measure.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODEL = SHARED / "models" / "mobilenetv2_bn.onnx"
IMAGENET = Preprocess(resize_shorter=256, crop=(224, 224), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
PREPROCESS = REPO / "examples" / "mobilenetv2" / "preprocess.yaml"
FLOAT_PASS = REPO / "benchmarks" / "float_pass.py"
BATCH = 16


def ort_settings() -> dict[str, dict]:
    """The closest onnxruntime quantize_static setting to each backend (QDQ format)."""
    from onnxruntime.quantization import QuantType

    weighted_only = ["Conv", "Gemm", "MatMul"]
    symmetric = {"ActivationSymmetric": True, "WeightSymmetric": True}
    return {
        "academic": dict(per_channel=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                         extra_options=symmetric, op_types_to_quantize=weighted_only),
        "tensorrt": dict(per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                         extra_options=symmetric),
        "snpe": dict(per_channel=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                     extra_options={"ActivationSymmetric": False, "WeightSymmetric": False}),
        "fbgemm": dict(per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                       extra_options={"WeightSymmetric": True}),
        "tvm": dict(per_channel=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options=symmetric),
        "acl": dict(per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    op_types_to_quantize=weighted_only),
    }


# Linux carries a process's peak-RSS mark across fork and exec, so a child of
# this (large) process would report our peak; a fresh small parent does not.
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def run_measured(command: list[str], repeat: int = 2) -> tuple[float, float]:
    """Run ``command`` ``repeat`` times; return its best wall time (s) and its peak RSS (MiB)."""
    runs = []
    for _ in range(repeat):
        done = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True)
        seconds, max_rss_kib, code = done.stdout.split()
        if int(code) != 0:
            raise SystemExit(f"{' '.join(command)} failed: {done.stderr}")
        runs.append((float(seconds), int(max_rss_kib) / 1024))
    return min(seconds for seconds, _ in runs), max(rss for _, rss in runs)


def float_pass_seconds(data: Path) -> float:
    """One plain float pass over ``data`` in a fresh process (benchmarks/float_pass.py)."""
    preprocess = ["--preprocess", str(PREPROCESS)] if data.is_dir() else []
    return run_measured([sys.executable, str(FLOAT_PASS), str(MODEL), str(data), *preprocess, "--batch", str(BATCH)])[0]


def compile_measured(qcompile: str, backend: str, data: Path, out: Path) -> tuple[float, float]:
    preprocess = ["--preprocess", str(PREPROCESS)] if data.is_dir() else []
    return run_measured([qcompile, str(MODEL), "-b", backend, "-o", str(out), "--calib", str(data), *preprocess, "-q"])


def photo_folder(folder: Path, photos: list[Path], count: int) -> Path:
    """``folder`` holding ``count`` links to ``photos``, repeated in order."""
    folder.mkdir()
    for index in range(count):
        photo = photos[index % len(photos)]
        os.symlink(photo, folder / f"{index:04d}_{photo.name}")
    return folder


# backends whose scales must be powers of two, which quantize_static cannot ask for
POWER_OF_TWO = {"tvm"}


def ort_quantize(backend: str, method: str, calib: np.ndarray, out: Path, model: Path = MODEL) -> tuple[Path, float]:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        # one sample per batch: onnxruntime's histogram calibrators reject a short last batch
        def __init__(self):
            self.batches = iter([{"input": calib[i: i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.batches, None)

    path = out / f"ort_{backend}_{method}.onnx"
    start = time.perf_counter()
    quantize_static(str(model), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    calibrate_method=getattr(CalibrationMethod, method), **ort_settings()[backend])
    seconds = time.perf_counter() - start
    if backend in POWER_OF_TWO:
        path = round_scales_to_power_of_two(path)
    return path, seconds


def round_scales_to_power_of_two(path: Path) -> Path:
    """A copy of a quantize_static QDQ model with every scale rounded up to a power of two (as TVM needs).

    Quantized initializers (weights, biases) are re-quantized on their new
    scale; activation quantizers only change scale.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    initializers = {i.name: i for i in model.graph.initializer}

    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name])

    rounded: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[1] in rounded:
            continue
        scale = value(node.input[1])
        new_scale = np.exp2(np.ceil(np.log2(scale))).astype(np.float32)
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            quantized = value(node.input[0])
            zero = value(node.input[2]).astype(np.float32) if len(node.input) > 2 else np.float32(0)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.ndim else 0
            shape = [-1 if d == min(axis, quantized.ndim - 1) and scale.ndim else 1 for d in range(quantized.ndim)]
            real = (quantized - zero.reshape(shape)) * scale.reshape(shape)
            info = np.iinfo(quantized.dtype)
            requantized = np.clip(np.round(real / new_scale.reshape(shape)) + zero.reshape(shape), info.min, info.max)
            initializers[node.input[0]].CopyFrom(numpy_helper.from_array(requantized.astype(quantized.dtype),
                                                                         node.input[0]))
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(new_scale, node.input[1]))
        rounded.add(node.input[1])
    pow2_path = path.with_name(path.stem + "_pow2.onnx")
    onnx.save(model, pow2_path)
    return pow2_path


def agreement(quant: Path, held_out: Path, onnxruntime_kernels: bool = False) -> tuple[float, float, float]:
    """Top-1 and top-5 agreement (%) and logit SQNR (dB) of ``quant`` with the float model (qcompile eval)."""
    data = open_data(str(held_out), [InputSpec("input", ("N", 3, 224, 224), np.dtype(np.float32))])
    (logits,) = evaluate(MODEL, quant, data, onnxruntime_kernels=onnxruntime_kernels).outputs
    return 100 * logits.top1 / logits.samples, 100 * logits.top5 / logits.samples, logits.sqnr_db


def split_photos(work: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """The calibration photos (even-numbered), and both halves preprocessed, saved as calib.npy and held.npy."""
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is missing: run from a checkout with ../shared beside it")
    photos = list_images(SHARED / "images")
    calib, held = load_batch(photos[0::2], IMAGENET), load_batch(photos[1::2], IMAGENET)
    np.save(work / "calib.npy", calib)
    np.save(work / "held.npy", held)
    return photos[0::2], calib, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-methods", nargs="+", default=["MinMax", "Percentile"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mobilenetv2_backends.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qcompile-bench-"))
    calib_photos, calib, held = split_photos(work)
    calib_folder = photo_folder(work / "calib", calib_photos, len(calib_photos))
    float_seconds = float_pass_seconds(calib_folder)
    qcompile = str(Path(sys.executable).with_name("qcompile"))

    lines = [f"# MobileNetV2 on every backend ({len(calib)} calibration photos, {len(held)} held out)", "",
             f"One plain float onnxruntime pass over the calibration photos (fresh process, batch {BATCH}): "
             f"{float_seconds:.2f} s. Agreement with the float model as `qcompile eval` measures it: every Q/DQ "
             "model run as the ONNX spec defines Q/DQ, not in onnxruntime's fused integer kernels.", "",
             "| backend | qcompile top-1 / top-5 / SQNR | quantize_static, matching setting (method) "
             "| qcompile wall time | / float pass |",
             "|---|---|---|---|---|"]
    for backend in shipped_backends():
        out = work / backend
        seconds, _ = compile_measured(qcompile, backend, calib_folder, out)
        ours = agreement(out / "model.qdq.onnx", work / "held.npy")
        theirs = []
        for method in args.ort_methods:
            path, ort_seconds = ort_quantize(backend, method, calib, work)
            theirs.append((*agreement(path, work / "held.npy"), method, ort_seconds))
        best = max(theirs)
        lines.append(f"| {backend} | {ours[0]:.1f}% / {ours[1]:.1f}% / {ours[2]:.2f} dB | "
                     f"{best[0]:.1f}% / {best[1]:.1f}% / {best[2]:.2f} dB ({best[3]}, {best[4]:.1f} s) | "
                     f"{seconds:.2f} s | {seconds / float_seconds:.2f}x |")
        print(lines[-1], flush=True)
    lines += ["", f"quantize_static for {', '.join(sorted(POWER_OF_TWO))}: its scales rounded up to powers of two "
              "afterwards, weights re-quantized on them."]

    lines += ["", "Compile time and peak memory of `qcompile --backend tensorrt` (the calibration photos "
              "repeated to the count; the .npy holds them preprocessed):", "",
              "| calibration data | samples | peak RSS | qcompile wall time | float pass | ratio |",
              "|---|---|---|---|---|---|"]
    for count in (64, 512):
        folder = photo_folder(work / f"photos{count}", calib_photos, count)
        array = work / f"calib{count}.npy"
        np.save(array, np.concatenate([calib] * (count // len(calib) + 1))[:count])
        for label, data in (("photo folder", folder), (".npy", array)):
            seconds, rss = compile_measured(qcompile, "tensorrt", data, work / f"mem_{data.stem}")
            reference = float_pass_seconds(data)
            lines.append(f"| {label} | {count} | {rss:.0f} MiB | {seconds:.2f} s | {reference:.2f} s | "
                         f"{seconds / reference:.2f}x |")
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
