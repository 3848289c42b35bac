"""align_channels (cross-layer equalization) on the per-tensor-weight backends, with and without, side by side.

Run by hand (not in CI), from the checkout with ../shared beside it:

    python benchmarks/align_channels.py [--models mobilenetv2 ppocr_cls] [--backends snpe tvm]
                                        [--out benchmarks/results/align_channels.md]

Data: the even-numbered photos of ../shared/images calibrate, the odd-numbered ones evaluate. For each
backend three pipelines in the same run: its pipeline without align_channels, with it (pairs across
identity, Relu and LeakyRelu), and with `bounded: relu` (every ReLU6 between two weighted ops made a Relu
first, AIMET's choice, which changes the float model). Fidelity is the fake-quant model against the
original float model (`qcompile eval`): top-1 agreement and output SQNR. academic keeps BatchNormalization
unfolded, so no pair is adjacent there: it is not measured.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx

from qcompiler.config.loader import load_backend
from qcompiler.data.images import list_images
from qcompiler.data.sources import InputSpec, open_data
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.graph import ir
from qcompiler.measure.evaluate import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_suite import MODELS, SHARED, halves  # noqa: E402  (a sibling script, not a package)

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"without": None, "align_channels": "align_channels",
            "align_channels, bounded: relu": "{name: align_channels, options: {bounded: relu}}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=["snpe", "tvm"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "align_channels.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qcompile-cle-"))
    photos = list_images(SHARED / "images")
    lines = ["# align_channels: with and without, per-tensor-weight backends", "",
             f"Calibration: {len(photos[0::2])} photos, evaluation: {len(photos[1::2])} others "
             "(benchmarks/align_channels.py); fidelity against the original float model.", "",
             "| model | backend | pipeline | pairs equalized | top-1 agreement | SQNR | float cost |",
             "|---|---|---|---|---|---|---|"]
    for name in args.models:
        model, calib, held_out = halves(name, photos, work)
        for backend in args.backends:
            for label, entry in VARIANTS.items():
                lines.append(_row(name, model, backend, label, entry, calib, held_out))
                print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def _row(name: str, model: Path, backend: str, label: str, entry: str | None, calib: Path, held_out: Path) -> str:
    pipeline = [e.name for e in load_backend(backend).pipeline if e.name != "align_channels"]
    if entry is not None:
        pipeline.insert(pipeline.index("insert_quantizers"), entry)
    result = compile_model(CompileRequest(model=model, backend=backend, out=None, calib=str(calib),
                                          overrides=[f"pipeline=[{', '.join(pipeline)}]"]))
    data = open_data(str(held_out), InputSpec.of_model(onnx.load(str(model))))
    (output,) = evaluate(model, ir.to_model(result.graph), data).outputs
    pairs = next((r.stats.get("pairs", 0) for r in result.records if r.name == "align_channels"), "-")
    cost = next((w.split("its outputs now ")[1].split(" from")[0] for w in result.ctx.warnings
                 if "its outputs now" in w), "none")
    return (f"| {name} | {backend} | {label} | {pairs} | {100 * output.top1 / output.samples:.1f}% "
            f"| {output.sqnr_db:.2f} dB | {cost} |")


if __name__ == "__main__":
    main()
