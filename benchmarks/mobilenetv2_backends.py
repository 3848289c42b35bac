"""MobileNetV2 on every backend: fidelity, compile time and memory, against onnxruntime's quantize_static.

Run by hand (not in CI), from the checkout with ../shared beside it:

    python benchmarks/mobilenetv2_backends.py [--ort-methods MinMax Percentile] [--out benchmarks/results/mobilenetv2_backends.md]

Calibration: the even-numbered photos of ../shared/images (sorted by name);
evaluation: the odd-numbered ones. For every backend it reports top-1 / top-5
agreement with the float model and logit SQNR, next to quantize_static in
the closest setting onnxruntime offers; then qcompile's wall time (the CLI,
process start included) divided by one plain onnxruntime float pass over
the calibration images; then qcompile's peak memory with 64 and 512
calibration samples.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qcompiler import runtime
from qcompiler.backend import shipped_backends
from qcompiler.calib_data import InputSpec, open_data
from qcompiler.evaluate import evaluate
from qcompiler.images import Preprocess, list_images, load_batch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODEL = SHARED / "models" / "mobilenetv2_bn.onnx"
IMAGENET = Preprocess(resize_shorter=256, crop=(224, 224), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
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


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return its wall time (s) and peak RSS (MiB)."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True)
    seconds, max_rss_kib, code = done.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr}")
    return float(seconds), int(max_rss_kib) / 1024


def float_pass_seconds(calib: np.ndarray) -> float:
    session = runtime.session(MODEL)
    session.run(None, {"input": calib[:BATCH]})
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(calib), BATCH):
            session.run(None, {"input": calib[i: i + BATCH]})
        best = min(best, time.perf_counter() - start)
    return best


def ort_quantize(backend: str, method: str, calib: np.ndarray, out: Path) -> tuple[Path, float]:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        # one sample per batch: onnxruntime's histogram calibrators reject a short last batch
        def __init__(self):
            self.batches = iter([{"input": calib[i: i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.batches, None)

    path = out / f"ort_{backend}_{method}.onnx"
    start = time.perf_counter()
    quantize_static(str(MODEL), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    calibrate_method=getattr(CalibrationMethod, method), **ort_settings()[backend])
    return path, time.perf_counter() - start


def agreement(quant: Path, held_out: Path) -> tuple[float, float, float]:
    data = open_data(str(held_out), [InputSpec("input", ("N", 3, 224, 224), np.dtype(np.float32))])
    (logits,) = evaluate(MODEL, quant, data).outputs
    return 100 * logits.top1 / logits.samples, 100 * logits.top5 / logits.samples, logits.sqnr_db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort-methods", nargs="+", default=["MinMax", "Percentile"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "mobilenetv2_backends.md")
    args = parser.parse_args()
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is missing: run from a checkout with ../shared beside it")
    work = Path(tempfile.mkdtemp(prefix="qcompile-bench-"))
    photos = list_images(SHARED / "images")
    calib, held = load_batch(photos[0::2], IMAGENET), load_batch(photos[1::2], IMAGENET)
    np.save(work / "calib.npy", calib)
    np.save(work / "held.npy", held)
    float_seconds = float_pass_seconds(calib)
    qcompile = str(Path(sys.executable).with_name("qcompile"))

    lines = [f"# MobileNetV2 on every backend ({len(calib)} calibration photos, {len(held)} held out)", "",
             f"One float onnxruntime pass over the calibration photos (batch {BATCH}): {float_seconds:.2f} s.", "",
             "| backend | qcompile top-1 / top-5 / SQNR | quantize_static best (method) | qcompile wall time | / float pass |",
             "|---|---|---|---|---|"]
    for backend in shipped_backends():
        out = work / backend
        seconds, _ = run_measured([qcompile, str(MODEL), "-b", backend, "-o", str(out), "--calib", str(work / "calib.npy"), "-q"])
        ours = agreement(out / "model.qdq.onnx", work / "held.npy")
        theirs = []
        for method in args.ort_methods:
            path, ort_seconds = ort_quantize(backend, method, calib, work)
            theirs.append((*agreement(path, work / "held.npy"), method, ort_seconds))
        best = max(theirs)
        lines.append(f"| {backend} | {ours[0]:.1f}% / {ours[1]:.1f}% / {ours[2]:.2f} dB | "
                     f"{best[0]:.1f}% / {best[1]:.1f}% / {best[2]:.2f} dB ({best[3]}, {best[4]:.1f} s) | "
                     f"{seconds:.2f} s | {seconds / float_seconds:.1f}x |")
        print(lines[-1], flush=True)

    lines += ["", "Peak memory of `qcompile --backend tensorrt` (the calibration photos repeated to the count):", "",
              "| calibration samples | peak RSS | wall time | / float pass over the same samples |", "|---|---|---|---|"]
    for count in (64, 512):
        samples = np.concatenate([calib] * (count // len(calib) + 1))[:count]
        np.save(work / f"calib{count}.npy", samples)
        seconds, rss = run_measured([qcompile, str(MODEL), "-b", "tensorrt", "-o", str(work / f"mem{count}"),
                                     "--calib", str(work / f"calib{count}.npy"), "-q"])
        lines.append(f"| {count} | {rss:.0f} MiB | {seconds:.2f} s | {seconds / float_pass_seconds(samples):.1f}x |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
