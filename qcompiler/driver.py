"""The compile driver: backend + model in, pipeline run, outputs written atomically.

Binding a loaded backend to the pass and emitter registries (``bind_backend``)
happens here, not in the loader: it is the step that imports the passes and
the emitters, and it checks the pipeline's and the emitters' names and
options before the model is read.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO

import onnx_graphsurgeon as gs

from qcompiler.config.backend import BackendConfig
from qcompiler.config.loader import backend_label, load_backend
from qcompiler.config.schema import SchemaError, to_plain
from qcompiler.data.images import Preprocess
from qcompiler.data.sources import CalibrationData, InputSpec, open_data
from qcompiler.emit.emitters import BoundEmitter, Compiled, EmitOption
from qcompiler.emit.registry import bind_emitters, emit_all
from qcompiler.errors import QCompileError, UsageError
from qcompiler.fileio import check_output_dir, staged_output_dir, write_atomic
from qcompiler.graph import ir
from qcompiler.graph.importer import import_model, load_model, refuse_unsupported, require_model_file
from qcompiler.graph.ops import WEIGHTED_OPS
from qcompiler.graph.serialize import save_model, skeleton_model
from qcompiler.graph.verify import check_model
from qcompiler.measure.deployment_gap import deployment_gap
from qcompiler.measure.report import layer_outputs, make_report, qparams_json, to_json
from qcompiler.passes import registry
from qcompiler.pipeline.instruments import DumpInstrument, PrintInstrument
from qcompiler.pipeline.manager import (
    BoundPass,
    PassManager,
    StageRecord,
    bind_pipeline,
    pipeline_text,
    require_in_pipeline,
)
from qcompiler.pipeline.pass_base import PassContext

# how many calibration samples report.json compares float and quantized on
REPORT_SAMPLES = 4
# the deployment gap's samples: the integer model runs ConvInteger and its requantization as separate ops,
# 4x the float model's time on MobileNetV2 (benchmarks/deployment_gap.py measures the gap on 93 photos)
GAP_SAMPLES = 2
# what an output file holds: a model's graph, or text or bytes
Payload = bytes | str | gs.Graph


@dataclass
class CompileRequest:
    model: Path
    backend: str
    out: Path | None   # None: compile in memory, the files in CompileResult.files and none written
    overrides: list[str] = field(default_factory=list)
    dump_dir: Path | None = None
    print_after: list[str] = field(default_factory=list)
    print_after_all: bool = False
    print_changed: bool = False
    stop_after: str | None = None
    disable: list[str] = field(default_factory=list)
    explain: list[str] = field(default_factory=list)
    calib: str | None = None
    calib_size: int | None = None
    preprocess: Preprocess | None = None
    progress: bool = False
    emit_options: list[EmitOption] = field(default_factory=list)   # emitter options from the command line
    strict: bool = False   # a warning (degenerate data, ...) is an error
    target: str | None = None      # layer_fallback's accuracy target (its ``target`` option)
    eval_data: str | None = None   # what layer_fallback evaluates on (default: held-out calibration samples)


@dataclass(frozen=True)
class BoundBackend:
    """A backend whose pipeline and emitters are bound to their registries, options checked."""

    config: BackendConfig
    passes: list[BoundPass]
    emitters: list[BoundEmitter]


def bind_backend(config: BackendConfig, label: str, emit_options: Sequence[EmitOption] = ()) -> BoundBackend:
    """``config``'s passes and emitters from their registries; a name or option they lack is exit 2."""
    try:
        return BoundBackend(config, bind_pipeline(config.pipeline, registry()),
                            bind_emitters(config.emit, emit_options))
    except SchemaError as exc:
        raise SchemaError(f"backend {label}: {exc}") from None


