"""FBGEMM's model.int8.onnx in onnxruntime's integer kernels: latency at batch 1 on 1 thread, and fidelity.

Run by hand (not in CI), from the checkout with ../shared beside it, on an idle machine:

    python benchmarks/fbgemm_int8_speed.py [--rounds 5] [--out benchmarks/results/fbgemm_int8.md]

Calibration: the even-numbered photos of ../shared/images; evaluation and
timing: the odd-numbered ones. Compared, all in onnxruntime's CPU provider
with its default graph optimizations, 1 intra-op thread, batch 1:
- the float model (../shared/models/mobilenetv2_bn.onnx);
- qcompile --backend fbgemm: model.int8.onnx, and model.qdq.onnx for fidelity;
- onnxruntime's quantize_static in the same scheme (uint8 per-tensor
  activations, int8 symmetric per-channel weights, QDQ), MinMax, on the
  model after quant_pre_process (BN folded), as onnxruntime recommends.
Latency is the median per photo over ``--rounds`` rounds; the models take
turns within each round so that drift of the machine hits all of them.
Fidelity: the int8 models as onnxruntime runs them, in its integer kernels;
model.qdq.onnx as the ONNX spec defines Q/DQ (qcompile eval's default).
Where the time goes: onnxruntime's profiler over the held-out photos, its
kernel times grouped by kind over the graph it actually runs (after fusion).
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mobilenetv2_backends import MODEL, REPO, agreement, ort_quantize, split_photos  # noqa: E402

from qcompiler import runtime  # noqa: E402
from qcompiler.driver import CompileRequest, compile_model  # noqa: E402


def kernels(path: Path) -> str:
    """The ops onnxruntime runs for ``path``, most frequent first."""
    return ", ".join(f"{count} {op}" for op, count in runtime.optimized_ops(path).most_common())


KINDS = ("depthwise convolutions", "other convolutions and Gemm", "input quantization, padding, layout changes",
         "integer Clips", "Add, pooling, Flatten")
LAYOUT_OPS = {"QuantizeLinear", "DequantizeLinear", "Pad", "Transpose", "ReorderInput", "ReorderOutput"}
WEIGHTED_OPS = {"Conv", "FusedConv", "QLinearConv", "Gemm", "QGemm", "MatMul", "QLinearMatMul"}


def _kind(node: onnx.NodeProto) -> str:
    if node.op_type in WEIGHTED_OPS:
        group = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
        return KINDS[0] if group > 1 else KINDS[1]
    if node.op_type in LAYOUT_OPS:
        return KINDS[2]
    return KINDS[3] if node.op_type == "Clip" else KINDS[4]


def kernel_time_by_kind(path: Path, photos: np.ndarray, work: Path) -> dict[str, float]:
    """µs per photo in each kind of kernel, from onnxruntime's profiler, over the graph it runs (1 thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(work / f"profile-{path.stem}")
    options.optimized_model_filepath = str(work / f"optimized-{path.stem}.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    kind_of = {node.name: _kind(node) for node in onnx.load(options.optimized_model_filepath).graph.node}
    for photo in photos:
        session.run(None, {"input": photo[None]})
    totals: collections.Counter = collections.Counter()
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[kind_of[event["name"].removesuffix("_kernel_time")]] += event["dur"] / len(photos)
    return {kind: totals[kind] for kind in KINDS}


def latencies_ms(models: dict[str, Path], photos: np.ndarray, rounds: int) -> dict[str, float]:
    sessions = {label: runtime.session(path, threads=1) for label, path in models.items()}
    samples: dict[str, list[float]] = {label: [] for label in models}
    for session in sessions.values():  # warm-up
        for photo in photos[:10]:
            session.run(None, {"input": photo[None]})
    for _ in range(rounds):
        for label, session in sessions.items():
            for photo in photos:
                start = time.perf_counter()
                session.run(None, {"input": photo[None]})
                samples[label].append(time.perf_counter() - start)
    return {label: 1000 * float(np.median(times)) for label, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fbgemm_int8.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qcompile-fbgemm-"))
    _, calib, held = split_photos(work)

    out = work / "fbgemm"
    compile_model(CompileRequest(model=MODEL, backend="fbgemm", out=out, calib=str(work / "calib.npy")))
    quant_pre_process(str(MODEL), str(work / "preprocessed.onnx"), skip_symbolic_shape=True)
    theirs, _ = ort_quantize("fbgemm", "MinMax", calib, work, model=work / "preprocessed.onnx")
    models = {"float (mobilenetv2_bn.onnx)": MODEL, "qcompile model.int8.onnx": out / "model.int8.onnx",
              "quantize_static, same scheme (MinMax)": theirs}
    # the int8 models as onnxruntime runs them (its integer kernels); model.qdq.onnx as the spec defines it
    fidelity = {"qcompile model.int8.onnx": agreement(out / "model.int8.onnx", work / "held.npy", True),
                "qcompile model.qdq.onnx": agreement(out / "model.qdq.onnx", work / "held.npy"),
                "quantize_static, same scheme (MinMax)": agreement(theirs, work / "held.npy", True)}
    latency = latencies_ms(models, held, args.rounds)
    float_ms = latency["float (mobilenetv2_bn.onnx)"]

    lines = [f"# FBGEMM int8 model in onnxruntime ({len(calib)} calibration photos, {len(held)} held out)", "",
             f"onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, 1 thread, batch 1, "
             f"median of {args.rounds} rounds over the held-out photos.", "",
             "| model | latency | speed-up over float | top-1 / top-5 agreement, logit SQNR |",
             "|---|---|---|---|"]
    for label in [*models, "qcompile model.qdq.onnx"]:
        speed = f"{latency[label]:.2f} ms | {float_ms / latency[label]:.2f}x" if label in latency else "- | -"
        agree = fidelity.get(label)
        quality = f"{agree[0]:.1f}% / {agree[1]:.1f}% / {agree[2]:.2f} dB" if agree else "(reference)"
        lines.append(f"| {label} | {speed} | {quality} |")
    lines += ["", "Where the time goes: kernel time per photo by kind, in µs, from onnxruntime's profiler "
              "(which adds its own overhead, so the sums exceed the latencies):", "",
              "| kind | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    profiles = {label: kernel_time_by_kind(path, held, work) for label, path in models.items()}
    for kind in [*KINDS, "total"]:
        cells = [f"{sum(p.values()) if kind == 'total' else p[kind]:.0f}" for p in profiles.values()]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Kernels onnxruntime runs:", ""]
    lines += [f"- {label}: {kernels(path)}" for label, path in models.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
