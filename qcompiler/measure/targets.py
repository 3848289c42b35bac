"""Accuracy targets: a metric of the quantized model's outputs against the float model's, and a bound on it.

``--target`` takes one of:
- ``top1_agreement>=0.98``: the share of samples whose arg-max (first
  classifier output, [N, C]) is the float model's;
- ``sqnr_db>=30``: the output SQNR in dB (the lowest over the outputs);
- ``package.module:function>=0.7`` (or ``<=`` for a metric where lower is
  better): ``function(float_outputs, quant_outputs) -> float``, each a dict
  of output name to the array of all evaluation samples, in sample order;
- ``drop(METRIC)<=0.01``: the metric may fall at most this far below what
  the float model scores against itself (1.0 for top-1 agreement).
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Callable, Literal, Mapping

import numpy as np

from qcompiler.errors import UsageError, first_line
from qcompiler.measure.report import sqnr_db as output_sqnr_db

Outputs = Mapping[str, np.ndarray]
Metric = Callable[[Outputs, Outputs], float]

_FORM = re.compile(r"^\s*(?:drop\((?P<dropped>[^()]+)\)|(?P<metric>[^<>=\s]+))\s*(?P<bound>>=|<=)\s*"
                   r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
# a bound holds within this much: 1 - 49/50 is 0.020000000000000018 in binary floating point
TOLERANCE = 1e-9
EXAMPLES = "top1_agreement>=0.98, sqnr_db>=30, drop(top1_agreement)<=0.01 or module:function>=0.7"


def top1_agreement(float_outputs: Outputs, quant_outputs: Outputs) -> float:
    name = classifier_output(float_outputs)
    return float(np.mean(float_outputs[name].argmax(axis=1) == quant_outputs[name].argmax(axis=1)))


def sqnr_db(float_outputs: Outputs, quant_outputs: Outputs) -> float:
    """The lowest output SQNR (in float64, which cannot overflow on large logits)."""
    return min(output_sqnr_db(reference, quant_outputs[name]) for name, reference in float_outputs.items())


def classifier_output(outputs: Outputs) -> str:
    name = next((name for name, values in outputs.items() if values.ndim == 2 and values.shape[1] >= 2), None)
    if name is None:
        shapes = ", ".join(f"{name} {list(values.shape)}" for name, values in outputs.items())
        raise UsageError(f"top1_agreement needs a classifier output [N, C]; this model's are {shapes}: "
                         "give --target sqnr_db>=N or a module:function metric")
    return name


BUILTIN: dict[str, Metric] = {"top1_agreement": top1_agreement, "sqnr_db": sqnr_db}


@dataclass(frozen=True)
class Target:
    metric: str
    bound: Literal[">=", "<="]
    value: float
    drop: bool = False   # ``value`` bounds how far the metric falls below the float model's own score

    @classmethod
    def parse(cls, text: str) -> "Target":
        match = _FORM.match(text)
        if match is None:
            raise UsageError(f"target {text!r}: expected METRIC>=VALUE, METRIC<=VALUE or drop(METRIC)<=VALUE, "
                             f"e.g. {EXAMPLES}")
        metric = (match["dropped"] or match["metric"]).strip()
        target = cls(metric, match["bound"], float(match["value"]), drop=match["dropped"] is not None)
        if target.drop and target.bound != "<=":
            raise UsageError(f"target {text!r}: a drop is bounded from above, drop({metric})<=VALUE")
        if target.drop and metric == "sqnr_db":
            raise UsageError(f"target {text!r}: the float model's SQNR against itself is infinite; "
                             "give sqnr_db>=VALUE")
        if metric not in BUILTIN and ":" not in metric:
            raise UsageError(f"target {text!r}: unknown metric {metric!r}; give top1_agreement, sqnr_db or "
                             "module:function")
        return target

    def __str__(self) -> str:
        metric = f"drop({self.metric})" if self.drop else self.metric
        return f"{metric}{self.bound}{self.value:g}"

    @property
    def higher_is_better(self) -> bool:
        return self.drop or self.bound == ">="

    def function(self) -> Metric:
        """The metric's function: a built-in one, or the user's module:function imported."""
        if self.metric in BUILTIN:
            return BUILTIN[self.metric]
        module_name, _, function_name = self.metric.partition(":")
        try:
            return getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"target {self}: cannot import {function_name} from {module_name} ({exc})") from exc

    def met(self, score: float, float_score: float) -> bool:
        """Whether a model scoring ``score`` meets the target, the float model scoring ``float_score``."""
        if self.drop:   # as score >= float_score - value, with room for the rounding of 1 - 49/50
            return score >= float_score - self.value - TOLERANCE
        return score >= self.value - TOLERANCE if self.bound == ">=" else score <= self.value + TOLERANCE


def measured(metric: Metric, target: Target, float_outputs: Outputs, quant_outputs: Outputs) -> float:
    """``metric`` on the outputs; a user's metric that raises or gives no finite number is a usage error."""
    try:
        value = float(metric(float_outputs, quant_outputs))
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"target {target}: {target.metric} raised {type(exc).__name__}: {first_line(exc)}") from exc
    if math.isnan(value):
        raise UsageError(f"target {target}: {target.metric} gave NaN; it must return a number")
    return value
