"""Cross-field checks of a backend: what the schema's types alone cannot express.

Every quantizer spec a backend uses is checked against its ``constraints:``
for the role it is used in (weights or activations), and against the op
types it quantizes where the hardware allows per-channel quantizers only on
some (Ascend: Conv, not Gemm). A contradiction is a ``SchemaError`` that
names the field and the rule (exit 2), raised before any model is read.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from qcompiler.config.backend import (
    ESTIMATOR_PARAMETERS,
    MAX_BITS,
    MIN_BITS,
    WEIGHT_ESTIMATOR_PARAMETERS,
    ArithmeticConfig,
    BackendConfig,
    CalibrationConfig,
    EstimatorConfig,
    LayerMatch,
    LayerOverride,
    QuantizerSpec,
    RoleConstraints,
    WeightEstimatorConfig,
)
from qcompiler.config.schema import SchemaError
from qcompiler.errors import UsageError

ROLES = ("weights", "activations")  # the fields of BackendConfig, OpRule, LayerOverride and Constraints


def validate(config: BackendConfig) -> None:
    for spec_name, spec in config.quantizers.items():
        _validate_spec(spec, f"quantizers.{spec_name}")
    for use in spec_uses(config):
        if use.spec_name not in config.quantizers:
            raise SchemaError(f"{use.path}: unknown quantizer spec {use.spec_name!r}; "
                              f"defined specs: {', '.join(config.quantizers) or 'none'}")
    for index, layer in enumerate(config.layers):
        _validate_layer(layer, f"layers[{index}]")
    _validate_calibration(config.calibration)
    _validate_arithmetic(config.arithmetic)
    for use in spec_uses(config):
        problem = constraint_problem(config, use)
        if problem:
            raise SchemaError(problem)


@dataclass(frozen=True)
class SpecUse:
    """A place that uses a quantizer spec: for which role, on which op types (None: any weighted op)."""

    spec_name: str
    role: str                      # "weights" or "activations"
    path: str                      # the field that names the spec
    op_types: tuple[str, ...] | None
    bits: int | None = None        # a layer's bits override applied to the spec
    bits_path: str = ""


def spec_uses(config: BackendConfig) -> Iterator[SpecUse]:
    """Every use of a quantizer spec: the defaults, each op rule, each layer override."""
    weighted = tuple(op for op, rule in config.ops.items() if rule.role == "weighted")
    for role in ROLES:
        overridden = tuple(op for op in weighted if getattr(config.ops[op], role) is not None)
        defaulted = tuple(op for op in weighted if op not in overridden) if role == "weights" else None
        yield SpecUse(getattr(config, role), role, role, defaulted)
        for op, rule in config.ops.items():
            if getattr(rule, role) is not None:
                yield SpecUse(getattr(rule, role), role, f"ops.{op}.{role}", (op,))
    for index, layer in enumerate(config.layers):
        ops = (layer.match.op_type,) if layer.match.op_type is not None else None
        for role in ROLES:
            name = getattr(layer, role)
            if name is None and layer.bits is None:
                continue
            path = f"layers[{index}].{role}" if name is not None else f"layers[{index}].bits"
            default = getattr(config, role) if ops is None else _rule_spec(config, ops[0], role)
            yield SpecUse(name or default, role, path, ops, layer.bits, f"layers[{index}].bits")


def _rule_spec(config: BackendConfig, op: str, role: str) -> str:
    rule = config.ops.get(op)
    return getattr(rule, role, None) or getattr(config, role)


def constraint_problem(config: BackendConfig, use: SpecUse) -> str | None:
    """What breaks the backend's constraints in ``use``, as one sentence naming the field and the rule; or None."""
    spec = config.quantizers[use.spec_name]
    rules: RoleConstraints = getattr(config.constraints, use.role)
    rule_path = f"constraints.{use.role}"
    where = "" if use.path == use.role else f" (used by {use.path})"
    if use.bits is not None and rules.bits is not None and use.bits not in rules.bits:
        return f"{use.bits_path} is {use.bits}, but {rule_path}.bits allows only {_listed(rules.bits)}"
    for key in ("bits", "signedness", "symmetric", "granularity", "scale"):
        allowed = getattr(rules, key)
        value = getattr(spec, key)
        if allowed is None or (key == "bits" and use.bits is not None):
            continue
        if key == "signedness" and value == "adaptive" and {"signed", "unsigned"} <= set(allowed):
            continue
        if value not in allowed:
            return (f"quantizers.{use.spec_name}.{key} is {_text(value)}{where}, "
                    f"but {rule_path}.{key} allows only {_listed(allowed)}")
    if use.role == "activations" and spec.granularity == "per_channel":
        return (f"quantizers.{use.spec_name}.granularity is per_channel{where}; activations are quantized "
                "per tensor (per-channel activations are not supported yet)")
    if spec.granularity == "per_channel" and rules.per_channel_ops is not None:
        refused = sorted(set(use.op_types or ()) - set(rules.per_channel_ops))
        if refused:
            return (f"{use.path} names {use.spec_name}, which is per_channel, but {rule_path}.per_channel_ops "
                    f"allows per-channel {use.role} only on {_listed(rules.per_channel_ops)}, not {_listed(refused)}")
    return None


