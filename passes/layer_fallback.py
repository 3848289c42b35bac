"""Return the layers that cost the most accuracy to float, fewest first, until an accuracy target holds.

Before: every layer the backend quantizes reads dequantized weights and activations
After:  the fewest layers found that meet ``target`` read float ones (quant/fallback.py says how)
Without a ``target`` (``--target``) the pass changes nothing. With one:
1. Evaluation data: ``--eval-data``, else ``held_out`` of the calibration
   samples, spread through them, which calibrate and bias_correct never see.
2. Sensitivity, one evaluation per layer (``sensitivity``):
   - ``float_one`` (default): the model with that layer alone in float. It
     measures what the search then does, reverting the layer, including how
     its error grows through the layers after it;
   - ``quantize_one``: the float model with that layer alone quantized:
     its own error without the others', which ranks a layer whose error
     only matters in company too low.
   Layers are ranked by the target's metric, ties broken by output SQNR
   (top-1 agreement on a few samples takes few values, so mostly by SQNR),
   on the ``ranking_samples`` evaluation samples the quantized model gets
   furthest from the float one: those a float layer can set right.
3. Search: in that order, each layer is returned to float and the model
   re-measured on all the evaluation samples; a step is kept if it raised
   the metric, or kept it and raised the SQNR (for top-1 agreement: if it
   raised the SQNR, see Score.key), and undone otherwise. It stops when the
   target holds, after ``max_layers`` layers in float, or when the ranking
   is exhausted, and says which (a warning when the target is not met).
Each evaluation builds the model with its float layers (quant/fallback.py)
and one onnxruntime session for it, Q/DQ as ``qcompile eval`` runs them
(the ranking's at onnxruntime's basic level, quicker to make); the graph
the pass leaves is measured once more, and that is the score reported.
The plan records why each float layer is float (``quant_plan.yaml`` in the
dump), report.json lists every step, ``--explain layer_fallback`` too.
Run after calibrate and bias_correct (a float layer gets its float bias
back) and before the lowering passes, which then lower what stays
quantized: the metric is the fake-quant model's, as report.json's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_graphsurgeon as gs

from qcompiler import runtime
from qcompiler.calibration.batching import batch_size
from qcompiler.config.schema import SchemaError
from qcompiler.data.sources import Feed
from qcompiler.errors import UsageError
from qcompiler.measure.report import rounded_db
from qcompiler.measure.targets import Metric, Target, measured, sqnr_db
from qcompiler.pipeline.pass_base import Pass, PassContext, PassResult
from qcompiler.pipeline.properties import CALIBRATED
from qcompiler.quant.fallback import Layer, fallback_layers, revert, reverted_copy


@dataclass(frozen=True)
class LayerFallbackOptions:
    target: str | None = None       # e.g. top1_agreement>=0.98 (measure/targets.py); none: change nothing
    max_layers: int = 10            # at most this many layers return to float
    sensitivity: Literal["float_one", "quantize_one"] = "float_one"
    held_out: float = 0.25          # the share of --calib samples held out to evaluate on, without --eval-data
    ranking_samples: int = 16       # the sensitivity of each layer is measured on the hardest this many of them

    def __post_init__(self) -> None:
        if self.target is not None:
            Target.parse(self.target)
        if self.ranking_samples < 1:
            raise SchemaError(f"layer_fallback ranking_samples {self.ranking_samples}: give at least 1")
        if self.max_layers < 1:
            raise SchemaError(f"layer_fallback max_layers {self.max_layers}: give at least 1")
        if not 0.0 < self.held_out < 1.0:
            raise SchemaError(f"layer_fallback held_out {self.held_out}: give a share between 0 and 1, e.g. 0.25")


@dataclass(frozen=True)
class Score:
    metric: float
    sqnr_db: float

    def key(self, target: Target) -> tuple[float, ...]:
        """Orders scores best last: by the target's metric, then SQNR; by SQNR alone for top-1 agreement.

        Top-1 agreement on a hundred photos moves by whole samples at near-ties,
        up and down as layers go float. On MobileNetV2 (academic, tensorrt, snpe;
        benchmarks/results/layer_fallback.md), keeping a step only when it raised
        the agreement (or kept it and raised the SQNR) reached the same agreement
        within the noise (90.7% mean against 89.6%) for 2 to 6 times the search
        time, walking the whole ranking for steps that pass.
        """
        if target.metric == "top1_agreement":
            return (self.sqnr_db,)
        return (self.metric if target.higher_is_better else -self.metric, self.sqnr_db)

    def plain(self) -> dict[str, float]:
        return {"metric": _plain(self.metric), "sqnr_db": rounded_db(self.sqnr_db)}


class LayerFallback(Pass):
    name = "layer_fallback"
    Options = LayerFallbackOptions
    requires = (CALIBRATED,)
    ensures = (CALIBRATED,)

    def held_out(self) -> float:
        return self.options.held_out if self.options.target is not None else 0.0

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        if self.options.target is None:
            return PassResult(changed=False)
        if ctx.eval_data is None:
            raise UsageError("layer_fallback needs evaluation data: pass --eval-data, or --calib to hold out "
                             "part of it")
        target = Target.parse(self.options.target)
        layers = fallback_layers(graph, ctx.plan, ctx.backend)
        search = _Search(graph, ctx, layers, target, self.options.ranking_samples)
        chosen, outcome = search.run(self.options)
        reasons = {layer: f"float for target {target}: step {step} of layer_fallback's search took "
                          f"{target.metric} from {before.metric:.4g} to {after.metric:.4g} and the SQNR from "
                          f"{before.sqnr_db:.2f} to {after.sqnr_db:.2f} dB"
                   for layer, (step, before, after) in chosen.items()}
        revert(graph, ctx.plan, reasons)
        for layer, reason in reasons.items():
            ctx.explain(layer.name, True, reason)
        final = search.measure_graph(graph)
        met = target.met(final.metric, search.float_score)
        ctx.plan.fallback = search.record(self.options, [layer.name for layer in chosen], final, met, outcome)
        if not met:
            ctx.warn(f"layer_fallback: target {target} not met: {target.metric} {final.metric:.4g} with "
                     f"{len(chosen)} layer(s) in float ({outcome})")
        return PassResult(changed=bool(chosen), stats={"layers": len(layers), "reverted": len(chosen),
                                                       "evaluations": search.evaluations})


@dataclass(frozen=True)
class _Samples:
    """Evaluation samples in batches, and the float model's outputs on them."""

    feeds: list[Feed]
    reference: dict[str, np.ndarray]

    @property
    def count(self) -> int:
        return len(next(iter(self.reference.values())))


