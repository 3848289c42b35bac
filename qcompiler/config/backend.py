"""The schema of a backend file: typed, frozen dataclasses whose fields are the allowed keys.

A backend is data. Its file names the quantizer specs, where quantizers go
(the graph scheme), what its hardware accepts (``constraints:``), a role for
each op type, per-layer overrides, calibration defaults, the pass pipeline
(with options) and the emitters. The loader (``config.loader``) builds a
``BackendConfig`` from YAML strictly, and ``config.validate`` checks what the
types alone cannot express, all before any model is read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from qcompiler.config.schema import SchemaError

Signedness = Literal["signed", "unsigned", "adaptive"]
Granularity = Literal["per_tensor", "per_channel"]
ScaleForm = Literal["float", "power_of_two"]
# What a backend does with an op type (BACKENDS.md section 2):
#   weighted      quantize its activation input and its weight
#   eltwise       Add/Mul-like; which inputs get quantizers is placement.eltwise_inputs
#   same_scale    inputs and output share one scale (Concat)
#   pass_through  commutes with quantization; never gets a new quantizer
#   wrapped       runs in integers only as DQ -> op -> Q (pooling)
#   float         stays in float
OpRole = Literal["weighted", "eltwise", "same_scale", "pass_through", "wrapped", "float"]
LayerPosition = Literal["first_weighted", "last_weighted"]
# Which inputs of an eltwise op (Add) are quantized: every float input; every one
# except an input that comes straight from a weighted op and fuses into it
# (TensorRT's residual Add); none.
EltwiseInputs = Literal["all", "unfused", "none"]

# The bit widths a quantizer may have: ONNX Q/DQ holds them in 8-bit containers.
MIN_BITS, MAX_BITS = 2, 8

# The activation estimators, with the parameters each reads (calibration/estimators.py;
# BACKENDS.md section 3). The histogram ones share one streamed histogram per tensor.
ESTIMATOR_PARAMETERS: dict[str, tuple[str, ...]] = {
    "minmax": (),
    "ema_minmax": ("momentum",),
    "mean_max": (),
    "meanstd": ("k",),
    "norm": (),
    "percentile": ("percentile", "bins"),
    "mse": ("bins",),
    "kl": ("bins",),
    "histogram_l2": ("bins",),
}
ActivationEstimator = Literal[tuple(ESTIMATOR_PARAMETERS)]
# Weights: their values are at hand, so each estimator reads all of them (calibration/weights.py).
WEIGHT_ESTIMATOR_PARAMETERS: dict[str, tuple[str, ...]] = {
    "minmax": (),
    "mse": (),
    "norm": (),
    "meanstd": ("k",),
}
WeightEstimator = Literal[tuple(WEIGHT_ESTIMATOR_PARAMETERS)]


@dataclass(frozen=True)
class QuantizerSpec:
    bits: int = 8
    signedness: Signedness = "signed"
    symmetric: bool = True
    narrow_range: bool = False
    reduce_range: bool = False
    granularity: Granularity = "per_tensor"
    # per_channel only: consecutive output channels in this many groups share a scale
    # (the MXNet tool's per-group weights; 1 is per-tensor, the channel count per-channel)
    channel_groups: int | None = None
    scale: ScaleForm = "float"
    # ceil never clips; round is closer on average but may clip the extremes
    power_of_two_rounding: Literal["ceil", "round"] = "ceil"


@dataclass(frozen=True)
class Placement:
    """Where quantizers go (BACKENDS.md section 2). ``scheme: 1|2|3`` presets the first two fields."""

    eltwise_inputs: EltwiseInputs = "none"
    # whether weighted and eltwise units write a quantized output (the whole graph in integers)
    unit_outputs: bool = False
    # ops that fuse into the weighted or eltwise op they follow: never a quantizer between them
    fused_activations: list[str] = field(default_factory=lambda: ["Relu", "Clip"])


# The graph schemes of the MQBench paper as presets of the placement fields.
SCHEMES: dict[int, dict[str, Any]] = {
    1: {"eltwise_inputs": "none", "unit_outputs": False},     # academic: only weighted ops' inputs
    2: {"eltwise_inputs": "unfused", "unit_outputs": False},  # TensorRT: the residual Add fuses into its Conv
    3: {"eltwise_inputs": "all", "unit_outputs": True},       # FBGEMM/TVM/SNPE: the whole graph in integers
}


@dataclass(frozen=True)
class RoleConstraints:
    """What the hardware accepts for one role (weights or activations); an unset field accepts anything."""

    bits: list[int] | None = None
    signedness: list[Literal["signed", "unsigned"]] | None = None
    symmetric: list[bool] | None = None
    granularity: list[Granularity] | None = None
    scale: list[ScaleForm] | None = None
    # the op types whose quantizers of this role may be per-channel (unset: any)
    per_channel_ops: list[str] | None = None


@dataclass(frozen=True)
class Constraints:
    weights: RoleConstraints = field(default_factory=RoleConstraints)
    activations: RoleConstraints = field(default_factory=RoleConstraints)


@dataclass(frozen=True)
class OpRule:
    role: OpRole
    weights: str | None = None
    activations: str | None = None

    @classmethod
    def from_scalar(cls, value: Any, path: str) -> dict:
        return {"role": value}


@dataclass(frozen=True)
class EstimatorConfig:
    """An activation estimator and its parameters (each estimator reads only its own; unset: its default)."""

    estimator: ActivationEstimator = "minmax"
    percentile: float | None = None   # percentile: the fraction of values kept inside the range, 0.9999
    momentum: float | None = None     # ema_minmax: weight of the running range against each batch's, 0.9
    k: float | None = None            # meanstd: the range is mean +- k * std, 3
    bins: int | None = None           # histogram estimators: bins on each side of zero, 2048


@dataclass(frozen=True)
class WeightEstimatorConfig:
    estimator: WeightEstimator = "minmax"
    k: float | None = None            # meanstd: mean +- k * std, 3


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
    # the estimator of the activations this layer quantizes (its inputs, and its output where it writes one)
    estimator: EstimatorConfig | None = None


@dataclass(frozen=True)
class CalibrationConfig:
    activations: EstimatorConfig = field(default_factory=EstimatorConfig)
    weights: WeightEstimatorConfig = field(default_factory=WeightEstimatorConfig)
    batch_size: int | Literal["auto"] = "auto"   # "auto": sized from the input (calibration/batching.py)
    size: int | None = None


@dataclass(frozen=True)
class ArithmeticConfig:
    """How the backend's integer kernels compute (BACKENDS.md section 5): what the lowering passes reproduce.

    The defaults are onnxruntime's (MLAS, onnxruntime/core/mlas/lib/quantize.cpp):
    an int32 accumulator with an int32 bias, times a float32 multiplier, rounded
    half to even.
    """

    # float32: y = round(acc * float32(s_x * s_w / s_y)); fixed_point: M0 * 2^(shift - 31), M0 an int32 (TFLite);
    # shift: every multiplier a power of two, y = acc / 2^n rounded in integers (relay.quantize)
    multiplier: Literal["float32", "fixed_point", "shift"] = "float32"
    # half_even, half_away (from zero), half_up (toward +inf: TFLite's single rounding, TVM's UPWARD), floor,
    # or double: gemmlowp's SaturatingRoundingDoublingHighMul + RoundingDivideByPOT (fixed_point only)
    rounding: Literal["half_even", "half_away", "half_up", "floor", "double"] = "half_even"
    # int32: round(b / (s_x * s_w)) joins the accumulator, saturated; float: added in float before rounding
    bias: Literal["int32", "float"] = "int32"
    # onnx: round(w / s) + z; unsigned_offset: round((w - min) / s) in float32 on the unsigned grid, as
    # Qualcomm's converter and AIMET quantize weights (BACKENDS.md section 6)
    weights: Literal["onnx", "unsigned_offset"] = "onnx"
    # how an average pool's sum becomes its output integer (with the multiplier form above)
    pooling: Literal["half_even", "half_away", "half_up", "floor"] = "half_even"


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
    placement: Placement = field(default_factory=Placement)
    quantizers: dict[str, QuantizerSpec] = field(default_factory=dict)
    weights: str = "weight"
    activations: str = "activation"
    constraints: Constraints = field(default_factory=Constraints)
    ops: dict[str, OpRule] = field(default_factory=dict)
    layers: list[LayerOverride] = field(default_factory=list)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    pipeline: list[PipelineEntry] = field(default_factory=list)
    emit: list[EmitEntry] = field(default_factory=list)

    @property
    def scheme_label(self) -> str:
        """``scheme N`` when the placement is that preset, else ``custom placement``: for explanations."""
        preset = SCHEMES[self.scheme]
        same = all(getattr(self.placement, key) == value for key, value in preset.items())
        return f"scheme {self.scheme}" if same else "custom placement"
