"""The integer units of model.int8.onnx that onnxruntime fuses, for tests that run them one by one."""
from __future__ import annotations

import onnx


def conv_units(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(integer input, integer output) of every DQ -> Conv -> Q [-> integer Clip] unit.

    The input is the tensor before a channel Pad (the RGB stem padded to 4
    channels), so that a unit is fed what the Q/DQ model computes.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    units = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        source = producer[conv.input[0]].input[0]
        if source in producer and producer[source].op_type == "Pad":
            source = producer[source].input[0]
        (quant,) = readers[conv.output[0]]
        result = quant.output[0]
        after = readers.get(result, [])
        if len(after) == 1 and after[0].op_type == "Clip":
            result = after[0].output[0]
        units.append((source, result))
    return units
