"""qcompiler: FP32 ONNX in, a model quantized the way a backend runs it out."""
from __future__ import annotations

__version__ = "0.1.0"
