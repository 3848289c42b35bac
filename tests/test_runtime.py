"""Sessions over serialized models: intermediate outputs added to the bytes give what a copied model gives."""
from __future__ import annotations

import numpy as np
import onnx

from qcompiler import runtime
from qcompiler.testing.models import resnet_bottleneck


def test_outputs_added_to_the_bytes_make_the_model_with_those_outputs():
    model = resnet_bottleneck()
    inner = [node.output[0] for node in model.graph.node if node.op_type == "Conv"]
    names = [model.graph.output[0].name, *inner, inner[0]]  # its own output and a repeat are not added again
    serialized = runtime.Serialized(model, model.SerializeToString())

    extended = serialized.with_outputs(names)
    assert onnx.ModelProto.FromString(extended) == runtime.with_outputs(model, names)
    assert [o.name for o in onnx.ModelProto.FromString(extended).graph.output] == [model.graph.output[0].name, *inner]

    feed = {"x": np.random.default_rng(0).standard_normal([2, 64, 8, 8]).astype(np.float32)}
    from_bytes = runtime.session(extended).run(inner, feed)
    from_copy = runtime.session(runtime.with_outputs(model, names)).run(inner, feed)
    for a, b in zip(from_bytes, from_copy):
        np.testing.assert_array_equal(a, b)
