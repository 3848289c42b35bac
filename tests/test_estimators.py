"""Range estimators against references: formulas, brute-force optima, onnxruntime's entropy calibrator.

Synthetic tensors: Gaussian, Laplace, ReLU'd Gaussian, a bimodal tensor with
outliers, a constant. A search estimator (mse, histogram_l2, kl) must land
within one histogram bin of the exhaustive optimum of its own objective,
and its range must quantize the raw values nearly as well as the best range
found on the raw values themselves.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from qcompiler.calibration import histogram
from qcompiler.calibration.estimators import ESTIMATORS, make_estimator, statistics_of
from qcompiler.calibration.weights import estimate_weight, weight_range
from qcompiler.config.backend import EstimatorConfig, QuantizerSpec, WeightEstimatorConfig
from qcompiler.errors import UsageError
from qcompiler.quant.qmath import fake_quantize, grid, qparams, resolve_signed

RNG = np.random.default_rng(0)
DATA = RNG.normal(0, 1, (12, 3, 8, 8)).astype(np.float32)


def _bimodal(rng: np.random.Generator) -> np.ndarray:
    values = np.concatenate([rng.normal(-2, 0.3, 30_000), rng.normal(1.5, 0.5, 30_000), rng.uniform(-20, 25, 30)])
    return rng.permutation(values)


TENSORS = {
    "gaussian": RNG.normal(0, 1, 60_000),
    "laplace": RNG.laplace(0, 1, 60_000),
    "relu": np.maximum(RNG.normal(0.2, 1, 60_000), 0),
    "bimodal_outliers": _bimodal(RNG),
    "constant": np.full(60_000, 0.75),
}
INT8 = QuantizerSpec(bits=8, signedness="signed", symmetric=True)
UINT8 = QuantizerSpec(bits=8, signedness="unsigned", symmetric=False)
POW2 = QuantizerSpec(bits=8, signedness="signed", symmetric=True, scale="power_of_two")
REDUCED = QuantizerSpec(bits=8, signedness="unsigned", symmetric=False, reduce_range=True)
INT4 = QuantizerSpec(bits=4, signedness="signed", symmetric=True)
GRIDS = {"int8": INT8, "uint8_asymmetric": UINT8, "power_of_two": POW2, "reduce_range": REDUCED, "int4": INT4}


def run(name: str, data: np.ndarray, batch: int, spec: QuantizerSpec = INT8, **params) -> tuple[float, float]:
    estimator = make_estimator(EstimatorConfig(estimator=name, **params), spec)
    for start in range(0, len(data), batch):
        estimator.update(statistics_of(data[start: start + batch], estimator.needs))
    return estimator.range()


def filled(values: np.ndarray, bins: int = histogram.DEFAULT_BINS) -> histogram.StreamedHistogram:
    hist = histogram.StreamedHistogram(bins)
    values = np.asarray(values, np.float32)
    hist.add(values, float(values.min()), float(values.max()))
    return hist


def grid_for(spec: QuantizerSpec, values: np.ndarray):
    return grid(spec, resolve_signed(spec, np.asarray(values.min())))


def raw_error(values: np.ndarray, lo: float, hi: float, spec: QuantizerSpec) -> float:
    g = grid_for(spec, values)
    scale, zero_point = qparams(np.asarray(lo), np.asarray(hi), spec, g)
    values = values.astype(np.float32)
    return float(np.mean((fake_quantize(values, scale, zero_point, g) - values) ** 2))


@pytest.mark.parametrize("name", sorted(set(ESTIMATORS) - {"ema_minmax"}))
def test_batching_does_not_change_the_range(name):
    np.testing.assert_allclose(run(name, DATA, 1), run(name, DATA, 5), rtol=1e-9)


def test_ema_minmax_follows_its_momentum_batch_by_batch():
    per_batch = [(DATA[i: i + 4].min(), DATA[i: i + 4].max()) for i in range(0, 12, 4)]
    lo, hi = per_batch[0]
    for batch_lo, batch_hi in per_batch[1:]:
        lo, hi = 0.8 * lo + 0.2 * batch_lo, 0.8 * hi + 0.2 * batch_hi
    np.testing.assert_allclose(run("ema_minmax", DATA, 4, momentum=0.8), (lo, hi), rtol=1e-6)


def test_formulas():
    flat = DATA.reshape(12, -1).astype(np.float64)
    assert run("minmax", DATA, 4) == (float(DATA.min()), float(DATA.max()))
    np.testing.assert_allclose(run("mean_max", DATA, 4), (flat.min(1).mean(), flat.max(1).mean()), rtol=1e-6)
    mean, std = flat.mean(), flat.std()
    np.testing.assert_allclose(run("meanstd", DATA, 4, k=2.0), (mean - 2 * std, mean + 2 * std), rtol=1e-6)
    amax = 2 * np.abs(flat).mean() * np.sqrt(127)   # LSQ: s = 2 mean|x| / sqrt(qmax), range s * qmax
    np.testing.assert_allclose(run("norm", DATA, 4), (max(-amax, flat.min()), min(amax, flat.max())), rtol=1e-6)
    lo, hi = run("percentile", DATA, 4, percentile=0.99)
    np.testing.assert_allclose((lo, hi), np.quantile(flat, [0.01, 0.99]), atol=2 * filled(DATA).width)
    assert run("percentile", DATA, 4, percentile=1.0) == pytest.approx(run("minmax", DATA, 4), abs=1e-6)


def test_the_histogram_grows_by_exact_merges():
    values = RNG.normal(0, 1, 10_000).astype(np.float32)
    grown = histogram.StreamedHistogram(64)
    for part in (values[:10] * 0.01, values):   # the second batch is 100x wider: the limit doubles 7 times
        grown.add(part, float(part.min()), float(part.max()))
    direct = filled(np.concatenate([values[:10] * 0.01, values]), 64)
    assert grown.limit == direct.limit == 4.0
    np.testing.assert_array_equal(grown.counts, direct.counts)


@pytest.mark.parametrize("tensor", sorted(TENSORS))
@pytest.mark.parametrize("spec_name", sorted(GRIDS))
def test_mse_lands_on_the_exhaustive_optimum(tensor, spec_name):
    values, spec = TENSORS[tensor], GRIDS[spec_name]
    hist = filled(values)
    g = grid_for(spec, values)
    lo, hi = histogram.mse_range(hist, spec, g)
    low, high = min(hist.lo, 0.0), max(hist.hi, 0.0)
    factors = np.linspace(0.002, 1, 500)
    raw = [raw_error(values, f * low, f * high, spec) for f in factors]
    # the histogram's error is the raw values' error: its choice quantizes them as well as the raw optimum
    assert raw_error(values, lo, hi, spec) <= min(raw) * 1.03 + 1e-9
    if hist.limit:
        best = factors[int(np.argmin(raw))] * max(-low, high)
        model = histogram.ErrorModel(hist, spec, g)
        if model(np.array([lo]), np.array([hi]))[0] > model(np.array([best * low]), np.array([best * high]))[0]:
            assert abs(max(-lo, hi) - best) <= hist.width * 1.001


@pytest.mark.parametrize("tensor", sorted(TENSORS))
def test_histogram_l2_lands_on_the_exhaustive_optimum(tensor):
    values = TENSORS[tensor]
    hist = filled(values, bins=128)
    g = grid(UINT8, False)
    lo, hi = histogram.l2_range(hist, UINT8, g)
    if not hist.limit:
        return
    width = hist.width
    lows = np.append(-np.arange(int(np.ceil(-min(hist.lo, 0) / width))) * width, min(hist.lo, 0.0))
    highs = np.append(np.arange(int(np.ceil(max(hist.hi, 0) / width))) * width, max(hist.hi, 0.0))
    pairs_lo, pairs_hi = (a.ravel() for a in np.meshgrid(lows, highs, indexing="ij"))
    model = histogram.ErrorModel(hist, UINT8, g)
    errors = model(pairs_lo, pairs_hi)
    best = int(np.argmin(errors))
    ours = model(np.array([lo]), np.array([hi]))[0]
    assert ours <= errors[best] * (1 + 1e-9) or (
        abs(lo - pairs_lo[best]) <= width * 1.001 and abs(hi - pairs_hi[best]) <= width * 1.001)
    raw = min(raw_error(values, a, b, UINT8) for a, b in zip(pairs_lo[::7], pairs_hi[::7]))
    assert raw_error(values, lo, hi, UINT8) <= raw * 1.05 + 1e-12


def _kl_reference(counts: np.ndarray, levels: int) -> int:
    """TensorRT entropy calibration as NVIDIA's pytorch-quantization writes it, one candidate at a time."""
    counts = counts.astype(np.float64)
    counts[0] = counts[1]
    last = int(np.flatnonzero(counts)[-1]) + 1
    best, best_divergence = last, np.inf
    for i in range(levels, last + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        group = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        group[counts[:i] == 0] = -1
        q = np.zeros(i)
        for g in range(levels):
            members = group == g
            if members.any():
                q[members] = counts[:i][members].sum() / members.sum()
        if p[-1] > 0 and q[-1] == 0:
            q[-1] = 1e-4
        p, q = p / p.sum(), q / q.sum()
        kept = p > 0
        divergence = float(np.sum(p[kept] * np.log(p[kept] / q[kept])))
        if divergence < best_divergence:
            best, best_divergence = i, divergence
    return best


@pytest.mark.parametrize("tensor", sorted(set(TENSORS) - {"constant"}))
def test_kl_is_tensorrt_entropy_calibration(tensor):
    hist = filled(np.abs(TENSORS[tensor]), bins=512)
    counts = hist.counts[hist.bins:]
    assert histogram.kl_threshold(counts, 64) == _kl_reference(counts, 64)


def test_kl_against_onnxruntime_entropy_calibrator():
    """onnxruntime's entropy search reads a signed histogram: windows [-i, i + 1) bins around zero merged into
    ``num_quantized_bins`` groups across both signs, the remainder to the last group, q spread over every bin
    of a group (empty ones too) and truncated to integers. Ours thresholds |x| in ``levels`` even groups per
    side. On the same counts the two agree to a few percent of the range on a symmetric tensor, and
    onnxruntime's lands higher: its last group absorbs the tail it would otherwise have to represent."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    values = TENSORS["gaussian"].astype(np.float32)
    collector = HistogramCollector("entropy", True, 2048, 256, None, None)
    with contextlib.redirect_stdout(io.StringIO()):
        collector.collect({"t": [values]})
        theirs = float(collector.get_entropy_threshold(collector.histogram_dict["t"], 256)[1])
    counts, edges = collector.histogram_dict["t"][:2]
    half = len(counts) // 2
    magnitudes = counts[half:] + counts[:half][::-1]
    ours = histogram.kl_threshold(magnitudes, 128) * (edges[1] - edges[0])
    assert abs(ours - theirs) / np.abs(values).max() < 0.1


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_a_constant_tensor_gets_its_value(name):
    lo, hi = run(name, np.full((4, 100), 0.75, np.float32), 2)
    assert (lo, hi) == pytest.approx((0.75, 0.75)) or (lo <= 0.0 and hi == pytest.approx(0.75))
    assert run(name, np.zeros((4, 100), np.float32), 2) == (0.0, 0.0)


@pytest.mark.parametrize("name", ["mse", "kl", "histogram_l2"])
def test_searches_use_the_grid_they_quantize_onto(name):
    """A power-of-two grid has few scales to choose from; the search picks among them, not between them."""
    values = TENSORS["laplace"].astype(np.float32)
    data = values.reshape(60, -1)
    lo, hi = run(name, data, 10, POW2)
    scale, _ = qparams(np.asarray(lo), np.asarray(hi), POW2, grid(POW2, True))
    assert np.log2(scale) == np.round(np.log2(scale))
    assert run(name, data, 10, INT4) != run(name, data, 10, INT8)


def test_unknown_and_invalid_estimators_are_usage_errors():
    with pytest.raises(UsageError, match="'entropy' does not exist; available: minmax, ema_minmax"):
        make_estimator(EstimatorConfig(estimator="entropy"), INT8)
    with pytest.raises(UsageError, match="percentile 0.2 must be in"):
        make_estimator(EstimatorConfig(estimator="percentile", percentile=0.2), INT8)


# weights

WEIGHT = RNG.normal(0, 1, (8, 4, 3, 3)).astype(np.float32) * np.linspace(0.1, 2, 8)[:, None, None, None]
PER_CHANNEL = QuantizerSpec(bits=8, signedness="signed", symmetric=True, granularity="per_channel")


def test_weight_range_per_channel():
    weight = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10
    lo, hi = weight_range(weight, 1)
    np.testing.assert_array_equal(lo, weight.transpose(1, 0, 2).reshape(3, -1).min(1))
    np.testing.assert_array_equal(hi, weight.transpose(1, 0, 2).reshape(3, -1).max(1))
    assert weight_range(weight, None) == (-10, 13)


@pytest.mark.parametrize("name", ["minmax", "mse", "norm", "meanstd"])
def test_channel_groups_span_per_tensor_to_per_channel(name):
    config = WeightEstimatorConfig(estimator=name)
    per_channel = estimate_weight(config, PER_CHANNEL, WEIGHT, 0)
    per_tensor = estimate_weight(config, QuantizerSpec(bits=8, symmetric=True), WEIGHT, None)
    as_channels = estimate_weight(config, _groups(8), WEIGHT, 0)
    as_tensor = estimate_weight(config, _groups(1), WEIGHT, 0)
    np.testing.assert_allclose(as_channels, per_channel, rtol=1e-12)
    np.testing.assert_allclose(as_tensor[0], np.full(8, per_tensor[0]), rtol=1e-12)
    np.testing.assert_allclose(as_tensor[1], np.full(8, per_tensor[1]), rtol=1e-12)
    lo, _ = estimate_weight(config, _groups(3), WEIGHT, 0)   # 8 channels in 3, 3, 2
    assert len(set(lo[:3])) == len(set(lo[3:6])) == len(set(lo[6:])) == 1


def _groups(count: int) -> QuantizerSpec:
    return QuantizerSpec(bits=8, signedness="signed", symmetric=True, granularity="per_channel", channel_groups=count)


def test_weight_mse_beats_minmax_per_channel_at_4_bits():
    spec = QuantizerSpec(bits=4, signedness="signed", symmetric=True, granularity="per_channel")
    heavy = RNG.laplace(0, 1, (6, 500)).astype(np.float32)
    errors = {}
    for name in ("minmax", "mse"):
        lo, hi = estimate_weight(WeightEstimatorConfig(estimator=name), spec, heavy, 0)
        g = grid(spec, True)
        scale, zero_point = qparams(lo, hi, spec, g)
        errors[name] = np.mean((fake_quantize(heavy, scale, zero_point, g, 0) - heavy) ** 2, axis=1)
        # brute force per row over the shrink factors mse searches
        if name == "mse":
            for row in range(len(heavy)):
                amax = np.abs(heavy[row]).max()
                brute = min(raw_error(heavy[row], -a * amax, a * amax, spec) for a in np.arange(1, 257) / 256)
                assert errors["mse"][row] <= brute * (1 + 1e-6)
    assert np.all(errors["mse"] < errors["minmax"])


# the observer: what onnxruntime hands the estimators is what numpy would


def _observed_and_expected(estimator: str, tmp_path, dims: list, stride_cap: int | None = None, monkeypatch=None):
    import onnx

    from qcompiler import runtime
    from qcompiler.calibration import observer
    from qcompiler.driver import CompileRequest, compile_model
    from qcompiler.testing.models import TEST_MODELS

    model = TEST_MODELS["resnet_basic_block"]()
    model.graph.input[0].type.tensor_type.shape.Clear()
    for dim in dims:
        entry = model.graph.input[0].type.tensor_type.shape.dim.add()
        if isinstance(dim, str):
            entry.dim_param = dim
        else:
            entry.dim_value = dim
    onnx.save(model, str(tmp_path / "model.onnx"))
    data = RNG.normal(0.3, 1, (10, 16, 16, 16)).astype(np.float32)
    np.save(tmp_path / "calib.npy", data)
    if stride_cap is not None:
        monkeypatch.setattr(observer, "HISTOGRAM_VALUES_PER_SAMPLE", stride_cap)
    result = compile_model(CompileRequest(model=tmp_path / "model.onnx", backend="snpe", out=tmp_path / "out",
                                          calib=str(tmp_path / "calib.npy"), overrides=[
                                              f"calibration.activations.estimator={estimator}",
                                              "calibration.batch_size=4"]))
    points = result.ctx.plan.activations()
    float_model = onnx.load(tmp_path / "out" / "model.onnx")
    session = runtime.session(runtime.with_outputs(float_model, [p.tensor for p in points]))
    for point in points:
        reference = make_estimator(point.estimator, point.spec)
        for start in range(0, len(data), 4):
            (values,) = session.run([point.tensor], {"x": data[start: start + 4]})
            stats = statistics_of(values, reference.needs)
            if stats.values is not None and stride_cap is not None:
                stride = observer._prime_at_least(int(np.ceil(stats.values.shape[1] / stride_cap)))
                stats.values = stats.values[:, ::stride]
            reference.update(stats)
        yield point, reference.range()


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("dims", [["N", 16, 16, 16], ["N", 16, "H", "W"]], ids=["static", "dynamic_spatial"])
def test_the_observer_feeds_each_estimator_what_numpy_would(name, dims, tmp_path):
    """Ranges as widened to contain 0 (a ReLU's minimum, which the observer never reads, does not matter)."""
    for point, (lo, hi) in _observed_and_expected(name, tmp_path, dims):
        np.testing.assert_allclose([min(np.min(point.lo), 0), max(np.max(point.hi), 0)], [min(lo, 0), max(hi, 0)],
                                   rtol=2e-5, atol=1e-6, err_msg=point.tensor)


@pytest.mark.parametrize("name", ["percentile", "mse", "kl", "histogram_l2"])
def test_histograms_read_an_even_prime_stride_subsample(name, tmp_path, monkeypatch):
    for point, (lo, hi) in _observed_and_expected(name, tmp_path, ["N", 16, 16, 16], 1000, monkeypatch):
        np.testing.assert_allclose([min(np.min(point.lo), 0), max(np.max(point.hi), 0)], [min(lo, 0), max(hi, 0)],
                                   rtol=2e-5, atol=1e-6, err_msg=point.tensor)