@dataclass
class CompileResult:
    backend: BackendConfig
    graph: gs.Graph          # the last fake-quant stage's graph (model.qdq.onnx once calibrated)
    float_graph: gs.Graph    # the last float stage's (model.onnx)
    records: list[StageRecord]
    ctx: PassContext
    outputs: list[Path]                   # what was written
    files: dict[str, Payload] = field(default_factory=dict)   # what would have been, for out=None
    report: dict[str, Any] | None = None   # report.json's content, once made
    integer_graph: gs.Graph | None = None  # the lowering passes' result (model.int.onnx), if any ran

    def quantized_ops(self) -> tuple[int, int]:
        """How many weighted ops (an op of WEIGHTED_OPS with a constant weight) have their weight quantized."""
        quantized = {node for point in self.ctx.plan.weights() for node in point.consumers}
        weighted = [node for node in self.float_graph.nodes if node.op in WEIGHTED_OPS
                    and len(node.inputs) > 1 and ir.constant_value(node.inputs[1]) is not None]
        return sum(node.name in quantized for node in weighted), len(weighted)


def compile_model(request: CompileRequest, print_stream: TextIO | None = None) -> CompileResult:
    """Run the backend's pipeline on the model and write the outputs atomically.

    DIR/model.onnx is the float model after the last float stage, and once the
    quantizers are calibrated DIR/model.qdq.onnx, qparams.json and report.json
    follow, then the backend's files; DIR/pipeline.txt always. With
    ``request.out`` None the same outputs are made and checked, returned in
    ``CompileResult.files``, and none is written. QIR printed by
    --print-after* goes to ``print_stream`` (stderr by default).

    Everything that can be checked before the model is imported is: the
    backend, the flags, the output and dump folders (their staging folders
    are made first, so one that cannot be written fails at once), the model
    file's message, and the first calibration sample. The dump folder is
    staged like the outputs: a failed or interrupted compile leaves neither.
    """
    print_stream = print_stream or sys.stderr
    backend = _with_target(load_backend(request.backend, request.overrides), request)
    bound = bind_backend(backend, backend_label(request.backend), request.emit_options)
    manager = PassManager(bound.passes, stop_after=request.stop_after, disabled=request.disable)
    _refuse_bad_request(request, backend)
    with ExitStack() as stages:  # left in reverse: the outputs are moved in first, then the dump (maybe inside them)
        dump = stages.enter_context(staged_output_dir(request.dump_dir)) if request.dump_dir is not None else None
        out = stages.enter_context(staged_output_dir(request.out)) if request.out is not None else None
        model = load_model(request.model, external_data=False)
        refuse_unsupported(model, request.model)
        inputs = InputSpec.of_model(model)
        data = _calibration_data(request, backend, inputs)
        ctx = PassContext(backend=backend, calibration_data=data, eval_data=_eval_data(request, inputs),
                          strict=request.strict)
        for warning in data.warnings if data is not None else []:
            ctx.warn(warning)
        if request.progress:
            ctx.progress = _progress_bar
        float_keeper = _FloatModelKeeper()
        manager.instruments += [*_instruments(request, backend, dump, print_stream), float_keeper]
        start = time.perf_counter()
        graph, import_stats = import_model(request.model, model)
        import_record = StageRecord(0, "import", status="ran", changed=True, stats=import_stats.counts,
                                    seconds=time.perf_counter() - start)
        graph = manager.run(graph, ctx, import_record)
        records = [import_record, *manager.records]
        lowered = ctx.fake_quant is not None
        result = CompileResult(backend, ctx.fake_quant if lowered else graph, float_keeper.graph, records, ctx, [],
                               integer_graph=graph if lowered else None)
        outputs = _checked(_outputs(result, bound.emitters), verified=[graph, result.graph, float_keeper.graph])
        if out is None:
            result.files = dict(outputs)
        else:
            result.outputs = _write_outputs(out, request.out, outputs)
    return result


def _with_target(backend: BackendConfig, request: CompileRequest) -> BackendConfig:
    """``backend`` with --target as its layer_fallback's ``target`` option (the same as --set on it)."""
    if request.target is None:
        return backend
    names = [entry.name for entry in backend.pipeline]
    if "layer_fallback" not in names:
        raise UsageError(f"--target: backend {backend.name} has no layer_fallback in its pipeline; list it "
                         "after bias_correct (before integer_weights)")
    setting = f"pipeline[{names.index('layer_fallback')}].options.target={json.dumps(request.target)}"
    return load_backend(request.backend, [*request.overrides, setting])


