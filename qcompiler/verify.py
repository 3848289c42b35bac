"""The checks the manager runs after import and after every pass.

``verified(graph)`` cleans and sorts the graph, checks our own invariants and
the ONNX checker, re-infers shapes, and returns a fresh graph that carries
them. Any failure raises with a sentence naming what is wrong.
"""
from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs

from qcompiler import ir
from qcompiler.errors import QCompileError, first_line

log = logging.getLogger(__name__)
MIN_OPSET = 13


def verified(graph: gs.Graph) -> gs.Graph:
    graph.cleanup(remove_unused_graph_inputs=False)
    try:
        graph.toposort()
    except Exception as exc:
        raise QCompileError(f"the graph has a cycle ({first_line(exc)})") from exc
    problems = invariant_violations(graph)
    if problems:
        raise QCompileError("; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
    model = ir.to_model(graph)
    check_model(model, "the graph is not valid ONNX")
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # inference is advisory once the checker passed
        log.warning("shape inference failed: %s", first_line(exc))
    return ir.to_graph(model)


def check_model(model: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise QCompileError(f"{what}: {first_line(exc)}") from exc


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
