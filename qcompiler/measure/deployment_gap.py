"""The deployment gap: how far the integer model (model.int.onnx) lands from the fake-quant model (model.qdq.onnx).

Per layer, each integer tensor of both models (a QuantizeLinear's output in
the fake-quant model, computed by a lowered region or still by a Q after a
float op in the integer model) is compared in LSBs, layer by layer: the
integer model runs with every such tensor's readers fed the fake-quant
model's integers, so a layer's gap is its own arithmetic's, not the sum of
the gaps upstream. End to end, the integer model runs on its own and its
outputs meet the fake-quant model's and the float model's: SQNR, and top-1
agreement for classifier outputs. Both quantized models run as the ONNX spec
defines their ops (onnxruntime without its Q/DQ fusions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler import runtime
from qcompiler.measure.evaluate import OutputAgreement
from qcompiler.measure.report import rounded_db


@dataclass
class LayerGap:
    tensor: str       # the integer tensor, named as in the fake-quant model
    node: str         # what computes it in the integer model
    values: int = 0
    exact: int = 0
    max_lsb: int = 0

    def add(self, reference: np.ndarray, actual: np.ndarray) -> None:
        difference = np.abs(reference.astype(np.int64) - actual.astype(np.int64))
        self.values += difference.size
        self.exact += int(np.count_nonzero(difference == 0))
        self.max_lsb = max(self.max_lsb, int(difference.max(initial=0)))

    @property
    def exact_share(self) -> float:
        return self.exact / self.values if self.values else 1.0


def integer_tensors(fake_quant: gs.Graph, integer: gs.Graph) -> dict[str, str]:
    """Integer tensor -> the node computing it in ``integer``: each activation QuantizeLinear output of
    ``fake_quant`` that ``integer`` computes too (by a lowered region, or by a Q after a float op)."""
    quantized = [node.outputs[0].name for node in fake_quant.nodes
                 if node.op == "QuantizeLinear" and not isinstance(node.inputs[0], gs.Constant)]
    producers = {tensor.name: node for node in integer.nodes for tensor in node.outputs}
    return {name: producers[name].name for name in quantized if name in producers}


def layer_gaps(fake_quant: gs.Graph, integer: gs.Graph, samples: list[dict[str, np.ndarray]]) -> list[LayerGap]:
    """Each lowered layer's gap in LSBs, every layer fed the fake-quant model's integers."""
    gaps = {name: LayerGap(name, node) for name, node in integer_tensors(fake_quant, integer).items()}
    for expected, actual in layer_values(fake_quant, integer, samples):
        for name, gap in gaps.items():
            gap.add(expected[name], actual[name])
    return list(gaps.values())


def layer_values(fake_quant: gs.Graph, integer: gs.Graph, samples: list[dict[str, np.ndarray]],
                 also: Sequence[str] = ()) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Per sample, every integer tensor (and the tensors ``also``) as the fake-quant model computes it, and
    every integer tensor as the integer model computes it from the fake-quant model's integers."""
    names = list(integer_tensors(fake_quant, integer))
    fetch = names + [name for name in also if name not in names]
    reference = runtime.graph_session(fake_quant, fetch, fuse_qdq=False, memory_pattern=False)
    computed = [f"{name}/integer" for name in names]
    fed = runtime.graph_session(_fed_from_outside(integer, names), computed, fuse_qdq=False,
                                memory_pattern=False) if names else None
    inputs = [t.name for t in integer.inputs]
    for sample in samples:
        expected = dict(zip(fetch, reference.run(fetch, sample)))
        feed = {**{name: sample[name] for name in inputs}, **{name: expected[name] for name in names}}
        yield expected, dict(zip(names, fed.run(computed, feed))) if fed is not None else {}


def _fed_from_outside(integer: gs.Graph, names: list[str]) -> gs.Graph:
    """A copy of ``integer`` whose tensors ``names`` are graph inputs, their producers writing ``NAME/integer``."""
    graph = integer.copy()
    tensors = graph.tensors()
    for name in names:
        tensor = tensors[name]
        producer = tensor.inputs[0]
        computed = gs.Variable(f"{name}/integer", dtype=tensor.dtype, shape=tensor.shape)
        producer.outputs[producer.outputs.index(tensor)] = computed
        graph.inputs.append(tensor)
        graph.outputs.append(computed)
    return graph


