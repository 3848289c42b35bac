"""The compile driver: backend + model in, pipeline run, outputs written atomically."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import onnx_graphsurgeon as gs

from qcompiler import ir
from qcompiler.backend import BackendConfig, load_backend
from qcompiler.fileio import check_output_dir, staged_output_dir, write_atomic
from qcompiler.importer import import_model
from qcompiler.instruments import DumpInstrument, PrintInstrument
from qcompiler.pass_base import PassContext
from qcompiler.pass_manager import PassManager, StageRecord, pipeline_text, require_in_pipeline
from qcompiler.passes import registry
from qcompiler.verify import check_model


@dataclass
class CompileRequest:
    model: Path
    backend: str
    out: Path
    overrides: list[str] = field(default_factory=list)
    dump_dir: Path | None = None
    print_after: list[str] = field(default_factory=list)
    print_after_all: bool = False
    print_changed: bool = False
    stop_after: str | None = None
    disable: list[str] = field(default_factory=list)
    explain: list[str] = field(default_factory=list)


@dataclass
class CompileResult:
    backend: BackendConfig
    graph: gs.Graph
    records: list[StageRecord]
    ctx: PassContext
    outputs: list[Path]


def compile_model(request: CompileRequest, print_stream: TextIO | None = None) -> CompileResult:
    """Run the backend's pipeline on the model and write DIR/model.onnx and DIR/pipeline.txt.

    QIR printed by --print-after* goes to ``print_stream`` (stderr by default).
    """
    print_stream = print_stream or sys.stderr
    backend = load_backend(request.backend, request.overrides)
    pipeline_names = [entry.name for entry in backend.pipeline]
    for flag, names in (("--print-after", request.print_after), ("--explain", request.explain)):
        for name in names:
            require_in_pipeline(flag, name, pipeline_names)
    check_output_dir(request.out, protected=[request.model])
    if request.dump_dir is not None:
        check_output_dir(request.dump_dir, protected=[request.model])

    manager = PassManager(
        backend.pipeline, registry(), _instruments(request, backend, print_stream),
        stop_after=request.stop_after, disabled=request.disable,
    )
    start = time.perf_counter()
    graph, import_stats = import_model(request.model)
    import_record = StageRecord(0, "import", status="ran", changed=True, stats=import_stats.counts,
                                seconds=time.perf_counter() - start)
    ctx = PassContext(backend=backend)
    graph = manager.run(graph, ctx, import_record)
    records = [import_record, *manager.records]
    outputs = _write_outputs(request.out, graph, backend, records)
    return CompileResult(backend, graph, records, ctx, outputs)


def _instruments(request: CompileRequest, backend: BackendConfig, print_stream: TextIO) -> list:
    instruments = []
    if request.dump_dir is not None:
        instruments.append(DumpInstrument(request.dump_dir, backend.name))
    if request.print_after or request.print_after_all or request.print_changed:
        instruments.append(PrintInstrument(print_stream, set(request.print_after),
                                           request.print_after_all, request.print_changed))
    return instruments


def _write_outputs(out_dir: Path, graph: gs.Graph, backend: BackendConfig, records: list[StageRecord]) -> list[Path]:
    model = ir.to_model(graph)
    check_model(model, "the compiled model is not valid ONNX")  # weights too, once
    files = {
        "model.onnx": model.SerializeToString(),
        "pipeline.txt": pipeline_text(backend.name, records),
    }
    with staged_output_dir(out_dir) as stage:
        for name, payload in files.items():
            write_atomic(stage / name, payload)
    return [Path(out_dir) / name for name in files]
