"""Emitters and checkers: modules under qcompiler.backends that write and check a backend's own files.

An emitter module defines
- ``Options``: a dataclass of its options (built strictly from the YAML's
  ``emit: [{name, options}]`` entry and the matching command-line flags);
- ``emit(compiled, options) -> {file name: bytes | str}``: the files, which
  the driver writes atomically beside model.qdq.onnx;
- optionally ``check(model) -> deploy.CheckReport``: the backend's rules applied
  to any Q/DQ model (``qcompile check --backend NAME M.onnx``).
Its module name is the name a backend YAML lists under ``emit:``.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import Any, Callable

import onnx
import onnx_graphsurgeon as gs

from qcompiler import schema
from qcompiler.backend import BackendConfig
from qcompiler.deploy import CheckReport
from qcompiler.errors import QCompileError, UsageError
from qcompiler.quant_plan import QuantPlan
from qcompiler.verify import check_model

Files = dict[str, "bytes | str"]


@dataclass
class Compiled:
    """What a compile produced, as emitters read it."""

    backend: BackendConfig
    plan: QuantPlan
    graph: gs.Graph                 # the calibrated Q/DQ graph (model.qdq.onnx); emitters copy before changing it
    quant_model: onnx.ModelProto    # model.qdq.onnx
    float_model: onnx.ModelProto    # model.onnx: the float model the quantizers were placed on


def checked(model: onnx.ModelProto, file_name: str, backend: str, check: Callable[[onnx.ModelProto], CheckReport]) -> bytes:
    """``model`` serialized, once it is valid ONNX and ``check`` finds no violation of ``backend``'s rules."""
    payload = model.SerializeToString()
    check_model(payload, f"{file_name} is not valid ONNX")
    report = check(model)
    if report.violations:
        raise QCompileError(f"{file_name} breaks a {backend} rule: {report.violations[0]} "
                            f"({len(report.violations)} in all; run qcompile check --backend {backend})")
    return payload


@cache
def emitter_registry() -> dict[str, ModuleType]:
    import qcompiler.backends as package

    found = {}
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        if callable(getattr(module, "emit", None)):
            found[module_info.name] = module
    return found


def checkers() -> dict[str, ModuleType]:
    """Emitter modules that also check models: their names are what ``qcompile check --backend`` takes."""
    return {name: module for name, module in emitter_registry().items() if callable(getattr(module, "check", None))}


def emitter_options(name: str, options: dict[str, Any], flags: dict[str, Any], path: str) -> Any:
    """The ``Options`` of emitter ``name``: the YAML's options, then the command-line flags it knows."""
    known = _option_names(name)
    merged = {**options, **{key: value for key, value in flags.items() if key in known and value is not None}}
    return schema.build(emitter_registry()[name].Options, merged, path)


def _option_names(emitter: str) -> set[str]:
    return {f.name for f in dataclasses.fields(emitter_registry()[emitter].Options)}


def require_flags_used(flags: dict[str, Any], emitters: list[str]) -> None:
    """A flag that no emitter of this backend reads is a mistake worth saying."""
    for key, value in flags.items():
        if value is None:
            continue
        readers = [name for name in emitters if key in _option_names(name)]
        if not readers:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag}: this backend emits {', '.join(emitters) or 'no backend files'}, "
                             f"none of which reads {flag}")


def emit_all(compiled: Compiled, flags: dict[str, Any]) -> Files:
    """Every file the backend's emitters write, by name; two emitters may not write one name."""
    files: Files = {}
    for index, entry in enumerate(compiled.backend.emit):
        options = emitter_options(entry.name, entry.options, flags, f"emit[{index}].options")
        for name, payload in emitter_registry()[entry.name].emit(compiled, options).items():
            if name in files:
                raise UsageError(f"emit: two emitters write {name}; list each once")
            files[name] = payload
    return files
