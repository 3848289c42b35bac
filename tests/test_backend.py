"""Backend files: the shipped ones load, the loader is strict, extends and --set work."""
from __future__ import annotations

import pytest
import yaml

from qcompiler.backend import load_backend, resolved_yaml, shipped_backends
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
    assert [e.name for e in academic.pipeline] == ["insert_quantizers", "calibrate", "share_scales"]
    assert [e.name for e in trt.pipeline] == ["fold_bn", "insert_quantizers", "calibrate", "share_scales"]
    assert [layer.match.position for layer in academic.layers] == ["first_weighted", "last_weighted"]


@pytest.mark.parametrize("mutation, message", [
    ({"quantizers": {"weight": {"bitz": 8}}}, "quantizers.weight.bitz: unknown key; known keys: bits"),
    ({"ops": {"Conv": "weigthed"}}, "ops.Conv.role: 'weigthed' is not one of"),
    ({"scheme": 4}, "scheme: 4 is not one of 1, 2, 3"),
    ({"quantizers": {"weight": {"bits": "eight"}}}, "quantizers.weight.bits: expected int, got str 'eight'"),
    ({"quantizers": {"weight": {"bits": 1}}}, "quantizers.weight.bits: 1 is outside 2..16"),
    ({"ops": {"Gemm": {"role": "weighted", "weights": "w4"}}}, "ops.Gemm.weights: unknown quantizer spec 'w4'"),
    ({"pipeline": ["fold_bn", "fold_bm"]}, "pipeline[1]: unknown pass 'fold_bm'; known passes: calibrate, fold_bn"),
    ({"pipeline": [{"name": "fold_bn", "options": {"standalon": "keep"}}]}, "pipeline[0].options.standalon: unknown key"),
    ({"emit": ["tensorrt_cache"]}, "emit[0]: unknown emitter 'tensorrt_cache'"),
    ({"layers": [{"match": {"name": "("}}]}, "layers[0].match.name: not a regular expression"),
    ({"calibration": {"activations": {"estimator": "entropyy"}}}, "calibration.activations.estimator: 'entropyy'"),
])
def test_strict_loader_names_the_path(tmp_path, mutation, message):
    path = write_yaml(tmp_path, "user.yaml", {"extends": "tensorrt", **mutation})
    with pytest.raises(UsageError) as info:
        load_backend(path)
    assert message in str(info.value)
    assert str(info.value).startswith("backend user.yaml: ")
    assert info.value.exit_code == 2


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
    with pytest.raises(UsageError, match="quantizers.weight.bitz: unknown key"):
        load_backend("tvm", ["quantizers.weight.bitz=4"])
    with pytest.raises(UsageError, match="expected KEY.PATH=VALUE"):
        load_backend("tvm", ["bits"])
    with pytest.raises(UsageError, match="is not an index"):
        load_backend("tvm", ["pipeline[9]=fold_bn"])
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
