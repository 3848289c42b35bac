"""Every range estimator on every backend, bias correction on and off, against NNCF and quantize_static.

Run by hand (not in CI), from the checkout with ../shared beside it, in an environment that also has
nncf (`pip install nncf`; never a dependency of qcompiler):

    python benchmarks/calibration_suite.py [--models mobilenetv2 ppocr_cls] [--ort-methods MinMax Percentile]
                                           [--out benchmarks/results/calibration_suite.md]

Data: the even-numbered photos of ../shared/images (sorted by name) calibrate, the odd-numbered ones
evaluate, for every row. Fidelity is agreement with the float model as `qcompile eval` measures it
(Q/DQ as the ONNX spec defines it): top-1, top-5 (top-2 for the two-class PaddleOCR classifier) and
output SQNR. Compile time is in-process (`compile_model`), divided by one in-process onnxruntime float
pass over the same calibration .npy (session creation included on both sides). Peers, same data, same
run: `nncf.quantize` on the ONNX model (its defaults, and preset=MIXED) and onnxruntime's
`quantize_static` in the setting closest to each backend (benchmarks/mobilenetv2_backends.py), with
each method asked for. Last, the speed and memory of each estimator in a fresh process (tensorrt,
MobileNetV2, photo folder of 64 and 512 photos): wall time / a fresh-process float pass, peak RSS.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from qcompiler import runtime
from qcompiler.calibration.estimators import ESTIMATORS
from qcompiler.config.loader import load_backend, shipped_backends
from qcompiler.data.images import Preprocess, list_images, load_batch
from qcompiler.data.sources import InputSpec, open_data
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.measure.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mobilenetv2_backends import (  # noqa: E402  (a sibling script, not a package)
    FLOAT_PASS,
    PREPROCESS,
    ort_quantize,
    photo_folder,
    run_measured,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IMAGENET = Preprocess(resize_shorter=256, crop=(224, 224), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
PPOCR = Preprocess(resize=(48, 192), mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))
MODELS = {"mobilenetv2": ("mobilenetv2_bn.onnx", IMAGENET), "ppocr_cls": ("ppocr_cls_v2.onnx", PPOCR)}
BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS),
                        help="none: only the speed and memory table")
    parser.add_argument("--backends", nargs="+", default=shipped_backends())
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    parser.add_argument("--ort-methods", nargs="+", default=["MinMax", "Percentile"])
    parser.add_argument("--speed-samples", nargs="+", type=int, default=[64, 512])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "calibration_suite.md")
    args = parser.parse_args()
    os.environ.setdefault("NNCF_CI", "1")   # no telemetry from the peer
    work = Path(tempfile.mkdtemp(prefix="qcompile-calib-"))
    photos = list_images(SHARED / "images")
    lines = ["# The calibration suite: estimators x backends x bias correction, NNCF and quantize_static", "",
             f"Calibration: {len(photos[0::2])} photos, evaluation: {len(photos[1::2])} others "
             "(benchmarks/calibration_suite.py). * marks each backend's shipped default.", ""]
    for name in args.models:
        lines += model_section(name, photos, args, work)
    lines += speed_section(photos[0::2], args.estimators, args.speed_samples, work)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def halves(name: str, photos: list[Path], work: Path) -> tuple[Path, Path, Path]:
    """The model's path, and the even-numbered photos (calibration) and odd-numbered ones (evaluation)
    preprocessed for it, each saved as an .npy under ``work``."""
    file, preprocess = MODELS[name]
    calib, held = work / f"{name}_calib.npy", work / f"{name}_held.npy"
    np.save(calib, load_batch(photos[0::2], preprocess))
    np.save(held, load_batch(photos[1::2], preprocess))
    return SHARED / "models" / file, calib, held


def model_section(name: str, photos: list[Path], args: argparse.Namespace, work: Path) -> list[str]:
    model, calib, held = halves(name, photos, work)
    inputs = InputSpec.of_model(onnx.load(model, load_external_data=False))
    held_data = open_data(str(held), inputs)
    float_seconds = float_pass(model, calib, inputs)
    lines = [f"## {name}", "",
             f"One in-process float onnxruntime pass over the calibration photos: {float_seconds:.2f} s.",
             "", "| backend | estimator | bias_correct | top-1 | top-k | SQNR | compile | / float pass |",
             "|---|---|---|---|---|---|---|---|"]
    for backend in args.backends:
        shipped = load_backend(backend)
        default = shipped.calibration.activations.estimator
        for estimator in args.estimators:
            for correct in (True, False):
                out = work / f"{name}_{backend}_{estimator}_{correct}"
                quantized, seconds = qcompile(model, backend, calib, estimator, correct, shipped, out)
                top1, topk, sqnr = agreement(model, quantized, held_data)
                star = " *" if estimator == default and correct else ""
                lines.append(f"| {backend} | {estimator}{star} | {'on' if correct else 'off'} | {top1:.1f}% | "
                             f"{topk:.1f}% | {sqnr:.2f} dB | {seconds:.2f} s | {seconds / float_seconds:.2f}x |")
                print(lines[-1], flush=True)
    lines += ["", "Peers on the same data:", "", "| peer | setting | top-1 | top-k | SQNR | time |",
              "|---|---|---|---|---|---|"]
    lines += nncf_rows(model, calib, inputs, held_data, work)
    if model.name == "mobilenetv2_bn.onnx":   # quantize_static's settings are written for this model's input
        for backend in args.backends:
            for method in args.ort_methods:
                path, seconds = ort_quantize(backend, method, np.load(calib), work, model)
                top1, topk, sqnr = agreement(model, path, held_data)
                lines.append(f"| quantize_static | {backend} setting, {method} | {top1:.1f}% | {topk:.1f}% | "
                             f"{sqnr:.2f} dB | {seconds:.1f} s |")
                print(lines[-1], flush=True)
    return lines + [""]


def float_pass(model: Path, data: Path, inputs: list[InputSpec]) -> float:
    """Best of two in-process float passes over ``data`` (session creation included)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        session = runtime.session(model)
        for feed in open_data(str(data), inputs).batches(BATCH):
            session.run(None, feed)
        times.append(time.perf_counter() - start)
    return min(times)


