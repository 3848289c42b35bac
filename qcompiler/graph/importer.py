"""Import: turn a user's ONNX file into the clean graph every pass expects.

Steps, in order: load (external data too); refuse a model that is already
quantized; treat initializers listed as graph inputs (IR < 4) as constants;
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
from onnx import version_converter
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


def import_model(path: Path) -> tuple[gs.Graph, ImportStats]:
    """Load ``path`` and return the canonical graph with what import did."""
    path = Path(path)
    stats = ImportStats()
    model = load_model(path)
    refuse_quantized(model, path)
    stats.add("initializer_inputs_removed", _drop_initializer_inputs(model))
    stats.add("negative_dims_named", _name_negative_dims(model))
    check_model(model, f"{path.name} is not a valid ONNX model")
    model = _upgrade_opset(model, stats)
    graph = ir.to_graph(model)
    stats.add("constant_nodes_to_initializers", _constant_nodes_to_initializers(graph))
    stats.add("identities_removed", _bypass_all(graph, _is_removable_identity))
    stats.add("dropouts_removed", _bypass_all(graph, _is_inference_dropout))
    stats.add("constant_nodes_folded", _fold_constants(graph))
    stats.add("nodes_named", name_nodes(graph))
    return verified(graph), stats


def require_model_file(path: Path) -> None:
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such model file; give the path of an .onnx file")


def load_model(path: Path) -> onnx.ModelProto:
    path = Path(path)
    require_model_file(path)
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError...
        raise QCompileError(f"{path.name} could not be read as ONNX ({first_line(exc)}); is it an .onnx file?") from exc


def refuse_quantized(model: onnx.ModelProto, path: Path) -> None:
    for node in model.graph.node:
        if is_quantized_op(node.op_type):
            raise QCompileError(
                f"{Path(path).name} is already quantized ({node.op_type} node {node.name!r}); "
                "qcompile takes the FP32 model"
            )


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
    try:
        graph.fold_constants(fold_shapes=True, error_ok=False)
    except Exception as exc:
        raise QCompileError(f"constant folding failed: {first_line(exc)}") from exc
    graph.cleanup(remove_unused_graph_inputs=False)
    return before - len(graph.nodes)


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
