"""Backend files: the shipped ones load, the loader is strict, extends and --set work, constraints hold."""
from __future__ import annotations

import pytest
import yaml

from qcompiler.config.backend import SCHEMES, Placement
from qcompiler.config.loader import load_backend, resolved_yaml, shipped_backends
from qcompiler.driver import bind_backend
from qcompiler.errors import UsageError

SHIPPED = ["academic", "acl", "fbgemm", "snpe", "tensorrt", "tvm"]


def write_yaml(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_all_six_backends_ship():
    assert shipped_backends() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_backend_resolves_and_round_trips(name, tmp_path):
    config = load_backend(name)
    assert config.name == name
    again = load_backend(write_yaml(tmp_path, f"{name}_copy.yaml", resolved_yaml(config)))
    assert again == config


def test_table1_settings():
    """BACKENDS.md section 1, field by field."""
    trt, snpe, fbgemm, tvm, acl, academic = (load_backend(n) for n in
                                             ("tensorrt", "snpe", "fbgemm", "tvm", "acl", "academic"))
    assert (trt.scheme, snpe.scheme, fbgemm.scheme, tvm.scheme, acl.scheme, academic.scheme) == (2, 3, 3, 3, 1, 1)
    w, a = trt.quantizers["weight"], trt.quantizers["activation"]
    assert (w.granularity, w.symmetric, w.narrow_range, a.symmetric, a.granularity) == \
        ("per_channel", True, True, True, "per_tensor")
    assert all(s.signedness == "unsigned" and not s.symmetric for s in snpe.quantizers.values())
    assert fbgemm.quantizers["activation"].reduce_range and fbgemm.quantizers["activation"].signedness == "unsigned"
    assert fbgemm.quantizers["weight"].granularity == "per_channel"
    assert all(s.scale == "power_of_two" and s.symmetric for s in tvm.quantizers.values())
    assert acl.quantizers["activation"].symmetric is False
    assert acl.ops["Gemm"].weights == "weight_per_tensor"
    assert academic.quantizers["activation"].signedness == "adaptive"
    assert [e.name for e in academic.pipeline] == ["insert_quantizers", "calibrate", "share_scales", "bias_correct",
                                                   "layer_fallback"]
    assert [e.name for e in trt.pipeline] == ["fold_bn", "insert_quantizers", "calibrate", "share_scales",
                                              "bias_correct", "layer_fallback", "integer_weights", "integer_ops",
                                              "fuse_requant"]
    assert [layer.match.position for layer in academic.layers] == ["first_weighted", "last_weighted"]


@pytest.mark.parametrize("mutation, message", [
    ({"quantizers": {"weight": {"bitz": 8}}}, "quantizers.weight.bitz: unknown key; known keys: bits"),
    ({"ops": {"Conv": "weigthed"}}, "ops.Conv.role: 'weigthed' is not one of"),
    ({"scheme": 4}, "scheme: 4 is not one of 1, 2, 3"),
    ({"quantizers": {"weight": {"bits": "eight"}}}, "quantizers.weight.bits: expected int, got str 'eight'"),
    ({"quantizers": {"weight": {"bits": 1}}}, "quantizers.weight.bits: 1 is outside 2..8"),
    ({"quantizers": {"weight": {"bits": 16}}}, "quantizers.weight.bits: 16 is outside 2..8"),
    ({"ops": {"Gemm": {"role": "weighted", "weights": "w4"}}}, "ops.Gemm.weights: unknown quantizer spec 'w4'"),
    ({"layers": [{"match": {"name": "("}}]}, "layers[0].match.name: not a regular expression"),
    ({"calibration": {"activations": {"estimator": "entropyy"}}}, "calibration.activations.estimator: 'entropyy'"),
    ({"calibration": {"activations": {"estimator": "entropy"}}},
     "calibration.activations.estimator: 'entropy' is not one of 'minmax', 'ema_minmax', 'mean_max', 'meanstd', "
     "'norm', 'percentile', 'mse', 'kl', 'histogram_l2'"),
    ({"calibration": {"weights": {"estimator": "kl"}}},
     "calibration.weights.estimator: 'kl' is not one of 'minmax', 'mse', 'norm', 'meanstd'"),
    ({"calibration": {"weights": {"estimator": "minmax", "k": 2}}},
     "calibration.weights: k is read only by the meanstd estimator, not by minmax"),
    ({"calibration": {"activations": {"estimator": "kl", "bins": 8}}},
     "calibration.activations: bins 8 must be in 16..16384"),
    ({"calibration": {"activations": {"estimator": "ema_minmax", "momentum": 1}}},
     "calibration.activations: momentum 1.0 must be in [0, 1)"),
    ({"quantizers": {"weight": {"channel_groups": 4, "granularity": "per_tensor"}}},
     "quantizers.weight.channel_groups: groups of channels need granularity: per_channel"),
    ({"calibration": {"activations": {"estimator": "minmax", "percentile": 0.99}}},
     "calibration.activations: percentile is read only by the percentile estimator, not by minmax"),
    ({"calibration": {"activations": {"estimator": "percentile", "percentile": 0.2}}},
     "calibration.activations: percentile 0.2 must be in (0.5, 1]"),
    ({"calibration": {"activations": {"momentum": 0.9}}},
     "calibration.activations: momentum is read only by the ema_minmax estimator, not by percentile"),
    ({"calibration": {"activations": {"gamma": 0.9}}}, "calibration.activations.gamma: unknown key"),
    ({"calibration": {"batch_size": -1}}, "calibration.batch_size is -1; give a positive number or auto"),
    ({"calibration": {"size": 0}}, "calibration.size is 0; give a positive number of samples"),
    ({"layers": [{"match": {"name": "conv"}, "estimator": {"estimator": "percentile", "percentile": 2}}]},
     "layers[0].estimator: percentile 2.0 must be in (0.5, 1]"),
    ({"placement": {"eltwise_inputs": "some"}}, "placement.eltwise_inputs: 'some' is not one of 'all', 'unfused'"),
])
def test_strict_loader_names_the_path(tmp_path, mutation, message):
    path = write_yaml(tmp_path, "user.yaml", {"extends": "tensorrt", **mutation})
    with pytest.raises(UsageError) as info:
        load_backend(path)
    assert message in str(info.value)
    assert str(info.value).startswith("backend user.yaml: ")
    assert info.value.exit_code == 2


@pytest.mark.parametrize("mutation, message", [
    ({"pipeline": ["fold_bn", "fold_bm"]}, "pipeline[1]: unknown pass 'fold_bm'; known passes: align_channels, bias_correct, calibrate, fold_bn"),
    ({"pipeline": [{"name": "fold_bn", "options": {"standalon": "keep"}}]}, "pipeline[0].options.standalon: unknown key"),
    ({"emit": ["tensorrt_cache"]}, "emit[0]: unknown emitter 'tensorrt_cache'"),
    ({"emit": [{"name": "tensorrt", "options": {"trt_versoin": "8.6"}}]}, "emit[0].options.trt_versoin: unknown key"),
])
def test_binding_names_the_path_of_unknown_passes_emitters_and_options(tmp_path, mutation, message):
    path = write_yaml(tmp_path, "user.yaml", {"extends": "tensorrt", **mutation})
    config = load_backend(path)  # names of passes and emitters are the driver's to bind, not the loader's
    with pytest.raises(UsageError) as info:
        bind_backend(config, "user.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("backend user.yaml: ")
    assert info.value.exit_code == 2


@pytest.mark.parametrize("backend, override, message", [
    ("tensorrt", "quantizers.activation.symmetric=false",
     "quantizers.activation.symmetric is false, but constraints.activations.symmetric allows only true"),
    ("tvm", "quantizers.activation.scale=float",
     "quantizers.activation.scale is float, but constraints.activations.scale allows only power_of_two"),
    ("fbgemm", "quantizers.activation.signedness=signed",
     "quantizers.activation.signedness is signed, but constraints.activations.signedness allows only unsigned"),
    ("tensorrt", "quantizers.activation.signedness=adaptive",
     "quantizers.activation.signedness is adaptive, but constraints.activations.signedness allows only signed"),
    ("acl", "ops.Gemm.weights=weight",
     "ops.Gemm.weights names weight, which is per_channel, but constraints.weights.per_channel_ops allows "
     "per-channel weights only on Conv, ConvTranspose, not Gemm"),
    ("acl", "layers=[{match: {op_type: MatMul}, weights: weight}]",
     "layers[0].weights names weight, which is per_channel"),
    ("tensorrt", "layers=[{match: {name: conv1}, activations: mine}]", "layers[0].activations: unknown quantizer spec"),
    ("snpe", "quantizers.activation.granularity=per_channel",
     "quantizers.activation.granularity is per_channel, but constraints.activations.granularity allows only per_tensor"),
    ("academic", "quantizers.activation.granularity=per_channel",
     "quantizers.activation.granularity is per_channel; activations are quantized per tensor"),
])
def test_a_spec_that_breaks_the_constraints_is_refused_at_load(backend, override, message):
    with pytest.raises(UsageError) as info:
        load_backend(backend, [override])
    assert message in str(info.value) and info.value.exit_code == 2


def test_layer_bits_are_checked_against_the_constraints(tmp_path):
    path = write_yaml(tmp_path, "w8only.yaml", {"extends": "tensorrt", "constraints": {"weights": {"bits": [8]}},
                                                "layers": [{"match": {"position": "last_weighted"}, "bits": 4}]})
    with pytest.raises(UsageError, match=r"layers\[0\].bits is 4, but constraints.weights.bits allows only 8"):
        load_backend(path)


def test_every_shipped_backend_keeps_its_own_constraints():
    for name in SHIPPED:
        load_backend(name)  # validate() raises on any contradiction
    acl = load_backend("acl")
    assert acl.constraints.weights.per_channel_ops == ["Conv", "ConvTranspose"]
    assert load_backend("academic").constraints == type(acl.constraints)()  # a simulation: anything goes


def test_scheme_presets_the_placement_and_explicit_fields_win(tmp_path):
    for name in SHIPPED:
        config = load_backend(name)
        assert {key: getattr(config.placement, key) for key in SCHEMES[config.scheme]} == SCHEMES[config.scheme]
        assert config.scheme_label == f"scheme {config.scheme}"
    assert load_backend("tvm", ["scheme=2"]).placement.eltwise_inputs == "unfused"
    custom = load_backend("tvm", ["placement.unit_outputs=false"])
    assert (custom.placement.eltwise_inputs, custom.placement.unit_outputs) == ("all", False)
    assert custom.scheme_label == "custom placement"
    assert load_backend("tensorrt").placement.fused_activations[:2] == ["Relu", "Clip"]
    assert load_backend("snpe").placement.fused_activations == Placement().fused_activations


def test_the_shared_ops_table_is_written_once():
    whole_graph = [load_backend(name) for name in ("fbgemm", "snpe", "tensorrt", "tvm")]
    assert all(config.ops == whole_graph[0].ops for config in whole_graph)
    assert whole_graph[0].ops["Add"].role == "eltwise" and len(whole_graph[0].ops) == 18
    with pytest.raises(UsageError, match="unknown backend '_base'"):
        load_backend("_base")  # a partial to extend, not a backend


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    path = write_yaml(tmp_path, "w4.yaml", {
        "extends": "tensorrt", "name": "trt_w4",
        "quantizers": {"weight": {"bits": 4}},
        "pipeline": [],
    })
    config = load_backend(path)
    assert config.name == "trt_w4" and config.quantizers["weight"].bits == 4
    assert config.quantizers["weight"].granularity == "per_channel"  # merged, not replaced
    assert config.quantizers["activation"].bits == 8
    assert config.pipeline == []


def test_extends_a_relative_file_and_refuses_cycles(tmp_path):
    write_yaml(tmp_path, "base.yaml", {"extends": "snpe", "description": "base"})
    child = write_yaml(tmp_path, "child.yaml", {"extends": "base.yaml", "name": "child"})
    assert load_backend(child).description == "base"
    write_yaml(tmp_path, "a.yaml", {"extends": "b.yaml"})
    loop = write_yaml(tmp_path, "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(UsageError, match="extends itself"):
        load_backend(loop)


def test_set_overrides_are_validated_like_files():
    config = load_backend("tvm", ["quantizers.weight.bits=4", "calibration.batch_size=8", "scheme=2"])
    assert (config.quantizers["weight"].bits, config.calibration.batch_size, config.scheme) == (4, 8, 2)
    config = load_backend("tensorrt", ["pipeline[0]={name: fold_bn, options: {standalone: keep}}"])
    assert config.pipeline[0].options == {"standalone": "keep"}
    # a pass listed by name alone is reached like one written in full (README's example)
    assert load_backend("tensorrt", ["pipeline[0].options.standalone=keep"]).pipeline[0] == config.pipeline[0]
    with pytest.raises(UsageError, match="quantizers.weight.bitz: unknown key"):
        load_backend("tvm", ["quantizers.weight.bitz=4"])
    with pytest.raises(UsageError, match="expected KEY.PATH=VALUE"):
        load_backend("tvm", ["bits"])
    with pytest.raises(UsageError, match="is not an index"):
        load_backend("tvm", ["pipeline[12]=fold_bn"])
    assert load_backend("tvm").calibration.batch_size == "auto"
    with pytest.raises(UsageError, match="calibration.batch_size: 'big' is not int or 'auto'"):
        load_backend("tvm", ["calibration.batch_size=big"])


def test_unknown_backend_and_bad_yaml(tmp_path):
    with pytest.raises(UsageError, match="unknown backend 'tensorrtt'; shipped backends: academic"):
        load_backend("tensorrtt")
    with pytest.raises(UsageError, match="does not exist"):
        load_backend(str(tmp_path / "nope.yaml"))
    with pytest.raises(UsageError, match="not valid YAML"):
        load_backend(write_yaml(tmp_path, "bad.yaml", "name: [unclosed"))
    with pytest.raises(UsageError, match="must be a mapping"):
        load_backend(write_yaml(tmp_path, "list.yaml", "- a\n- b\n"))
