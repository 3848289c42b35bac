"""What a pass is: a name, typed options, contracts, and ``run(graph, ctx)``.

A pass rewrites the graph in place and returns a ``PassResult``. It holds no
state between runs, never prints, and tells why it did or did not touch a
node through ``ctx.explain``. Its contracts are code: each ``Property`` in
``requires`` must hold before it runs, each in ``ensures`` after.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import onnx_graphsurgeon as gs

from qcompiler.errors import UsageError
from qcompiler.quant.plan import QuantPlan

log = logging.getLogger("qcompiler")


@dataclass(frozen=True)
class Property:
    """A fact about a graph (and its plan) that a pass can require or ensure.

    ``violation(graph, ctx)`` returns None when the fact holds, else a
    sentence saying where it does not. ``established_by`` names the pass to
    run first.
    """

    name: str
    established_by: str
    violation: Callable[[gs.Graph, "PassContext"], str | None]


# A request (``Pass.requests``): calibration also takes the per-channel mean of each weighted op's float input.
INPUT_MEANS = "input_means"


@dataclass
class PassResult:
    changed: bool
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Explanation:
    pass_name: str
    node: str
    applied: bool
    reason: str

    def __str__(self) -> str:
        verdict = "applied" if self.applied else "skipped"
        return f"{self.pass_name}: {self.node}: {verdict}: {self.reason}"


@dataclass
class PassContext:
    """What passes share besides the graph: the backend, the quantization
    plan, the calibration data, the decisions log and the warnings."""

    backend: Any = None
    plan: QuantPlan = field(default_factory=QuantPlan)
    calibration_data: Any = None
    # what passes evaluate accuracy on (layer_fallback): --eval-data, or calibration samples held out for it
    eval_data: Any = None
    # wraps a long loop for progress display: progress(iterable, total, description)
    progress: Callable[[Iterable, int | None, str], Iterable] = lambda items, total, description: items
    explanations: list[Explanation] = field(default_factory=list)
    current_pass: str = ""
    # something that does not stop the compile but makes its result doubtful (degenerate data, ...)
    warnings: list[str] = field(default_factory=list)
    strict: bool = False   # --strict: a warning is an error
    # what passes of this pipeline ask earlier ones to collect (``Pass.requests``), e.g. INPUT_MEANS
    requests: set[str] = field(default_factory=set)
    # per-channel means over the calibration data of weighted ops' float inputs, by tensor (INPUT_MEANS)
    input_means: dict[str, Any] = field(default_factory=dict)
    # the graph as the first lowering pass found it: the fake-quant model (model.qdq.onnx); None until then
    fake_quant: gs.Graph | None = None

    def explain(self, node: str, applied: bool, reason: str) -> None:
        self.explanations.append(Explanation(self.current_pass, node, applied, reason))

    def warn(self, message: str) -> None:
        """One line on stderr and in report.json; with ``strict`` a usage error instead (exit 2)."""
        if self.strict:
            raise UsageError(f"{message} (a warning; --strict makes it an error)")
        self.warnings.append(message)
        log.warning("%s", message)

    def explanations_of(self, pass_name: str) -> list[Explanation]:
        return [e for e in self.explanations if e.pass_name == pass_name]


@dataclass(frozen=True)
class NoOptions:
    """For passes that take no options."""


class Pass:
    """Base of every pass. Subclasses set ``name`` (its module's name) and ``run``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    requires: ClassVar[tuple[Property, ...]] = ()
    ensures: ClassVar[tuple[Property, ...]] = ()
    # a lowering pass turns Q/DQ regions into integer arithmetic: the manager keeps the graph the first one
    # reads as the fake-quant model (``PassContext.fake_quant``)
    lowers: ClassVar[bool] = False

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def summary(cls) -> str:
        """The first line of the pass module's docstring, which is its contract."""
        doc = (sys.modules[cls.__module__].__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def requests(self) -> frozenset[str]:
        """What this pass, with its options, needs an earlier pass to collect for it (none by default)."""
        return frozenset()

    def held_out(self) -> float:
        """The share of the calibration samples this pass, with its options, evaluates on when no evaluation
        data is given: the pass manager holds them out of the others' reach (none by default)."""
        return 0.0

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        raise NotImplementedError
