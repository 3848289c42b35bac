"""Models out of graphs without copying weights: files byte-identical to the exporter's, sessions that compute the same."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from qcompiler.passes.fold_bn import FoldBN

from qcompiler import runtime
from qcompiler.graph import ir, serialize
from qcompiler.graph.importer import import_model
from qcompiler.graph.serialize import LARGE_BYTES, session_model, write_model
from qcompiler.pipeline.pass_base import PassContext
from qcompiler.testing.models import TEST_MODELS, resnet_bottleneck


def folded(model_file, model: onnx.ModelProto):
    """``model`` imported and BN-folded: constants both as loaded from the file and made by a pass."""
    graph, _ = import_model(model_file(model))
    FoldBN().run(graph, PassContext())
    return graph.cleanup().toposort()


@pytest.mark.parametrize("large_bytes", [LARGE_BYTES, 64], ids=["default", "most-streamed"])
@pytest.mark.parametrize("name", sorted(TEST_MODELS))
def test_a_written_model_file_holds_the_bytes_the_exporter_makes(name, large_bytes, model_file, monkeypatch):
    monkeypatch.setattr(serialize, "LARGE_BYTES", large_bytes)
    graph = folded(model_file, TEST_MODELS[name]())
    written = io.BytesIO()
    write_model(graph, written)
    assert written.getvalue() == ir.to_model(graph).SerializeToString()
    onnx.checker.check_model(written.getvalue())


def test_a_graph_session_computes_what_a_session_of_the_exported_model_computes(model_file):
    model = resnet_bottleneck()
    graph = folded(model_file, model)
    inner = [node.outputs[0].name for node in graph.nodes if node.op == "Conv"]
    names = [graph.outputs[0].name, *inner, inner[0]]  # its own output and a repeat are not added again
    proto, external = session_model(graph, names)
    assert external and all(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
                            if t.name in {c.name for c in external})
    assert [o.name for o in proto.graph.output] == [graph.outputs[0].name, *inner]

    feed = {"x": np.random.default_rng(0).standard_normal([2, 64, 8, 8]).astype(np.float32)}
    from_graph = runtime.graph_session(graph, names).run(inner, feed)
    from_model = runtime.session(runtime.with_outputs(ir.to_model(graph), names)).run(inner, feed)
    for a, b in zip(from_graph, from_model):
        np.testing.assert_array_equal(a, b)
