"""Import: turn a user's ONNX file into the clean graph every pass expects.

Steps, in order: load (external data mapped straight into numpy arrays,
copy-on-write, without going through protobuf: a model past 2 GB loads in
no time and its weights are read from the page cache as they are used);
refuse a model that is already quantized; treat initializers listed as graph inputs (IR < 4) as constants;
give negative dims a symbolic name; check; upgrade opsets below 13; make
Constant-node weights initializers; drop Identity and inference-mode Dropout;
fold constant subgraphs (ConstantOfShape weights, shape arithmetic, Pad
subgraphs); name every node uniquely; check again and infer shapes. Dynamic
dimensions stay dynamic: nothing here fixes an input shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime
from onnx import version_converter
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.logger import G_LOGGER

from qcompiler.errors import QCompileError, UsageError, first_line
from qcompiler.graph import ir
from qcompiler.graph.ops import is_quantized_op
from qcompiler.graph.verify import MIN_OPSET, check_model, verified

G_LOGGER.severity = G_LOGGER.ERROR

# IR 4 is the first to allow initializers that are not graph inputs.
MIN_IR_VERSION = 4


@dataclass
class ImportStats:
    """What import changed, reported as the statistics of stage 000."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] = self.counts.get(key, 0) + n


def import_model(path: Path, model: onnx.ModelProto | None = None) -> tuple[gs.Graph, ImportStats]:
    """Load ``path`` (its message given as ``model`` if read already) and return the canonical graph with
    what import did."""
    path = Path(path)
    stats = ImportStats()
    model = model if model is not None else load_model(path, external_data=False)
    refuse_unsupported(model, path)
    stats.add("initializer_inputs_removed", _drop_initializer_inputs(model))
    stats.add("negative_dims_named", _name_negative_dims(model))
    check_model(_without_external_data(model), f"{path.name} is not a valid ONNX model", UsageError)
    if ir.default_opset(model) < MIN_OPSET and _external(model):  # the converter reads constants' values
        onnx.load_external_data_for_model(model, str(path.parent))
    model = _upgrade_opset(model, stats)
    graph = ir.to_graph(model)
    _load_external_data(graph, path)
    stats.add("constant_nodes_to_initializers", _constant_nodes_to_initializers(graph))
    stats.add("identities_removed", _bypass_all(graph, _is_removable_identity))
    stats.add("dropouts_removed", _bypass_all(graph, _is_inference_dropout))
    stats.add("constant_nodes_folded", _fold_constants(graph))
    stats.add("nodes_named", name_nodes(graph))
    return verified(graph), stats


