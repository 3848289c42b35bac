"""Backend configuration: the YAML schema, the strict loader, and overrides.

A backend is data. Its file names the quantizer specs, the graph scheme, a
role for each op type, per-layer overrides, calibration defaults, the pass
pipeline (with options) and the emitters. ``extends:`` starts from another
file (shipped name or path) and deep-merges this one over it: mappings merge
key by key, lists and scalars replace. ``--set a.b.c=value`` edits the merged
data before validation, so an override is checked like a file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from qcompiler import schema
from qcompiler.errors import UsageError
from qcompiler.schema import SchemaError

Signedness = Literal["signed", "unsigned", "adaptive"]
Granularity = Literal["per_tensor", "per_channel"]
ScaleForm = Literal["float", "power_of_two"]
# What a backend does with an op type (BACKENDS.md section 2):
#   weighted      quantize its activation input and its weight
#   eltwise       Add/Mul-like; which inputs get quantizers depends on the scheme
#   same_scale    inputs and output share one scale (Concat)
#   pass_through  commutes with quantization; never gets a new quantizer
#   wrapped       runs in integers only as DQ -> op -> Q (pooling)
#   float         stays in float
OpRole = Literal["weighted", "eltwise", "same_scale", "pass_through", "wrapped", "float"]
Estimator = Literal[
    "minmax", "ema_minmax", "mean_max", "percentile", "mse", "kl", "norm", "meanstd", "histogram_l2",
]
LayerPosition = Literal["first_weighted", "last_weighted"]


@dataclass(frozen=True)
class QuantizerSpec:
    bits: int = 8
    signedness: Signedness = "signed"
    symmetric: bool = True
    narrow_range: bool = False
    reduce_range: bool = False
    granularity: Granularity = "per_tensor"
    scale: ScaleForm = "float"
    # ceil never clips; round is closer on average but may clip the extremes
    power_of_two_rounding: Literal["ceil", "round"] = "ceil"


@dataclass(frozen=True)
class OpRule:
    role: OpRole
    weights: str | None = None
    activations: str | None = None

    @classmethod
    def from_scalar(cls, value: Any, path: str) -> dict:
        return {"role": value}


@dataclass(frozen=True)
class LayerMatch:
    name: str | None = None
    op_type: str | None = None
    position: LayerPosition | None = None


@dataclass(frozen=True)
class LayerOverride:
    match: LayerMatch
    skip: bool = False
    bits: int | None = None
    weights: str | None = None
    activations: str | None = None


@dataclass(frozen=True)
class EstimatorConfig:
    estimator: Estimator = "minmax"
    percentile: float | None = None
    momentum: float | None = None
    num_std: float | None = None
    bins: int | None = None


@dataclass(frozen=True)
class CalibrationConfig:
    activations: EstimatorConfig = field(default_factory=EstimatorConfig)
    weights: EstimatorConfig = field(default_factory=EstimatorConfig)
    batch_size: int | Literal["auto"] = "auto"   # "auto": sized from the input (passes/calibrate.py)
    size: int | None = None


@dataclass(frozen=True)
class PipelineEntry:
    """A pass (or, as EmitEntry, an emitter) by name, with options; a bare name is the short form."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    KIND: ClassVar[str] = "a pass"

    @classmethod
    def from_scalar(cls, value: Any, path: str) -> dict:
        if isinstance(value, str):
            return {"name": value}
        raise SchemaError(f"{path}: expected {cls.KIND} name or {{name: ..., options: ...}}, got {value!r}")


@dataclass(frozen=True)
class EmitEntry(PipelineEntry):
    KIND: ClassVar[str] = "an emitter"


@dataclass(frozen=True)
class BackendConfig:
    name: str
    description: str = ""
    target: str = ""
    scheme: Literal[1, 2, 3] = 1
    quantizers: dict[str, QuantizerSpec] = field(default_factory=dict)
    weights: str = "weight"
    activations: str = "activation"
    ops: dict[str, OpRule] = field(default_factory=dict)
    layers: list[LayerOverride] = field(default_factory=list)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    pipeline: list[PipelineEntry] = field(default_factory=list)
    emit: list[EmitEntry] = field(default_factory=list)


def shipped_backends() -> list[str]:
    """Names of the backend files that ship with qcompiler."""
    folder = resources.files("qcompiler.backends")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_backend(name_or_path: str, overrides: list[str] = ()) -> BackendConfig:
    """Resolve ``extends``, apply ``--set`` overrides, validate, and build."""
    data = _load_resolved(name_or_path, chain=())
    for assignment in overrides:
        _apply_override(data, assignment)
    label = _label(name_or_path)
    try:
        config = schema.build(BackendConfig, data)
        validate(config)
    except SchemaError as exc:
        raise SchemaError(f"backend {label}: {exc}") from None
    return config


