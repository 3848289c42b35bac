"""layer_fallback on every backend against NNCF's quantize_with_accuracy_control, same target, same data.

Run by hand (not in CI), from the checkout with ../shared beside it, in an environment that also has
nncf (`pip install nncf`; never a dependency of qcompiler):

    python benchmarks/layer_fallback.py [--models mobilenetv2 ppocr_cls] [--backends ...] [--target 0.98]
                                        [--out benchmarks/results/layer_fallback.md]

Data: the even-numbered photos of ../shared/images calibrate, the odd-numbered ones are the evaluation
data of both searches (qcompile's --eval-data, NNCF's validation dataset), which report the top-1
agreement with the float model that they reach on them. Target: top-1 agreement >= 0.98 (NNCF: max_drop
0.02, absolute, from the float model's 1.0). Each row gives the layers returned to float (NNCF: the ops
whose quantizers it removed), whether the target holds, the fake-quant model's top-1 agreement and
SQNR before and after, the search's evaluations and its time in float passes: seconds divided by one
onnxruntime pass of the float model over the evaluation photos (session included), measured just before
the row in the same process, since the machine is shared.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from qcompiler import runtime
from qcompiler.config.loader import load_backend, shipped_backends
from qcompiler.data.images import list_images
from qcompiler.data.sources import InputSpec, open_data
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.graph import ir
from qcompiler.measure.evaluate import evaluate
from qcompiler.measure.report import sqnr_db

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_suite import MODELS, SHARED, halves  # noqa: E402  (a sibling script, not a package)

REPO = Path(__file__).resolve().parents[1]
BATCH = 16
RANKING_SAMPLES = 16   # layer_fallback's default ranking_samples
HEADER = ("| model | backend | search | layers in float | target met | top-1 before -> after | SQNR before -> after "
          "| evaluations | search time / float pass |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=shipped_backends())
    parser.add_argument("--sensitivities", nargs="+", default=["float_one", "quantize_one"])
    parser.add_argument("--target", type=float, default=0.98, help="top-1 agreement to reach")
    parser.add_argument("--max-layers", type=int, default=10,
                        help="layer_fallback's max_layers, and NNCF's max_num_iterations (one group reverted each)")
    parser.add_argument("--nncf-presets", nargs="*", default=["default"], help="none: leave NNCF's rows out")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "layer_fallback.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qcompile-fallback-"))
    photos = list_images(SHARED / "images")
    lines = [f"# layer_fallback: the fewest float layers for top-1 agreement >= {args.target}", "",
             f"Calibration: {len(photos[0::2])} photos, evaluation: the {len(photos[1::2])} others, the data both "
             "searches measure on (`python benchmarks/layer_fallback.py`).", "", HEADER,
             "|---" * (HEADER.count("|") - 1) + "|"]
    for name in args.models:
        model, calib, held_out = halves(name, photos, work)
        for backend in args.backends:
            for sensitivity in args.sensitivities:
                _add(lines, _qcompile_row(name, model, backend, sensitivity, args.target, args.max_layers, calib,
                                          held_out), args.out)
        for preset in args.nncf_presets:
            _add(lines, _nncf_row(name, model, preset, args.target, args.max_layers, calib, held_out), args.out)
    print(f"wrote {args.out}")


def _add(lines: list[str], row: str, out: Path) -> None:
    """One more row, printed and in the results file (rewritten: a run stopped halfway keeps its rows)."""
    lines.append(row)
    print(row, flush=True)
    out.write_text("\n".join(lines) + "\n")


def float_pass_seconds(model: Path, held_out: Path) -> float:
    """One onnxruntime pass of the float model over the evaluation data, session creation included."""
    data = np.load(held_out)
    start = time.perf_counter()
    session = runtime.session(model)
    name = session.get_inputs()[0].name
    for begin in range(0, len(data), BATCH):
        session.run(None, {name: data[begin: begin + BATCH]})
    return time.perf_counter() - start


def _qcompile_row(name: str, model: Path, backend: str, sensitivity: str, target: float, max_layers: int,
                  calib: Path, held_out: Path) -> str:
    names = [entry.name for entry in load_backend(backend).pipeline]
    options = f"pipeline[{names.index('layer_fallback')}].options"
    float_pass = float_pass_seconds(model, held_out)
    result = compile_model(CompileRequest(model=model, backend=backend, out=None, calib=str(calib),
                                          overrides=[f"{options}.sensitivity={sensitivity}",
                                                     f"{options}.max_layers={max_layers}"],
                                          target=f"top1_agreement>={target}",
                                          eval_data=str(held_out)))
    search = result.report["layer_fallback"]
    seconds = next(r.seconds for r in result.records if r.name == "layer_fallback")
    data = open_data(str(held_out), InputSpec.of_model(onnx.load(str(model))))
    (output,) = evaluate(model, ir.to_model(result.graph), data).outputs   # the written model, measured again
    before, after = search["quantized"], search["final"]
    assert abs(after["metric"] - output.top1 / output.samples) < 1e-6, (after, output.summary())
    return (f"| {name} | {backend} | qcompile {sensitivity} | {len(search['reverted'])} of {search['layers']} "
            f"| {'yes' if search['met'] else 'no (' + search['stopped'] + ')'} "
            f"| {100 * before['metric']:.1f}% -> {100 * after['metric']:.1f}% "
            f"| {before['sqnr_db']:.2f} -> {after['sqnr_db']:.2f} dB | {search['evaluations']} "
            f"| {seconds / float_pass:.0f} ({seconds:.0f} s) |")


def _nncf_row(name: str, model: Path, preset: str, target: float, max_layers: int, calib: Path,
              held_out: Path) -> str:
    """nncf.quantize_with_accuracy_control with a validation function of top-1 agreement with the float model.

    NNCF hands the function an onnx.ModelProto and the items of the validation dataset it wants (all of
    them, or one at a time to rank by per-sample values), so each item carries its index; the session is
    made once per model. max_num_iterations, one quantizer group reverted each, is our max_layers, and
    its ranking subset (NNCF's default: 300) is our ranking_samples: both rank on the samples the
    quantized model gets most wrong.
    The fully quantized model is the one NNCF saves in intermediate_model_dir.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    calibration, evaluation = np.load(calib), np.load(held_out)
    input_name = runtime.session(model).get_inputs()[0].name
    float_pass = float_pass_seconds(model, held_out)
    float_logits = _logits(runtime.session(model), input_name, evaluation)
    reference = float_logits.argmax(axis=1)
    calls, sessions = [0], {}

    def validation_fn(candidate: onnx.ModelProto, items) -> float:
        if id(candidate) not in sessions:
            sessions.clear()
            sessions[id(candidate)] = (candidate, runtime.session(candidate, fuse_qdq=False))
        items = list(items)
        indices = [index for index, _ in items]
        tops = _logits(sessions[id(candidate)][1], input_name, np.stack([sample for _, sample in items])).argmax(axis=1)
        calls[0] += 1
        return float(np.mean(tops == reference[indices]))

    log = _Messages()
    logging.getLogger("nncf").addHandler(log)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        quantized = nncf.quantize_with_accuracy_control(
            onnx.load(str(model)), nncf.Dataset(list(calibration), lambda sample: {input_name: sample[None]}),
            nncf.Dataset(list(enumerate(evaluation)), lambda item: {input_name: item[1][None]}), validation_fn,
            max_drop=1.0 - target, drop_type=nncf.DropType.ABSOLUTE,
            preset=None if preset == "default" else nncf.QuantizationPreset(preset),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=max_layers, ranking_subset_size=RANKING_SAMPLES, intermediate_model_dir=folder))
        seconds = time.perf_counter() - start
        initial = onnx.load(str(Path(folder) / "intermediate_model.onnx"))
    logging.getLogger("nncf").removeHandler(log)
    before, after = (_agreement(candidate, input_name, evaluation, float_logits) for candidate in (initial, quantized))
    reverted = _reverted(log.messages)
    met = after[0] >= target - 1e-9
    return (f"| {name} | NNCF's own scheme | quantize_with_accuracy_control, preset {preset} | {len(reverted)} ops "
            f"| {'yes' if met else 'no'} | {100 * before[0]:.1f}% -> {100 * after[0]:.1f}% "
            f"| {before[1]:.2f} -> {after[1]:.2f} dB | {calls[0]} validation calls "
            f"| {seconds / float_pass:.0f} ({seconds:.0f} s) |")


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _reverted(messages: list[str]) -> list[str]:
    """The ops of NNCF's last 'N out of M were reverted back to the floating-point precision:' message."""
    for message in reversed(messages):
        if "reverted back to the floating-point precision" in message:
            return [line.strip() for line in message.splitlines()[1:] if line.strip()]
    return []


def _logits(session, input_name: str, samples: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(None, {input_name: samples[begin: begin + BATCH]})[0]
                           for begin in range(0, len(samples), BATCH)])


def _agreement(candidate: onnx.ModelProto, input_name: str, evaluation: np.ndarray,
               float_logits: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and output SQNR of a model NNCF made, Q/DQ as the spec defines them."""
    logits = _logits(runtime.session(candidate, fuse_qdq=False), input_name, evaluation)
    return float(np.mean(logits.argmax(axis=1) == float_logits.argmax(axis=1))), sqnr_db(float_logits, logits)


if __name__ == "__main__":
    main()