def _external(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def _without_external_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` for the ONNX checker: its initializers kept in another file as typed graph inputs instead."""
    external = _external(model)
    if not external:
        return model
    names = {t.name for t in external}
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    kept = [t for t in skeleton.graph.initializer if t.name not in names]
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(kept)
    skeleton.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in external)
    return skeleton


def _load_external_data(graph: gs.Graph, path: Path) -> None:
    """Each constant whose data the model keeps in a file beside it, read from there into its numpy array."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and isinstance(tensor._values, LazyValues) \
                and tensor._values.tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.values = _read_external(tensor._values.tensor, path)
            tensor.data_location = None  # in memory now; where a written model keeps it is the writer's choice


def _read_external(tensor: onnx.TensorProto, model_path: Path) -> np.ndarray:
    """The tensor's data mapped from its file, copy-on-write: no pass writes into a weight, and none of it
    is read into memory before it is used (the 2.4 GB MLP of benchmarks/scale.py: import 6.0 s -> 0.04 s)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = Path(info.get("location", ""))
    source = (model_path.parent / location).resolve()
    if location.is_absolute() or model_path.parent.resolve() not in source.parents:
        raise UsageError(f"{model_path.name}: the data of {tensor.name} is said to be in {location}, outside "
                            "the model's folder; keep the model's data files beside it")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(tensor.dims, dtype=np.int64))
    offset = int(info.get("offset", 0))
    if not source.is_file() or source.stat().st_size < offset + count * dtype.itemsize:
        raise UsageError(f"{model_path.name}: the data of {tensor.name} should be in {location} beside it "
                            f"({count * dtype.itemsize} bytes from offset {offset}); copy that file next to the model")
    return np.memmap(source, dtype=dtype, mode="c", offset=offset, shape=tuple(tensor.dims))


def require_model_file(path: Path) -> None:
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such model file; give the path of an .onnx file")


def load_model(path: Path, external_data: bool = True) -> onnx.ModelProto:
    """The model at ``path`` (its external data too unless ``external_data`` is false), or a one-line error."""
    path = Path(path)
    require_model_file(path)
    if path.stat().st_size == 0:
        raise UsageError(f"{path.name} is empty (0 bytes); give an .onnx model file")
    try:
        model = onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError...
        raise UsageError(f"{path.name} could not be read as ONNX ({first_line(exc)}); is it an .onnx file?") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise UsageError(f"{path.name} holds no graph (no nodes); is it an .onnx model file?")
    return model


def refuse_unsupported(model: onnx.ModelProto, path: Path) -> None:
    """A one-line UsageError for a model qcompile does not take: quantized already, or of a future opset."""
    for node in model.graph.node:
        if is_quantized_op(node.op_type):
            raise UsageError(f"{Path(path).name} is already quantized ({node.op_type} node {node.name!r}); "
                             "qcompile takes the FP32 model")
    newest = onnx.defs.onnx_opset_version()
    if ir.default_opset(model) > newest:
        raise UsageError(f"{Path(path).name} is stamped opset {ir.default_opset(model)}, newer than the {newest} that "
                         f"onnx {onnx.__version__} knows; export it at opset {newest} or lower")


def _drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """IR < 4 lists every initializer as a graph input; we treat them as constants."""
    initializers = {init.name for init in model.graph.initializer}
    real_inputs = [value for value in model.graph.input if value.name not in initializers]
    dropped = len(model.graph.input) - len(real_inputs)
    del model.graph.input[:]
    model.graph.input.extend(real_inputs)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return dropped


def _name_negative_dims(model: onnx.ModelProto) -> int:
    """Some exporters write dim_value -1 for a dynamic dim; ONNX wants a dim_param."""
    renamed = 0
    for value in list(model.graph.input) + list(model.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.dim_param = f"{value.name}_dim{axis}"
                renamed += 1
    return renamed


def _upgrade_opset(model: onnx.ModelProto, stats: ImportStats) -> onnx.ModelProto:
    opset = ir.default_opset(model)
    if opset >= MIN_OPSET:
        return model
    try:
        upgraded = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise QCompileError(
            f"cannot upgrade the model from opset {opset} to {MIN_OPSET} ({first_line(exc)}); "
            f"export it at opset {MIN_OPSET} or newer"
        ) from exc
    stats.add(f"opset_upgraded_from_{opset}")
    return upgraded


def _constant_nodes_to_initializers(graph: gs.Graph) -> int:
    converted = 0
    for node in graph.nodes:
        if node.op != "Constant" or len(node.outputs) != 1:
            continue
        value = _constant_node_value(node)
        if value is None:
            continue
        output = node.outputs[0]
        node.outputs.clear()
        output.to_constant(value)
        converted += 1
    return converted


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if isinstance(attrs.get("value"), gs.Constant):
        return np.asarray(attrs["value"].values)
    scalar_forms = {"value_float": np.float32, "value_int": np.int64,
                    "value_floats": np.float32, "value_ints": np.int64}
    for key, dtype in scalar_forms.items():
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None  # sparse or string constants stay as nodes


def _is_removable_identity(node: gs.Node) -> bool:
    return node.op == "Identity"


def _is_inference_dropout(node: gs.Node) -> bool:
    if node.op != "Dropout":
        return False
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False  # the mask is read by someone
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = ir.constant_value(node.inputs[2])
        return training is not None and not bool(training)
    return True


def _bypass_all(graph: gs.Graph, removable) -> int:
    removed = 0
    for node in list(graph.nodes):
        if removable(node) and _bypass(graph, node):
            removed += 1
    return removed


def _bypass(graph: gs.Graph, node: gs.Node) -> bool:
    """Let the consumers of ``node``'s first output read its first input instead.

    A graph output keeps its name: the producer's tensor takes it over. When
    that is impossible (the input is a graph input, an output or a constant),
    the node stays.
    """
    source, target = node.inputs[0], node.outputs[0]
    if ir.is_graph_output(graph, target):
        if not source.inputs or ir.is_graph_output(graph, source) or isinstance(source, gs.Constant):
            return False
        node.inputs.clear()
        node.outputs.clear()
        ir.replace_uses(target, source)
        graph.outputs = [source if out is target else out for out in graph.outputs]
        source.name = target.name
        source.dtype = source.dtype or target.dtype
        source.shape = source.shape if source.shape is not None else target.shape
        return True
    ir.replace_uses(target, source)
    node.inputs.clear()
    node.outputs.clear()
    return True


def _fold_constants(graph: gs.Graph) -> int:
    before = len(graph.nodes)
    _fill_constant_of_shape(graph)
    # onnx-graphsurgeon evaluates the rest in an onnxruntime session of its own, whose optimizer
    # warns about what it cannot simplify ("UnsqueezeElimination cannot remove node"): not the user's business
    onnxruntime.set_default_logger_severity(3)
    try:
        graph.fold_constants(fold_shapes=True, error_ok=False)
    except Exception as exc:
        raise QCompileError(f"constant folding failed: {first_line(exc)}") from exc
    graph.cleanup(remove_unused_graph_inputs=False)
    return before - len(graph.nodes)


def _fill_constant_of_shape(graph: gs.Graph) -> None:
    """Each ConstantOfShape of a constant shape becomes its value, filled in numpy.

    onnx-graphsurgeon folds it too, but through an onnxruntime session whose
    output it then copies: twice the weights' memory at once (onnx's light
    VGG-19 makes its 550 MB of weights this way).
    """
    for node in graph.nodes:
        shape = ir.constant_value(node.inputs[0]) if node.op == "ConstantOfShape" and node.inputs else None
        if shape is None or len(node.outputs) != 1:
            continue
        fill = node.attrs.get("value")
        value = np.asarray(fill.values).reshape(()) if isinstance(fill, gs.Constant) else np.float32(0)
        output = node.outputs[0]
        node.outputs.clear()
        output.to_constant(np.full(tuple(int(d) for d in shape), value, dtype=value.dtype))


def name_nodes(graph: gs.Graph) -> int:
    """Give every unnamed or duplicate-named node a name derived from its first output."""
    seen: set[str] = set()
    to_name = []
    for node in graph.nodes:
        if node.name and node.name not in seen:
            seen.add(node.name)
        else:
            to_name.append(node)
    names = ir.NameScope(seen)
    for node in to_name:
        node.name = names.fresh(node.outputs[0].name if node.outputs else node.op)
    return len(to_name)
