"""The package's layout: no import cycle among its modules, and a backend loads without the heavy parts.

RUN: python -c "from qcompiler.config.loader import load_backend; load_backend('academic')"
and look at sys.modules; and every import statement of the installed package,
module-level and inside functions, as a graph that must have no cycle.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx

import qcompiler

PACKAGE = Path(qcompiler.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name (packages by their __init__)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(["qcompiler", *parts])] = path
    return modules


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, wherever the statement is (top level or in a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & known


def test_no_module_imports_itself_through_others():
    modules = _modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in _imports(path, set(modules)) if target != name)
    assert graph.number_of_edges() > 100  # the walk found the imports
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_loading_a_backend_imports_no_pass_emitter_or_runtime():
    probe = ("import json, sys; from qcompiler.config.loader import load_backend; load_backend('academic'); "
             "load_backend('tensorrt'); print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    loaded = set(json.loads(done.stdout))
    project = {m for m in loaded if m.split(".")[0] == "qcompiler"}
    assert project == {"qcompiler", "qcompiler.errors", "qcompiler.backends", "qcompiler.config",
                       "qcompiler.config.schema", "qcompiler.config.backend", "qcompiler.config.validate",
                       "qcompiler.config.loader"}
    assert not {"onnxruntime", "onnx", "onnx_graphsurgeon", "numpy"} & {m.split(".")[0] for m in loaded}
