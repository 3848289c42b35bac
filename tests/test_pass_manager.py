"""The pass manager: order, contracts, verification, failures that name the pass, instruments."""
from __future__ import annotations

import dataclasses

import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

from qcompiler.config.backend import PipelineEntry
from qcompiler.errors import QCompileError, UsageError
from qcompiler.graph import ir
from qcompiler.graph.importer import import_model
from qcompiler.graph.serialize import LARGE_BYTES, skeleton_model
from qcompiler.pipeline.manager import PassManager, StageRecord, bind_pipeline, pipeline_text
from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult, Property
from qcompiler.testing.models import ModelBuilder, resnet_bottleneck

HAS_RELU = Property("a Relu", "add_relu", lambda g, ctx: None if any(n.op == "Relu" for n in g.nodes) else "no Relu node")


class Noop(Pass):
    name = "noop"

    def run(self, graph, ctx):
        ctx.explain("everything", False, "nothing to do")
        return PassResult(changed=False)


@dataclasses.dataclass(frozen=True)
class AddReluOptions:
    count: int = 1


class AddRelu(Pass):
    """Appends Relu nodes after the graph output."""

    name = "add_relu"
    Options = AddReluOptions
    ensures = (HAS_RELU,)

    def run(self, graph, ctx):
        for index in range(self.options.count):
            out = graph.outputs[0]
            new = gs.Variable(f"{out.name}/relu{index}", dtype=out.dtype, shape=out.shape)
            graph.nodes.append(gs.Node("Relu", f"extra_relu{index}", inputs=[out], outputs=[new]))
            graph.outputs = [new]
        return PassResult(changed=True, stats={"added": self.options.count})


class NeedsRelu(Pass):
    name = "needs_relu"
    requires = (HAS_RELU,)

    def run(self, graph, ctx):
        return PassResult(changed=False)


class BreaksGraph(Pass):
    """Points a node at a tensor nothing defines."""

    name = "breaks_graph"

    def run(self, graph, ctx):
        graph.nodes[0].inputs[0] = gs.Variable("ghost", dtype=graph.inputs[0].dtype)
        return PassResult(changed=True)


class Raises(Pass):
    name = "raises"

    def run(self, graph, ctx):
        raise ValueError("boom")


class ClaimsReluButRemovesNone(Pass):
    name = "liar"
    ensures = (HAS_RELU,)

    def run(self, graph, ctx):
        return PassResult(changed=False)


REGISTRY = {cls.name: cls for cls in (Noop, AddRelu, NeedsRelu, BreaksGraph, Raises, ClaimsReluButRemovesNone)}


class Recorder:
    def __init__(self):
        self.stages: list[str] = []
        self.finished = None

    def after_stage(self, record, graph, ctx):
        self.stages.append(record.label)

    def finish(self, records, ctx):
        self.finished = [r.status for r in records]


@pytest.fixture
def graph(model_file):
    """A Relu-free graph: x -> Neg -> Sigmoid."""
    b = ModelBuilder("no_relu", 0)
    x = b.input("x", ["N", 4])
    graph, _ = import_model(model_file(b.build([(b.node("Sigmoid", "sigmoid", [b.node("Neg", "neg", [x])]), ["N", 4])])))
    return graph


def run(graph, names, **kwargs):
    entries = [PipelineEntry(n) if isinstance(n, str) else n for n in names]
    recorder = Recorder()
    manager = PassManager(bind_pipeline(entries, REGISTRY), [recorder], **kwargs)
    ctx = PassContext()
    result = manager.run(graph, ctx, StageRecord(0, "import", status="ran"))
    return result, manager, recorder, ctx


def test_runs_in_yaml_order_with_options_and_stats(graph):
    entries = ["noop", PipelineEntry("add_relu", {"count": 2}), "needs_relu"]
    result, manager, recorder, ctx = run(graph, entries)
    assert recorder.stages == ["000_import", "001_noop", "002_add_relu", "003_needs_relu"]
    assert [n.op for n in result.nodes][-2:] == ["Relu", "Relu"]
    assert manager.records[1].stats == {"added": 2} and manager.records[1].options == {"count": 2}
    assert [str(e) for e in ctx.explanations] == ["noop: everything: skipped: nothing to do"]


def test_requires_failure_says_what_to_run_first(graph):
    with pytest.raises(QCompileError, match="needs_relu needs a Relu; run add_relu first \\(no Relu node\\)"):
        run(graph, ["noop", "needs_relu"])


def test_ensures_failure_names_the_pass(graph):
    with pytest.raises(QCompileError, match="pass liar did not ensure a Relu \\(after import, noop\\)"):
        run(graph, ["noop", "liar"])


def test_broken_graph_is_caught_after_the_pass(graph):
    with pytest.raises(QCompileError, match="pass breaks_graph failed \\(after import, noop\\): .*'ghost'"):
        run(graph, ["noop", "breaks_graph"])


def test_exception_in_a_pass_names_it_and_history(graph):
    recorder = Recorder()
    with pytest.raises(QCompileError, match="pass raises failed \\(after import, add_relu\\): ValueError: boom"):
        PassManager(bind_pipeline([PipelineEntry("add_relu"), PipelineEntry("raises")], REGISTRY), [recorder]).run(
            graph, PassContext(), StageRecord(0, "import", status="ran"))
    assert recorder.finished == ["ran", "ran", "not reached"]


def test_stop_after_and_disable(graph):
    _, manager, recorder, _ = run(graph, ["noop", "add_relu", "needs_relu"], stop_after="add_relu", disabled=["noop"])
    assert [r.status for r in manager.records] == ["disabled", "ran", "not reached"]
    assert recorder.stages == ["000_import", "002_add_relu"]
    text = pipeline_text("test", [StageRecord(0, "import", status="ran"), *manager.records])
    assert "001 noop: disabled" in text and "002 add_relu: ran, changed options {'count': 1} stats added=1" in text


def test_flags_naming_passes_outside_the_pipeline_are_usage_errors(graph):
    with pytest.raises(UsageError, match="--stop-after fold_bn: not in this backend's pipeline \\(noop\\)"):
        run(graph, ["noop"], stop_after="fold_bn")
    with pytest.raises(UsageError, match="--disable x"):
        run(graph, ["noop"], disabled=["x"])
    with pytest.raises(UsageError, match="unknown pass 'nope'"):
        run(graph, ["nope"])
    with pytest.raises(UsageError, match="pipeline\\[0\\].options.cnt: unknown key"):
        run(graph, [PipelineEntry("add_relu", {"cnt": 1})])


def test_the_skeleton_verified_after_each_pass_is_the_model_with_its_weights_as_inputs():
    model = resnet_bottleneck()
    graph = ir.to_graph(model)
    skeleton = skeleton_model(graph)
    large = {t.name for t in model.graph.initializer if numpy_helper.to_array(t).nbytes >= LARGE_BYTES}
    assert large and {i.name for i in skeleton.graph.input} == {"x"} | large
    assert {t.name for t in skeleton.graph.initializer} == {t.name for t in model.graph.initializer} - large
    assert [(n.name, list(n.input)) for n in skeleton.graph.node] == [(n.name, list(n.input)) for n in model.graph.node]
    onnx.checker.check_model(skeleton)
    inferred = onnx.shape_inference.infer_shapes(skeleton)
    full = {v.name: v.type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert {v.name: v.type for v in inferred.graph.value_info} == full
