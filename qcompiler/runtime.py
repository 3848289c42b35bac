"""Running models in onnxruntime: sessions, feeds, and output comparison."""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from qcompiler.errors import QCompileError, first_line
from qcompiler.graph.serialize import session_model

_NUMPY_OF_ORT = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def numpy_dtype(ort_type: str) -> type:
    """The NumPy type of an onnxruntime type string such as 'tensor(float)'."""
    return _NUMPY_OF_ORT.get(ort_type, np.float32)


def session(model: onnx.ModelProto | bytes | Path | str, threads: int = 0, memory_pattern: bool = True,
            optimize: bool | Literal["basic"] = True, arena: bool = True, fuse_qdq: bool = True,
            spinning: bool = True) -> ort.InferenceSession:
    """A CPU session of a model (a message, its bytes or its file); ``threads=0`` lets onnxruntime choose.

    ``optimize=False`` runs the graph as written: Q/DQ in float, as the ONNX
    spec defines them, instead of fused into onnxruntime's integer kernels
    (which round and saturate their own way).

    ``fuse_qdq=False`` also keeps Q/DQ as the spec defines them, but still
    fuses the float ops around them. Up to the 'extended' level and with
    onnxruntime's Q/DQ fusions disabled, every tensor of MobileNetV2's
    TensorRT Q/DQ model matches an unoptimized run within 2e-7 (relative);
    with them, one layer is off by 19%, and the 'all' level is off by 13%
    even without them.

    ``optimize="basic"`` keeps Q/DQ too and fuses nothing: onnxruntime's
    basic level (constant folding, redundant nodes removed) makes a session
    in half the time of the level above it and runs a fake-quant model about
    as fast, which suits a session run once on a few samples (layer_fallback
    ranks each layer with one: PaddleOCR classifier 0.30 s -> 0.11 s).

    ``memory_pattern=False`` suits models that return many intermediate
    tensors (calibration, reports): there onnxruntime's memory-pattern
    planning costs more than it saves (MobileNetV2 observer: 1.8 s -> 0.8 s).

    ``arena=False`` suits a session run once or twice: onnxruntime's memory
    arena pays off only once its first runs have grown it (MobileNetV2
    report, Q/DQ model with its layer outputs, one run: 0.18 s -> 0.10 s).

    ``spinning=False`` suits a session that shares the CPU with other work
    between runs (calibration reads the next batch meanwhile): its idle
    threads then sleep instead of spinning.
    """
    options = _options(threads, memory_pattern, optimize, arena, fuse_qdq, spinning)
    return _created(_source(model), options)


def graph_session(graph: gs.Graph, outputs: Sequence[str] = (), threads: int = 0, memory_pattern: bool = True,
                  optimize: bool | Literal["basic"] = True, arena: bool = True, fuse_qdq: bool = True,
                  spinning: bool = True) -> ort.InferenceSession:
    """A session of ``graph`` that also returns the tensors ``outputs``; options as for ``session``.

    Its large weights are handed to onnxruntime as the graph's own arrays
    (external initializers in memory) instead of being copied into a
    protobuf message, serialized and parsed back: a VGG-19 session (550 MB)
    takes 1.0 s instead of 10.4 s, and 0.6 GB less memory. Nor does
    onnxruntime pre-pack the weights for its GEMM kernels: the packed copy
    pays off over many large batches, and these sessions (calibration,
    reports) run few, one sample at a time: VGG-19 1.03 s -> 0.51 s, runs
    as fast.
    """
    model, large = session_model(graph, outputs)
    options = _options(threads, memory_pattern, optimize, arena, fuse_qdq, spinning)
    options.add_session_config_entry("session.disable_prepacking", "1")
    arrays = [np.ascontiguousarray(constant.values) for constant in large]
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays]
    if large:
        options.add_external_initializers([constant.name for constant in large], values)
    created = _created(model.SerializeToString(), options)
    created._qcompiler_weights = (arrays, values)  # onnxruntime may read them as long as the session lives
    return created


def _created(source: bytes | str, options: ort.SessionOptions) -> ort.InferenceSession:
    """An onnxruntime CPU session, or a one-line error when onnxruntime cannot load the model."""
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types (Fail, InvalidGraph, NotImplemented, ...)
        raise QCompileError(f"onnxruntime cannot load the model ({first_line(exc)}); qcompile runs it to calibrate "
                            "and measure, so every op must be one onnxruntime has (for a custom op, register its "
                            "library)") from exc


def _options(threads: int, memory_pattern: bool, optimize: bool | Literal["basic"], arena: bool, fuse_qdq: bool,
             spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_mem_pattern = memory_pattern
    options.enable_cpu_mem_arena = arena
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    elif optimize == "basic":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif not fuse_qdq:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


def optimized_ops(model: onnx.ModelProto | Path | str) -> Counter:
    """The ops onnxruntime's CPU provider runs for ``model`` after its graph optimizations, counted by type.

    The 'extended' level: it holds the Q/DQ fusions into integer kernels
    (QLinearConv, QGemm, ...) but not the layout changes, so the graph it
    saves is still portable ONNX.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(_source(model), options, providers=["CPUExecutionProvider"])
        return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def _source(model: onnx.ModelProto | bytes | Path | str) -> bytes | str:
    """What InferenceSession takes: a model's bytes, or its path."""
    if isinstance(model, bytes):
        return model
    return model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)


def run(model: onnx.ModelProto | gs.Graph | Path | str | ort.InferenceSession,
        feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of ``model`` on ``feeds``; a model (not a session) runs Q/DQ as the ONNX spec defines them.

    That is what a fake-quant model means and what every backend's integer
    kernels reproduce; onnxruntime's own fused integer kernels round and
    saturate their own way (MobileNetV2 for acl, int8 asymmetric activations:
    16.9 dB against float as specified, 8.5 dB fused). Pass a session to run
    it otherwise.
    """
    if isinstance(model, ort.InferenceSession):
        sess = model
    elif isinstance(model, gs.Graph):
        sess = graph_session(model, fuse_qdq=False)
    else:
        sess = session(model, fuse_qdq=False)
    return sess.run(None, dict(feeds))


def random_feeds(sess: ort.InferenceSession, seed: int = 0, dims: Mapping[str, int] | None = None,
                 default_dim: int = 1) -> dict[str, np.ndarray]:
    """Seeded normal inputs for every model input; symbolic dims from ``dims`` or ``default_dim``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (dims or {}).get(str(d), default_dim) for d in value.shape]
        dtype = numpy_dtype(value.type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the intermediate tensors ``names`` (after its own outputs)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(_added_outputs(model, names))
    return exposed


def _added_outputs(model: onnx.ModelProto, names: Sequence[str]) -> list[onnx.ValueInfoProto]:
    """Output declarations for those of ``names`` that ``model`` does not return yet."""
    existing = {o.name for o in model.graph.output}
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    return [onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None)
            for name in dict.fromkeys(names) if name not in existing]


def relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """max |reference - actual| / max |reference| (0 when both are 0)."""
    reference = np.asarray(reference, np.float64)
    actual = np.asarray(actual, np.float64)
    scale = np.abs(reference).max() if reference.size else 0.0
    diff = np.abs(reference - actual).max() if reference.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)