def per_channel_problem(config: BackendConfig, spec: QuantizerSpec, role: str, op: str) -> str | None:
    """Why ``spec`` may not quantize the ``role`` of an ``op`` node per channel; None if it may."""
    allowed = getattr(config.constraints, role).per_channel_ops
    if spec.granularity != "per_channel" or allowed is None or op in allowed:
        return None
    return (f"per-channel {role} on {op}, but constraints.{role}.per_channel_ops allows them only on "
            f"{_listed(allowed)}")


# each estimator parameter: the values it may take, as a test and the words of the refusal
PARAMETER_RANGES = {
    "percentile": (lambda v: 0.5 < v <= 1.0, "must be in (0.5, 1]; e.g. 0.9999"),
    "momentum": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1); e.g. 0.9"),
    "k": (lambda v: v > 0, "must be positive; e.g. 3"),
    "bins": (lambda v: 16 <= v <= 16384, "must be in 16..16384; e.g. 2048"),
}


def estimator_problem(config: EstimatorConfig | WeightEstimatorConfig) -> str | None:
    """A parameter the estimator does not read, or a value outside its range; None when all is well."""
    table = WEIGHT_ESTIMATOR_PARAMETERS if isinstance(config, WeightEstimatorConfig) else ESTIMATOR_PARAMETERS
    reads = table[config.estimator]
    for parameter in (f.name for f in dataclasses.fields(config) if f.name != "estimator"):
        value = getattr(config, parameter)
        if value is None:
            continue
        if parameter not in reads:
            readers = [name for name, params in table.items() if parameter in params]
            return f"{parameter} is read only by the {', '.join(readers)} estimator, not by {config.estimator}"
        accepts, rule = PARAMETER_RANGES[parameter]
        if not accepts(value):
            return f"{parameter} {value} {rule}"
    return None


def refuse_bad_estimator(config: EstimatorConfig | WeightEstimatorConfig, available: Iterable[str],
                         kind: str) -> None:
    """A usage error unless ``config`` names one of ``available`` with valid parameters (for configs built
    in code, which the loader never saw)."""
    available = list(available)
    if config.estimator not in available:
        raise UsageError(f"{kind} estimator {config.estimator!r} does not exist; available: {', '.join(available)}")
    problem = estimator_problem(config)
    if problem:
        raise UsageError(problem)


def _validate_spec(spec: QuantizerSpec, path: str) -> None:
    _require_bits(spec.bits, f"{path}.bits")
    if spec.narrow_range and spec.signedness == "unsigned":
        raise SchemaError(f"{path}.narrow_range: only a signed grid has a narrow range")
    if spec.reduce_range and spec.bits < MIN_BITS + 1:
        raise SchemaError(f"{path}.reduce_range: a {spec.bits}-bit grid has no bit to spare; give bits >= 3")
    if spec.channel_groups is not None:
        if spec.granularity != "per_channel":
            raise SchemaError(f"{path}.channel_groups: groups of channels need granularity: per_channel")
        if spec.channel_groups < 1:
            raise SchemaError(f"{path}.channel_groups is {spec.channel_groups}; give a positive number of groups")


def _validate_layer(layer: LayerOverride, path: str) -> None:
    if layer.match == LayerMatch():
        raise SchemaError(f"{path}.match: give at least one of name, op_type, position")
    if layer.match.name is not None:
        try:
            re.compile(layer.match.name)
        except re.error as exc:
            raise SchemaError(f"{path}.match.name: not a regular expression ({exc})") from None
    if layer.bits is not None:
        _require_bits(layer.bits, f"{path}.bits")
    if layer.estimator is not None:
        _require_estimator(layer.estimator, f"{path}.estimator")


def _validate_calibration(calibration: CalibrationConfig) -> None:
    _require_estimator(calibration.activations, "calibration.activations")
    _require_estimator(calibration.weights, "calibration.weights")
    if calibration.batch_size != "auto" and calibration.batch_size < 1:
        raise SchemaError(f"calibration.batch_size is {calibration.batch_size}; give a positive number or auto")
    if calibration.size is not None and calibration.size < 1:
        raise SchemaError(f"calibration.size is {calibration.size}; give a positive number of samples")


def _validate_arithmetic(arithmetic: ArithmeticConfig) -> None:
    if arithmetic.rounding == "double" and arithmetic.multiplier != "fixed_point":
        raise SchemaError(f"arithmetic.rounding double is gemmlowp's fixed-point rounding; with multiplier "
                          f"{arithmetic.multiplier} give half_even, half_away, half_up or floor "
                          "(or multiplier: fixed_point)")


def _require_estimator(config: EstimatorConfig | WeightEstimatorConfig, path: str) -> None:
    problem = estimator_problem(config)
    if problem:
        raise SchemaError(f"{path}: {problem}")


def _require_bits(bits: int, path: str) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise SchemaError(f"{path}: {bits} is outside {MIN_BITS}..{MAX_BITS} (Q/DQ holds at most 8 bits here)")


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _listed(values) -> str:
    return ", ".join(_text(v) for v in values)
