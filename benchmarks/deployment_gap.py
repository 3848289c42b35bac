"""The deployment gap per backend: the integer model (model.int.onnx) against the fake-quant model, per layer and
end to end, on MobileNetV2 and the PaddleOCR classifier.

Run by hand (not in CI), from the checkout with ../shared beside it:

    python benchmarks/deployment_gap.py [--models mobilenetv2 ppocr_cls] [--backends tensorrt snpe ...]
                                        [--out benchmarks/results/deployment_gap.md]

Data: the even-numbered photos of ../shared/images calibrate, the odd-numbered ones evaluate. Per layer:
every integer tensor the lowering passes compute, each layer fed the fake-quant model's integers (so a
layer's gap is its own arithmetic's), the largest difference in LSBs and the share of values that are
exact. End to end: the integer model on its own against the fake-quant model and against float: top-1
agreement and output SQNR. Each backend's arithmetic is its YAML's `arithmetic:` section.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from qcompiler.config.schema import to_plain
from qcompiler.data.images import list_images, load_batch
from qcompiler.driver import CompileRequest, compile_model
from qcompiler.measure.deployment_gap import deployment_gap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibration_suite import MODELS, SHARED  # noqa: E402  (a sibling script, not a package)

REPO = Path(__file__).resolve().parents[1]
DEPLOYABLE = ["tensorrt", "snpe", "fbgemm", "tvm", "acl"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=DEPLOYABLE)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "deployment_gap.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qcompile-gap-"))
    photos = list_images(SHARED / "images")
    lines = ["# The deployment gap: integer model against fake-quant model, per backend", "",
             f"Calibration: {len(photos[0::2])} photos, evaluation: {len(photos[1::2])} others "
             "(benchmarks/deployment_gap.py). Layers: each fed the fake-quant model's integers.", ""]
    for name in args.models:
        lines += model_section(name, photos, args.backends, work)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def model_section(name: str, photos: list[Path], backends: list[str], work: Path) -> list[str]:
    file, preprocess = MODELS[name]
    calib = work / f"{name}_calib.npy"
    np.save(calib, load_batch(photos[0::2], preprocess))
    held_out = load_batch(photos[1::2], preprocess)
    lines = [f"## {name} ({file})", "",
             "| backend | arithmetic | layers | max LSB | exact values | worst layer (exact) "
             "| top-1 int vs fake-quant | top-1 int vs float (fake-quant vs float) "
             "| SQNR int vs fake-quant | SQNR int vs float (fake-quant vs float) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for backend in backends:
        result = compile_model(CompileRequest(model=SHARED / "models" / file, backend=backend, out=None,
                                              calib=str(calib)))
        input_name = result.float_graph.inputs[0].name
        gap = deployment_gap(result.float_graph, result.graph, result.integer_graph, {input_name: held_out},
                             to_plain(result.backend.arithmetic))
        (output,) = gap["outputs"]
        worst = min(gap["per_layer"], key=lambda layer: layer["exact_share"])
        arithmetic = ", ".join(f"{k} {v}" for k, v in gap["arithmetic"].items())
        lines.append(f"| {backend} | {arithmetic} | {gap['layers']} | {gap['max_lsb']} "
                     f"| {100 * gap['exact_share']:.4f}% | {worst['tensor']} ({100 * worst['exact_share']:.2f}%) "
                     f"| {_percent(output.get('top1_vs_fake_quant'))} | {_percent(output.get('top1_vs_float'))} "
                     f"({_percent(output.get('fake_quant_top1_vs_float'))}) | {output['sqnr_db_vs_fake_quant']} dB "
                     f"| {output['sqnr_db_vs_float']} dB ({output['fake_quant_sqnr_db_vs_float']} dB) |")
        print(lines[-1], flush=True)
    return lines + [""]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()
