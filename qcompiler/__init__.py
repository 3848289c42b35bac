"""qcompiler: FP32 ONNX in, a model quantized the way a backend runs it out."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# Installed, passes/ and backends/ live inside this package (a package-dir
# mapping in pyproject.toml). In a source checkout they sit beside it; let
# `python -m qcompiler` and `python -m pytest` from the checkout find them too.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "passes").exists() and (_checkout / "passes" / "__init__.py").exists():
    __path__.append(str(_checkout))  # noqa: F821 - the package's own __path__
