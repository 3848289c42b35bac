"""Instruments watch the pipeline: dumps per stage and QIR printing.

``DumpInstrument`` writes ``NNN_<stage>.qir`` and ``NNN_<stage>.onnx`` for
every stage (``000_import`` first), then ``pipeline.txt``, ``timing.txt`` and
``explain.txt`` (and ``quant_plan.yaml`` once quantizers are placed). ``PrintInstrument`` prints the QIR after chosen passes, after
all of them, or after those that changed it, to a stream (stderr by default).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

import onnx_graphsurgeon as gs

from qcompiler.fileio import write_atomic
from qcompiler.graph import qir
from qcompiler.graph.serialize import save_model
from qcompiler.pipeline.manager import StageRecord, pipeline_text, timing_text
from qcompiler.pipeline.pass_base import PassContext


class DumpInstrument:
    def __init__(self, dump_dir: Path, backend: str):
        self.dump_dir = Path(dump_dir)
        self.backend = backend
        self.dump_dir.mkdir(parents=True, exist_ok=True)

    def after_stage(self, record: StageRecord, graph: gs.Graph, ctx: PassContext) -> None:
        write_atomic(self.dump_dir / f"{record.label}.qir", qir.to_text(graph))
        save_model(graph, self.dump_dir / f"{record.label}.onnx")

    def finish(self, records: Sequence[StageRecord], ctx: PassContext) -> None:
        write_atomic(self.dump_dir / "pipeline.txt", pipeline_text(self.backend, records))
        write_atomic(self.dump_dir / "timing.txt", timing_text(records))
        write_atomic(self.dump_dir / "explain.txt", "".join(f"{e}\n" for e in ctx.explanations))
        if ctx.plan:
            write_atomic(self.dump_dir / "quant_plan.yaml", ctx.plan.to_yaml())


@dataclass
class PrintInstrument:
    stream: TextIO
    after: set[str] = field(default_factory=set)
    after_all: bool = False
    changed_only: bool = False
    _previous: str = ""

    def after_stage(self, record: StageRecord, graph: gs.Graph, ctx: PassContext) -> None:
        text = qir.to_text(graph)
        previous, self._previous = self._previous, text
        if record.index == 0:
            return
        wanted = self.after_all or record.name in self.after or (self.changed_only and text != previous)
        if wanted:
            self.stream.write(f"; *** QIR after {record.label} ***\n{text}")

    def finish(self, records: Sequence[StageRecord], ctx: PassContext) -> None:
        self.stream.flush()
