"""The emitter interface: what a module under qcompiler.backends implements to write a backend's files.

An emitter module defines
- ``Options``: a dataclass of its options, built strictly from the YAML's
  ``emit: [{name, options}]`` entry and ``--emit-option KEY=VALUE``;
- ``emit(compiled, options) -> {file name: bytes | str | gs.Graph}``: the
  files, which the driver writes atomically beside model.qdq.onnx (a graph
  as an ONNX model, checked by the ONNX checker once written);
- optionally ``check(model, backend) -> CheckReport``: the backend's rules
  (its ``constraints:`` and its file format's own) applied to any Q/DQ
  model; ``qcompile check --backend NAME|FILE`` runs the checkers of the
  backend's emitters, so a file that extends a shipped backend gets them.
Its module name is the name a backend YAML lists under ``emit:``; the
registry that finds emitters by that name is ``emit.registry``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import onnx
import onnx_graphsurgeon as gs

from qcompiler.config.backend import BackendConfig
from qcompiler.emit.qdq_view import CheckReport
from qcompiler.errors import QCompileError
from qcompiler.quant.plan import QuantPlan

log = logging.getLogger("qcompiler")

Files = dict[str, "bytes | str | gs.Graph"]
Checker = Callable[["onnx.ModelProto | gs.Graph", BackendConfig], CheckReport]


@dataclass
class Compiled:
    """What a compile produced, as emitters read it."""

    backend: BackendConfig
    plan: QuantPlan
    graph: gs.Graph          # the calibrated Q/DQ graph (model.qdq.onnx); emitters copy before changing it
    float_graph: gs.Graph    # model.onnx: the float graph the quantizers were placed on


@dataclass(frozen=True)
class EmitOption:
    """An emitter option from the command line: ``--emit-option KEY=VALUE`` or an alias flag for it."""

    key: str
    text: str
    flag: str   # how the user gave it, for messages: "--emit-option trt_version", "--trt-version"


@dataclass(frozen=True)
class BoundEmitter:
    """An emit entry bound to its module, its options built and checked."""

    name: str
    module: ModuleType
    options: Any


def checked(graph: gs.Graph, file_name: str, backend: BackendConfig, check: Checker) -> gs.Graph:
    """``graph``, once ``check`` finds no violation of ``backend``'s rules in it."""
    report = check(graph, backend)
    for note in report.notes:
        log.warning("%s: %s", file_name, note)
    if report.violations:
        raise QCompileError(f"{file_name} breaks a {backend.name} rule: {report.violations[0]} "
                            f"({len(report.violations)} in all; run qcompile check --backend {backend.name})")
    return graph
