"""The checks the manager runs after import and after every pass.

``verified(graph)`` cleans and sorts the graph, checks our own invariants,
runs the ONNX checker and shape inference, and writes the inferred shapes
back into the graph. Checker and inference run on a skeleton: the graph
exported with its large weights as typed graph inputs
(``serialize.skeleton_model``), so a 500 MB model is verified without
serializing its weights after every pass. The full model, weights
included, is checked once when it is written (``check_model``).
"""
from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs

from qcompiler.errors import QCompileError, first_line
from qcompiler.graph.serialize import skeleton_model

log = logging.getLogger(__name__)
MIN_OPSET = 13


def verified(graph: gs.Graph) -> gs.Graph:
    """Verify ``graph`` and refresh its shapes in place; returns it for chaining."""
    graph.cleanup(remove_unused_graph_inputs=False)
    try:
        graph.toposort()
    except Exception as exc:
        raise QCompileError(f"the graph has a cycle ({first_line(exc)})") from exc
    problems = invariant_violations(graph)
    if problems:
        raise QCompileError("; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
    skeleton = skeleton_model(graph)
    check_model(skeleton, "the graph is not valid ONNX")
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception as exc:  # inference is advisory once the checker passed
        log.warning("shape inference failed: %s", first_line(exc))
        return graph
    _annotate_shapes(graph, inferred)
    return graph


def _annotate_shapes(graph: gs.Graph, inferred: onnx.ModelProto) -> None:
    infos = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for name, tensor in graph.tensors().items():
        info = infos.get(name)
        if isinstance(tensor, gs.Variable) and info is not None and info.type.HasField("tensor_type"):
            tensor_type = info.type.tensor_type
            if tensor_type.elem_type:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            if tensor_type.HasField("shape"):
                tensor.shape = [_dim(d) for d in tensor_type.shape.dim]


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None


def check_model(model: onnx.ModelProto | bytes | str, what: str,
                error: type[QCompileError] = QCompileError) -> None:
    """The ONNX checker on ``model``: a message, its bytes, or the path of a file written already; a model
    that fails raises ``error`` (UsageError for the model a user gave)."""
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise error(f"{what}: {first_line(exc)}") from exc


def invariant_violations(graph: gs.Graph) -> list[str]:
    """Our invariants beyond the ONNX checker: names, definitions, opset."""
    problems = []
    if graph.opset < MIN_OPSET:
        problems.append(f"opset {graph.opset} is below {MIN_OPSET}")
    seen_nodes: set[str] = set()
    for node in graph.nodes:
        if not node.name:
            problems.append(f"a {node.op} node has no name")
        elif node.name in seen_nodes:
            problems.append(f"node name {node.name!r} is used twice")
        seen_nodes.add(node.name)
    try:
        graph.tensors(check_duplicates=True)
    except Exception as exc:
        problems.append(f"tensor names are not unique ({first_line(exc)})")
    defined = {t.name for t in graph.inputs} | {o.name for n in graph.nodes for o in n.outputs}
    for node in graph.nodes:
        for tensor in node.inputs:
            if tensor.name and not isinstance(tensor, gs.Constant) and tensor.name not in defined:
                problems.append(f"node {node.name!r} reads {tensor.name!r}, which nothing defines")
    for tensor in graph.outputs:
        if not isinstance(tensor, gs.Constant) and tensor.name not in defined:
            problems.append(f"graph output {tensor.name!r} is not produced")
    return problems
