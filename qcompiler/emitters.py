"""The emitter registry: modules under qcompiler.backends that write a backend's files.

An emitter module defines ``emit(graph, ctx, out_dir)``; its module name is
the name a backend YAML lists under ``emit:``.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Callable


@cache
def emitter_registry() -> dict[str, Callable]:
    import qcompiler.backends as package

    found = {}
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        if callable(getattr(module, "emit", None)):
            found[module_info.name] = module.emit
    return found