def resolved_yaml(config: BackendConfig) -> str:
    """The final configuration as YAML, unset (null) fields left out."""
    return yaml.safe_dump(_without_nulls(schema.to_plain(config)), sort_keys=False, width=100)


def _without_nulls(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_nulls(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_without_nulls(v) for v in data]
    return data


def validate(config: BackendConfig) -> None:
    """Cross-field checks the types alone cannot express."""
    from qcompiler.emitters import emitter_options, emitter_registry
    from qcompiler.passes import registry

    for spec_name, spec in config.quantizers.items():
        _validate_spec(spec, f"quantizers.{spec_name}")
    _require_spec(config, config.weights, "weights")
    _require_spec(config, config.activations, "activations")
    for op_type, rule in config.ops.items():
        _require_spec(config, rule.weights, f"ops.{op_type}.weights")
        _require_spec(config, rule.activations, f"ops.{op_type}.activations")
    for index, layer in enumerate(config.layers):
        _validate_layer(config, layer, f"layers[{index}]")
    known_passes = registry()
    for index, entry in enumerate(config.pipeline):
        if entry.name not in known_passes:
            raise SchemaError(
                f"pipeline[{index}]: unknown pass {entry.name!r}; known passes: {', '.join(known_passes)}"
            )
        schema.build(known_passes[entry.name].Options, entry.options, f"pipeline[{index}].options")
    known_emitters = emitter_registry()
    for index, entry in enumerate(config.emit):
        if entry.name not in known_emitters:
            raise SchemaError(
                f"emit[{index}]: unknown emitter {entry.name!r}; known emitters: {', '.join(known_emitters)}"
            )
        emitter_options(entry.name, entry.options, {}, f"emit[{index}].options")


def _validate_spec(spec: QuantizerSpec, path: str) -> None:
    if not 2 <= spec.bits <= 16:
        raise SchemaError(f"{path}.bits: {spec.bits} is outside 2..16")
    if spec.narrow_range and spec.signedness == "unsigned":
        raise SchemaError(f"{path}.narrow_range: only a signed grid has a narrow range")


def _validate_layer(config: BackendConfig, layer: LayerOverride, path: str) -> None:
    if layer.match == LayerMatch():
        raise SchemaError(f"{path}.match: give at least one of name, op_type, position")
    if layer.match.name is not None:
        try:
            re.compile(layer.match.name)
        except re.error as exc:
            raise SchemaError(f"{path}.match.name: not a regular expression ({exc})") from None
    if layer.bits is not None and not 2 <= layer.bits <= 16:
        raise SchemaError(f"{path}.bits: {layer.bits} is outside 2..16")
    _require_spec(config, layer.weights, f"{path}.weights")
    _require_spec(config, layer.activations, f"{path}.activations")


def _require_spec(config: BackendConfig, spec_name: str | None, path: str) -> None:
    if spec_name is not None and spec_name not in config.quantizers:
        raise SchemaError(
            f"{path}: unknown quantizer spec {spec_name!r}; defined specs: {', '.join(config.quantizers) or 'none'}"
        )


def _load_resolved(name_or_path: str, chain: tuple[str, ...]) -> dict:
    path = _locate(name_or_path)
    key = str(path)
    if key in chain:
        raise UsageError(f"backend {_label(name_or_path)}: extends itself through {' -> '.join(chain)}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise SchemaError(f"backend {_label(name_or_path)}: extends: expected a backend name or path")
    # a relative path is relative to the file that names it; a bare name is shipped
    parent_ref = str(path.parent / parent) if _is_path(parent) else parent
    return deep_merge(_load_resolved(parent_ref, chain + (key,)), data)


def _locate(name_or_path: str) -> Path:
    if _is_path(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"backend file {name_or_path} does not exist; give a shipped name or a YAML path")
        return path
    if name_or_path not in shipped_backends():
        raise UsageError(
            f"unknown backend {name_or_path!r}; shipped backends: {', '.join(shipped_backends())} "
            "(or give the path of a YAML file)"
        )
    return Path(str(resources.files("qcompiler.backends") / f"{name_or_path}.yaml"))


def _is_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def _label(name_or_path: str) -> str:
    return Path(name_or_path).name if _is_path(name_or_path) else name_or_path


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"backend file {path.name} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"backend file {path.name} must be a mapping of keys to values")
    return data


def deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b[2].c=value`` (value parsed as YAML) to the raw config data."""
    key_path, sep, raw_value = assignment.partition("=")
    if not sep or not key_path:
        raise UsageError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. --set quantizers.weight.bits=4")
    value = yaml.safe_load(raw_value) if raw_value else ""
    keys = [k for k in re.split(r"\.|\[(\d+)\]", key_path) if k]
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise UsageError(f"--set {key_path}: {where} is not an index of the list")
            key = int(key)
        elif not isinstance(node, dict):
            raise UsageError(f"--set {key_path}: {'.'.join(keys[:depth])} is not a mapping or list")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]