def deployment_gap(float_graph: gs.Graph, fake_quant: gs.Graph, integer: gs.Graph, feed: dict[str, np.ndarray],
                   arithmetic: dict[str, Any]) -> dict[str, Any]:
    """report.json's ``deployment_gap``: per layer and end to end, on the samples of ``feed`` one at a time.

    Four sessions: the fake-quant model (its integer tensors and outputs in
    one run), the integer model fed from it, the integer model on its own and
    the float model.
    """
    count = len(next(iter(feed.values())))
    samples = [{name: values[i:i + 1] for name, values in feed.items()} for i in range(count)]
    outputs = [t.name for t in float_graph.outputs]
    gaps = {name: LayerGap(name, node) for name, node in integer_tensors(fake_quant, integer).items()}
    against_fake, against_float, fake_against_float = ([OutputAgreement(n) for n in outputs] for _ in range(3))
    ends = [runtime.graph_session(g, outputs, fuse_qdq=False, memory_pattern=False) for g in (float_graph, integer)]
    for sample, (expected, actual) in zip(samples, layer_values(fake_quant, integer, samples, outputs)):
        for name, gap in gaps.items():
            gap.add(expected[name], actual[name])
        floats, integers = (session.run(outputs, sample) for session in ends)
        for index, name in enumerate(outputs):
            against_fake[index].update(expected[name], integers[index])
            against_float[index].update(floats[index], integers[index])
            fake_against_float[index].update(floats[index], expected[name])
    layers = list(gaps.values())
    values = sum(g.values for g in layers)
    return {
        "arithmetic": arithmetic,
        "differs_from_qdq": differences(arithmetic),
        "samples": count,
        "layers": len(layers),
        "max_lsb": max((g.max_lsb for g in layers), default=0),
        "exact_share": round(sum(g.exact for g in layers) / values, 6) if values else 1.0,
        "per_layer": [{"tensor": g.tensor, "node": g.node, "max_lsb": g.max_lsb,
                       "exact_share": round(g.exact_share, 6)} for g in layers],
        "outputs": [_output_entry(*agreements) for agreements in zip(against_fake, against_float, fake_against_float)],
    }


def _output_entry(fake: OutputAgreement, flt: OutputAgreement, fake_flt: OutputAgreement) -> dict[str, Any]:
    """The integer model against the fake-quant model and float; the fake-quant model against float beside them."""
    entry: dict[str, Any] = {"name": fake.name, "sqnr_db_vs_fake_quant": rounded_db(fake.sqnr_db),
                             "sqnr_db_vs_float": rounded_db(flt.sqnr_db),
                             "fake_quant_sqnr_db_vs_float": rounded_db(fake_flt.sqnr_db)}
    if fake.classifier:
        entry["top1_vs_fake_quant"] = round(fake.top1 / fake.samples, 4)
        entry["top1_vs_float"] = round(flt.top1 / flt.samples, 4)
        entry["fake_quant_top1_vs_float"] = round(fake_flt.top1 / fake_flt.samples, 4)
    return entry


TIES = {"half_away": "away from zero", "half_up": "toward +inf", "floor": "down",
        "double": "toward +inf, then away from zero (gemmlowp)"}


def differences(arithmetic: dict[str, Any]) -> list[str]:
    """How a backend's arithmetic differs by design from the fake-quant model's (ONNX Q/DQ in float32)."""
    found = []
    if arithmetic["multiplier"] == "fixed_point":
        found.append("requantizes with an int32 fixed-point multiplier M0 * 2^(shift - 31), where Q/DQ divides "
                     "in float32")
    elif arithmetic["multiplier"] == "shift":
        found.append("requantizes by shifts of the accumulator (power-of-two scales), where Q/DQ divides in float32")
    if arithmetic["rounding"] != "half_even":
        found.append(f"rounds ties {TIES[arithmetic['rounding']]}, where QuantizeLinear rounds them to even")
    if arithmetic["bias"] == "int32":
        found.append("rounds each bias to int32 at s_x * s_w, where Q/DQ adds the float bias")
    else:
        found.append("adds the float bias to the accumulator as b / (s_x * s_w) before the multiplier")
    if arithmetic["weights"] == "unsigned_offset":
        found.append("quantizes weights as round((w - min) / s) on the unsigned grid, where QuantizeLinear "
                     "computes round(w / s) + z")
    if arithmetic["pooling"] != "half_even":
        found.append(f"rounds average-pooling ties {TIES[arithmetic['pooling']]}")
    return found


def summary(gap: dict[str, Any]) -> str:
    """One line for the command line."""
    text = (f"integer model: {gap['layers']} layers within {gap['max_lsb']} LSB of the fake-quant model, "
            f"{100 * gap['exact_share']:.2f}% of values exact")
    for output in gap["outputs"]:
        if "top1_vs_fake_quant" in output:
            text += f"; {output['name']} top-1 {100 * output['top1_vs_fake_quant']:.0f}% as fake-quant"
    return text