class _Search:
    """The evaluation data, the float model's outputs, and scores of the graph with any set of layers in float."""

    def __init__(self, graph: gs.Graph, ctx: PassContext, layers: list[Layer], target: Target, ranking_samples: int):
        self.graph, self.plan, self.layers, self.target = graph, ctx.plan, layers, target
        self.progress = ctx.progress
        self.metric: Metric = target.function()
        self.batch = batch_size(ctx.backend.calibration.batch_size, ctx.eval_data)
        feeds = list(ctx.eval_data.batches(self.batch))
        if not feeds:
            raise UsageError("layer_fallback: the evaluation data holds no samples; give --eval-data or more "
                             "--calib samples")
        self.outputs = [tensor.name for tensor in graph.outputs]
        self.evaluations = 0
        self.all = _Samples(feeds, self._run(reverted_copy(graph, self.plan, layers), feeds))
        self.float_score = measured(self.metric, target, self.all.reference, self.all.reference)
        self.ranking_samples = ranking_samples
        self.ranking: _Samples | None = None
        self.steps: list[dict] = []
        self.baseline: Score | None = None

    def run(self, options: LayerFallbackOptions) -> tuple[dict[Layer, tuple[int, Score, Score]], str]:
        """The layers to return to float, each with its step and the score before and after it; and why the
        search stopped."""
        quantized = self._run(self.graph, self.all.feeds)
        current = self.baseline = self._scored(quantized, self.all)
        if self.target.met(current.metric, self.float_score):
            return {}, "the quantized model meets the target"
        self.ranking = self._hardest(quantized, self.ranking_samples)
        chosen: dict[Layer, tuple[int, Score, Score]] = {}
        in_float: set[int] = set()
        for step, index in enumerate(self._ranked(options.sensitivity), start=1):
            if len(chosen) == options.max_layers:
                return chosen, f"max_layers ({options.max_layers}) reached"
            layer = self.layers[index]
            trial = self.score(in_float | {index})
            kept = trial.key(self.target) > current.key(self.target)
            self.steps.append({"step": step, "layer": layer.name, "op": layer.op, **trial.plain(), "kept": kept})
            if kept:
                chosen[layer] = (step, current, trial)
                in_float.add(index)
                current = trial
                if self.target.met(current.metric, self.float_score):
                    return chosen, "the target holds"
        return chosen, "every layer was tried"

    def _ranked(self, sensitivity: str) -> list[int]:
        """Layer indices, the one whose return to float is expected to help most first."""
        everyone = set(range(len(self.layers)))
        indices = self.progress(range(len(self.layers)), len(self.layers), "layer_fallback: ranking")
        if sensitivity == "float_one":
            scores = [self.score({index}, ranking=True).key(self.target) for index in indices]
            return sorted(everyone, key=lambda index: scores[index], reverse=True)
        scores = [self.score(everyone - {index}, ranking=True).key(self.target) for index in indices]
        return sorted(everyone, key=lambda index: scores[index])

    def _hardest(self, quantized: dict[str, np.ndarray], count: int) -> _Samples:
        """The ``count`` samples the quantized model gets furthest from the float one (normalized squared error
        summed over the outputs), in their order: the ones a layer in float can set right. NNCF ranks on such
        a subset too (accuracy_control/subset_selection.py)."""
        error = np.zeros(self.all.count)
        for name, reference in self.all.reference.items():
            flat = reference.reshape(len(reference), -1).astype(np.float64)
            difference = quantized[name].reshape(len(reference), -1) - flat
            error += (difference ** 2).sum(axis=1) / np.maximum((flat ** 2).sum(axis=1), np.finfo(np.float64).tiny)
        chosen = np.sort(np.argsort(-error, kind="stable")[:count])
        inputs = {name: np.concatenate([feed[name] for feed in self.all.feeds])[chosen] for name in self.all.feeds[0]}
        feeds = [{name: values[begin: begin + self.batch] for name, values in inputs.items()}
                 for begin in range(0, len(chosen), self.batch)]
        return _Samples(feeds, {name: values[chosen] for name, values in self.all.reference.items()})

    def score(self, float_layers: set[int], ranking: bool = False) -> Score:
        """The score of the graph with the layers of these indices in float: on all the evaluation data as
        ``qcompile eval`` runs it, or to rank, on the ranking samples in a session quicker to make."""
        copy = reverted_copy(self.graph, self.plan, [self.layers[index] for index in sorted(float_layers)])
        samples = self.ranking if ranking else self.all
        return self._scored(self._run(copy, samples.feeds, optimize="basic" if ranking else True), samples)

    def measure_graph(self, graph: gs.Graph) -> Score:
        """The score of ``graph`` as it is (the one the compile writes), on all the evaluation data."""
        return self._scored(self._run(graph, self.all.feeds), self.all)

    def record(self, options: LayerFallbackOptions, reverted: list[str], final: Score, met: bool,
               outcome: str) -> dict:
        return {"target": str(self.target), "sensitivity": options.sensitivity, "max_layers": options.max_layers,
                "eval_samples": self.all.count, "ranking_samples": self.ranking.count if self.ranking else 0,
                "layers": len(self.layers), "float_metric": _plain(self.float_score),
                "quantized": self.baseline.plain(), "steps": self.steps, "reverted": reverted,
                "final": final.plain(), "met": met, "stopped": outcome, "evaluations": self.evaluations}

    def _scored(self, outputs: dict[str, np.ndarray], samples: _Samples) -> Score:
        return Score(measured(self.metric, self.target, samples.reference, outputs),
                     sqnr_db(samples.reference, outputs))

    def _run(self, graph: gs.Graph, feeds: list[Feed], optimize: bool | str = True) -> dict[str, np.ndarray]:
        session = runtime.graph_session(graph, optimize=optimize, fuse_qdq=False)
        self.evaluations += 1
        parts = [session.run(self.outputs, feed) for feed in feeds]
        return {name: np.concatenate([part[i] for part in parts]) for i, name in enumerate(self.outputs)}


def _plain(metric: float) -> float | str:
    """A metric for JSON: six decimals, or "inf" / "-inf" (the SQNR of the float model against itself)."""
    return round(metric, 6) if math.isfinite(metric) else rounded_db(metric)
