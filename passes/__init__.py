"""The pass registry: one module per pass, the module name is the pass name.

Every module here defines exactly one ``Pass`` subclass whose ``name`` equals
the module's name; ``registry()`` imports them all and returns name -> class.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache

from qcompiler.pipeline.pass_base import Pass


@cache
def registry() -> dict[str, type[Pass]]:
    found: dict[str, type[Pass]] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        passes = [obj for obj in vars(module).values()
                  if inspect.isclass(obj) and issubclass(obj, Pass) and obj.__module__ == module.__name__]
        if len(passes) != 1 or passes[0].name != module_info.name:
            raise TypeError(f"passes/{module_info.name}.py must define one Pass named {module_info.name!r}")
        found[module_info.name] = passes[0]
    return found