def qcompile(model: Path, backend: str, calib: Path, estimator: str, correct: bool, shipped, out: Path):
    pipeline = [entry.name for entry in shipped.pipeline if correct or entry.name != "bias_correct"]
    if correct and "bias_correct" not in pipeline:
        pipeline.append("bias_correct")
    overrides = [f"calibration.activations.estimator={estimator}", f"pipeline=[{', '.join(pipeline)}]"]
    start = time.perf_counter()
    compile_model(CompileRequest(model=model, backend=backend, out=out, calib=str(calib), overrides=overrides))
    return out / "model.qdq.onnx", time.perf_counter() - start


def agreement(model: Path, quantized: Path, data) -> tuple[float, float, float]:
    (output,) = evaluate(model, quantized, data).outputs
    return 100 * output.top1 / output.samples, 100 * output.top5 / output.samples, output.sqnr_db


def nncf_rows(model: Path, calib: Path, inputs: list[InputSpec], held, work: Path) -> list[str]:
    try:
        import nncf
    except ImportError:
        return ["| nncf.quantize | not installed here (pip install nncf) | | | | |"]
    samples = [{inputs[0].name: sample[None]} for sample in np.load(calib)]
    rows = []
    for preset, options in (("defaults", {}), ("preset=MIXED", {"preset": nncf.QuantizationPreset.MIXED})):
        start = time.perf_counter()
        quantized = nncf.quantize(onnx.load(model), nncf.Dataset(samples), subset_size=len(samples), **options)
        seconds = time.perf_counter() - start
        path = work / f"nncf_{model.stem}_{len(rows)}.onnx"
        onnx.save(quantized, path)
        top1, topk, sqnr = agreement(model, path, held)
        rows.append(f"| nncf.quantize {nncf.__version__} | {preset} | {top1:.1f}% | {topk:.1f}% | {sqnr:.2f} dB | "
                    f"{seconds:.1f} s |")
        print(rows[-1], flush=True)
    return rows


def speed_section(photos: list[Path], estimators: list[str], counts: list[int], work: Path) -> list[str]:
    model = SHARED / "models" / MODELS["mobilenetv2"][0]
    qcompile_cli = str(Path(sys.executable).with_name("qcompile"))
    lines = ["## Speed and memory of each estimator (tensorrt, MobileNetV2, fresh processes)", "",
             "| estimator | samples | wall time | / float pass | peak RSS |", "|---|---|---|---|---|"]
    for count in counts:
        folder = photo_folder(work / f"photos_{count}", photos, count)
        float_seconds = run_measured([sys.executable, str(FLOAT_PASS), str(model), str(folder),
                                      "--preprocess", str(PREPROCESS), "--batch", str(BATCH)])[0]
        for estimator in estimators:
            out = work / f"speed_{estimator}_{count}"
            seconds, rss = run_measured([qcompile_cli, str(model), "-b", "tensorrt", "-o", str(out),
                                         "--calib", str(folder), "--preprocess", str(PREPROCESS), "-q",
                                         "--set", f"calibration.activations.estimator={estimator}"])
            lines.append(f"| {estimator} | {count} | {seconds:.2f} s | {seconds / float_seconds:.2f}x | "
                         f"{rss:.0f} MiB |")
            print(lines[-1], flush=True)
    return lines + [""]


if __name__ == "__main__":
    main()