def _refuse_bad_request(request: CompileRequest, backend: BackendConfig) -> None:
    """A UsageError for what is wrong in the request itself: its flags, model path, data path, folders."""
    pipeline_names = [entry.name for entry in backend.pipeline]
    for flag, names in (("--print-after", request.print_after), ("--explain", request.explain)):
        for name in names:
            require_in_pipeline(flag, name, pipeline_names)
    require_model_file(request.model)
    if request.calib is None and _runs(backend, "calibrate", request):
        raise UsageError(f"backend {backend.name} calibrates; pass --calib DIR|FILE.npy|FILE.npz|module:function "
                         "(or --stop-after a pass before calibrate)")
    if request.eval_data is not None and not _targets(backend):
        raise UsageError("--eval-data is what layer_fallback evaluates its target on; give --target too, e.g. "
                         "--target 'top1_agreement>=0.98'")
    sources = [Path(source) for source in (request.calib, request.eval_data) if source and Path(source).exists()]
    protected = [request.model, *sources]
    folders = [Path(folder) for folder in (request.out, request.dump_dir) if folder is not None]
    for folder in folders:
        check_output_dir(folder, protected)
    if len(folders) == 2 and folders[0].resolve() == folders[1].resolve():
        raise UsageError(f"--dump-dir {request.dump_dir} is --out: both write pipeline.txt; give the dump its own "
                         f"folder, e.g. --dump-dir {folders[0] / 'dump'}")


def _targets(backend: BackendConfig) -> bool:
    """Whether the backend's layer_fallback has a target (and so evaluates)."""
    return any(entry.name == "layer_fallback" and entry.options.get("target") for entry in backend.pipeline)


def _runs(backend: BackendConfig, pass_name: str, request: CompileRequest) -> bool:
    """Whether ``pass_name`` will run, given --stop-after and --disable."""
    names = [entry.name for entry in backend.pipeline]
    if request.stop_after in names:
        names = names[: names.index(request.stop_after) + 1]
    return pass_name in names and pass_name not in request.disable


class _FloatModelKeeper:
    """Keeps the graph of the last stage that had no quantizer: the float model the backend starts from."""

    graph: gs.Graph | None = None

    def after_stage(self, record: StageRecord, graph: gs.Graph, ctx: PassContext) -> None:
        if not ctx.plan:
            self.graph = ir.copy_graph(graph)

    def finish(self, records, ctx: PassContext) -> None:
        pass


def _calibration_data(request: CompileRequest, backend: BackendConfig,
                      inputs: list[InputSpec]) -> CalibrationData | None:
    """The calibration data, its first sample read: what is wrong with it fails before the model is imported."""
    if request.calib is None:
        return None
    if request.calib_size is not None and request.calib_size < 1:
        raise UsageError(f"--calib-size {request.calib_size}: give a positive number of samples "
                         "(or leave it out for all)")
    data = open_data(request.calib, inputs, request.preprocess, request.calib_size or backend.calibration.size)
    if not data.head(1):
        raise UsageError(f"--calib {request.calib} holds no samples; give at least one")
    return data


def _eval_data(request: CompileRequest, inputs: list[InputSpec]) -> CalibrationData | None:
    """--eval-data, preprocessed as --calib is, its first sample read."""
    if request.eval_data is None:
        return None
    data = open_data(request.eval_data, inputs, request.preprocess)
    if not data.head(1):
        raise UsageError(f"--eval-data {request.eval_data} holds no samples; give at least one")
    return data


def _progress_bar(items, total, description):
    """A bar on a terminal; none when stderr is a log or a pipe (tqdm's disable=None)."""
    from tqdm import tqdm

    return tqdm(items, total=total, desc=description, unit="batch", leave=False, file=sys.stderr, disable=None)


