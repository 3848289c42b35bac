"""The emitter registry: the modules under qcompiler.backends by name, bound to a backend's ``emit:`` list.

Importing this imports every emitter; the driver does it when it binds a
backend, ``qcompile check`` when it looks for a backend's checkers. The
config loader never does.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from functools import cache
from types import ModuleType
from typing import Any, Sequence

import yaml

from qcompiler.config import schema
from qcompiler.config.backend import BackendConfig, EmitEntry
from qcompiler.config.schema import SchemaError
from qcompiler.emit.emitters import BoundEmitter, Checker, Compiled, EmitOption, Files
from qcompiler.emit.rules import check_constraints
from qcompiler.errors import UsageError


@cache
def emitter_registry() -> dict[str, ModuleType]:
    import qcompiler.backends as package

    found = {}
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        if callable(getattr(module, "emit", None)):
            found[module_info.name] = module
    return found


def bind_emitters(entries: Sequence[EmitEntry], options: Sequence[EmitOption] = ()) -> list[BoundEmitter]:
    """Each entry's emitter module with its options: the YAML's, then the command line's that it reads.

    An unknown emitter or option is a SchemaError; a command-line option that
    none of the emitters reads is a UsageError, since it would do nothing.
    """
    known = emitter_registry()
    bound = []
    for index, entry in enumerate(entries):
        if entry.name not in known:
            raise SchemaError(f"emit[{index}]: unknown emitter {entry.name!r}; known emitters: {', '.join(known)}")
        module = known[entry.name]
        given = {o.key: _option_value(module.Options, o.key, o.text) for o in options
                 if o.key in _option_names(module)}
        bound.append(BoundEmitter(entry.name, module,
                                  schema.build(module.Options, {**entry.options, **given}, f"emit[{index}].options")))
    for option in options:
        if not any(option.key in _option_names(b.module) for b in bound):
            names = ", ".join(b.name for b in bound) or "no backend files"
            raise UsageError(f"{option.flag}: this backend emits {names}, none of which reads {option.flag}")
    return bound


def _option_names(module: ModuleType) -> set[str]:
    return {f.name for f in dataclasses.fields(module.Options)}


def _option_value(options_type: type, key: str, text: str) -> Any:
    """A command-line option's text as its field's type: kept as text for a string, else read as YAML."""
    hint = typing.get_type_hints(options_type)[key]
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
    if hint is str or (choices and all(isinstance(c, str) for c in choices)):
        return text
    return yaml.safe_load(text)


def checkers(backend: BackendConfig) -> list[Checker]:
    """What ``qcompile check --backend`` runs: each emitter's checker, or the constraint rules alone."""
    registry = emitter_registry()
    found = [registry[e.name].check for e in backend.emit
             if e.name in registry and callable(getattr(registry[e.name], "check", None))]
    if found:
        return found
    constrained = backend.constraints != type(backend.constraints)()
    return [check_constraints] if constrained else []


def emit_all(compiled: Compiled, emitters: Sequence[BoundEmitter]) -> Files:
    """Every file the backend's emitters write, by name; two emitters may not write one name."""
    files: Files = {}
    for emitter in emitters:
        for name, payload in emitter.module.emit(compiled, emitter.options).items():
            if name in files:
                raise UsageError(f"emit: two emitters write {name}; list each once")
            files[name] = payload
    return files
