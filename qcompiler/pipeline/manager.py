"""Runs a backend's pipeline: checks contracts, verifies, times, and reports.

The manager never reorders: the YAML list is the order. Before a pass it
checks the pass's ``requires``; after it, it verifies the graph (our
invariants, the ONNX checker, fresh shapes) and checks ``ensures``. A failure
names the pass and the stages that ran before it. Instruments observe every
stage (import is stage 000) without being able to change it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Protocol, Sequence

import onnx_graphsurgeon as gs

from qcompiler.config import schema
from qcompiler.config.backend import PipelineEntry
from qcompiler.config.schema import SchemaError
from qcompiler.errors import QCompileError, UsageError, first_line
from qcompiler.graph import ir
from qcompiler.graph.verify import verified
from qcompiler.pipeline.pass_base import Pass, PassContext

log = logging.getLogger(__name__)

StageStatus = Literal["ran", "disabled", "not reached"]


@dataclass
class StageRecord:
    index: int
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    status: StageStatus = "not reached"
    changed: bool = False
    stats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.index:03d}_{self.name}"


class Instrument(Protocol):
    def after_stage(self, record: StageRecord, graph: gs.Graph, ctx: PassContext) -> None: ...

    def finish(self, records: Sequence[StageRecord], ctx: PassContext) -> None: ...


@dataclass(frozen=True)
class BoundPass:
    """A pipeline entry bound to its pass class, its options built and checked."""

    name: str
    pass_cls: type[Pass]
    options: Any


def bind_pipeline(pipeline: Sequence[PipelineEntry], registry: Mapping[str, type[Pass]]) -> list[BoundPass]:
    """Each entry's pass from ``registry`` with its typed options; an unknown name or option is a SchemaError."""
    bound = []
    for index, entry in enumerate(pipeline):
        if entry.name not in registry:
            raise SchemaError(f"pipeline[{index}]: unknown pass {entry.name!r}; known passes: {', '.join(registry)}")
        pass_cls = registry[entry.name]
        bound.append(BoundPass(entry.name, pass_cls, schema.build(pass_cls.Options, entry.options,
                                                                  f"pipeline[{index}].options")))
    return bound


@dataclass(frozen=True)
class _Step:
    record: StageRecord
    pass_cls: type[Pass]
    options: Any