def _instruments(request: CompileRequest, backend: BackendConfig, dump: Path | None, print_stream: TextIO) -> list:
    instruments = []
    if dump is not None:
        instruments.append(DumpInstrument(dump, backend.name))
    if request.print_after or request.print_after_all or request.print_changed:
        instruments.append(PrintInstrument(print_stream, set(request.print_after),
                                           request.print_after_all, request.print_changed))
    return instruments


def _outputs(result: CompileResult, emitters: list[BoundEmitter]) -> Iterator[tuple[str, Payload]]:
    """Every output of a compile by file name, the models first; each made when it is asked for.

    report.json's content is kept in ``result.report`` too, for the summary.
    """
    ctx, graph, float_graph, backend = result.ctx, result.graph, result.float_graph, result.backend.name
    yield "model.onnx", float_graph
    if ctx.plan and all(p.calibrated for p in ctx.plan.points.values()):
        yield "model.qdq.onnx", graph
        if result.integer_graph is not None:
            yield "model.int.onnx", result.integer_graph
        yield "qparams.json", qparams_json(ctx.plan, backend)
        if ctx.calibration_data is not None:
            feed = ctx.calibration_data.head(REPORT_SAMPLES)
            samples = next((r.stats.get("samples", 0) for r in result.records if r.name == "calibrate"), 0)
            result.report = make_report(backend, ctx.plan, float_graph, graph, layer_outputs(graph, ctx.plan), feed,
                                        samples, ctx.warnings)
            if result.integer_graph is not None:
                gap_feed = {name: values[:GAP_SAMPLES] for name, values in feed.items()}
                result.report["deployment_gap"] = deployment_gap(float_graph, graph, result.integer_graph, gap_feed,
                                                                 to_plain(result.backend.arithmetic))
            yield "report.json", to_json(result.report)
        yield from emit_all(Compiled(ctx.backend, ctx.plan, graph, float_graph), emitters).items()
    yield "pipeline.txt", pipeline_text(backend, result.records)


def _checked(outputs: Iterable[tuple[str, Payload]], verified: Sequence[gs.Graph]) -> Iterator[tuple[str, Payload]]:
    """``outputs``, each name once, a model once the ONNX checker passed its skeleton.

    The skeleton holds every node, type and small constant; the file is
    written from the graph byte for byte as the exporter writes it
    (``serialize.write_model``), so re-reading 550 MB of weights to check
    them again (2.5 s a model) would check nothing new. The graphs the pass
    manager verified after their stage (model.onnx's, model.qdq.onnx's) are
    not checked twice.
    """
    seen: set[str] = set()
    for name, payload in outputs:
        if name in seen:
            raise QCompileError(f"{name} would be written twice: an emitter writes a file the compile writes")
        seen.add(name)
        if isinstance(payload, gs.Graph) and not any(payload is graph for graph in verified):
            check_model(skeleton_model(payload), f"{name} is not valid ONNX")
        yield name, payload


def _write_outputs(stage: Path, out_dir: Path, outputs: Iterable[tuple[str, Payload]]) -> list[Path]:
    """Every output into the staging folder as it is made (moved into ``out_dir`` by the caller at the end).

    A model is written in a worker thread while the next outputs are made:
    writing VGG-19's two 550 MB models (4 s) overlaps report.json's
    onnxruntime runs, which read the same graphs and change none.
    """
    written: list[list[Path] | Future] = []  # in the order the outputs are made
    with ThreadPoolExecutor(1, thread_name_prefix="model-writer") as writer:
        for name, payload in outputs:
            if isinstance(payload, gs.Graph):
                written.append(writer.submit(save_model, payload, stage / name))
            else:
                write_atomic(stage / name, payload)
                written.append([stage / name])
        # a failed write raises here, inside the staging: nothing is moved in
        files = [path for entry in written for path in (entry.result() if isinstance(entry, Future) else entry)]
    return [Path(out_dir) / path.name for path in files]