class PassManager:
    def __init__(
        self,
        pipeline: Sequence[BoundPass],
        instruments: Sequence[Instrument] = (),
        stop_after: str | None = None,
        disabled: Sequence[str] = (),
    ):
        self.steps = [_Step(StageRecord(index, bound.name, schema.to_plain(bound.options)), bound.pass_cls,
                            bound.options) for index, bound in enumerate(pipeline, start=1)]
        names = [step.record.name for step in self.steps]
        for flag, value in [("--stop-after", stop_after), *[("--disable", d) for d in disabled]]:
            if value is not None:
                require_in_pipeline(flag, value, names)
        self.instruments = list(instruments)
        self.stop_after = stop_after
        self.disabled = set(disabled)

    @property
    def records(self) -> list[StageRecord]:
        return [step.record for step in self.steps]

    def run(self, graph: gs.Graph, ctx: PassContext, import_record: StageRecord) -> gs.Graph:
        """Run every step on ``graph`` (already imported) and return the final graph."""
        history = [import_record.name]
        active = [step.pass_cls(step.options) for step in self._active()]
        ctx.requests = {request for step in active for request in step.requests()}
        _hold_out(ctx, max((step.held_out() for step in active), default=0.0))
        self._notify(import_record, graph, ctx)
        try:
            for step in self.steps:
                if step.record.name in self.disabled:
                    step.record.status = "disabled"
                    continue
                graph = self._run_step(step, graph, ctx, history)
                history.append(step.record.name)
                if step.record.name == self.stop_after:
                    break
        finally:
            for instrument in self.instruments:
                instrument.finish([import_record, *self.records], ctx)
        return graph

    def _active(self) -> list[_Step]:
        """The steps that will run: up to --stop-after, without the --disable'd ones."""
        active = []
        for step in self.steps:
            if step.record.name not in self.disabled:
                active.append(step)
            if step.record.name == self.stop_after:
                break
        return active

    def _run_step(self, step: _Step, graph: gs.Graph, ctx: PassContext, history: list[str]) -> gs.Graph:
        record, name = step.record, step.record.name
        ran_before = ", ".join(history)
        for prop in step.pass_cls.requires:
            violation = prop.violation(graph, ctx)
            if violation:
                raise QCompileError(f"{name} needs {prop.name}; run {prop.established_by} first ({violation})")
        ctx.current_pass = name
        if step.pass_cls.lowers and ctx.fake_quant is None:
            ctx.fake_quant = ir.copy_graph(graph)
        start = time.perf_counter()
        try:
            result = step.pass_cls(step.options).run(graph, ctx)
            graph = verified(graph)
        except QCompileError as exc:  # keeps its class, so a usage error still exits 2
            raise type(exc)(f"pass {name} failed (after {ran_before}): {exc}") from exc
        except Exception as exc:
            log.debug("pass %s raised", name, exc_info=True)
            raise QCompileError(f"pass {name} failed (after {ran_before}): {type(exc).__name__}: {first_line(exc)}") from exc
        finally:
            ctx.current_pass = ""
        record.seconds = time.perf_counter() - start
        record.status, record.changed, record.stats = "ran", result.changed, dict(result.stats)
        for prop in step.pass_cls.ensures:
            violation = prop.violation(graph, ctx)
            if violation:
                raise QCompileError(f"pass {name} did not ensure {prop.name} (after {ran_before}): {violation}")
        log.info("%s: %.3f s %s", record.label, record.seconds, format_stats(record.stats))
        self._notify(record, graph, ctx)
        return graph

    def _notify(self, record: StageRecord, graph: gs.Graph, ctx: PassContext) -> None:
        for instrument in self.instruments:
            instrument.after_stage(record, graph, ctx)


def _hold_out(ctx: PassContext, share: float) -> None:
    """Without evaluation data, keep ``share`` of the calibration samples for the passes that evaluate on them
    (``Pass.held_out``): the passes that calibrate never see them."""
    if not share or ctx.eval_data is not None or ctx.calibration_data is None:
        return
    kept, held = ctx.calibration_data.split(share)
    if not kept.head(1) or not held.head(1):
        raise UsageError(f"{ctx.calibration_data.description}: too few to hold out {share:.0%} of them for "
                         "evaluation; give more samples, or --eval-data")
    ctx.calibration_data, ctx.eval_data = kept, held


def require_in_pipeline(flag: str, name: str, pipeline: Sequence[str]) -> None:
    if name not in pipeline:
        listed = ", ".join(pipeline) or "no passes"
        raise UsageError(f"{flag} {name}: not in this backend's pipeline ({listed})")


def format_stats(stats: Mapping[str, int]) -> str:
    return ", ".join(f"{key}={stats[key]}" for key in sorted(stats))


def pipeline_text(backend: str, records: Sequence[StageRecord]) -> str:
    """The resolved pipeline with each stage's outcome; deterministic (no times)."""
    lines = [f"# qcompile pipeline for backend {backend}"]
    for record in records:
        options = f" options {record.options}" if record.options else ""
        outcome = record.status + (", changed" if record.changed else "") if record.status == "ran" else record.status
        stats = f" stats {format_stats(record.stats)}" if record.stats else ""
        lines.append(f"{record.index:03d} {record.name}: {outcome}{options}{stats}")
    return "\n".join(lines) + "\n"


def timing_text(records: Sequence[StageRecord]) -> str:
    ran = [r for r in records if r.status == "ran"]
    lines = [f"{r.index:03d} {r.name:<24} {r.seconds:9.3f} s" for r in ran]
    lines.append(f"{'total':<28} {sum(r.seconds for r in ran):9.3f} s")
    return "\n".join(lines) + "\n"
