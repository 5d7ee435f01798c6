"""The fused chunked reduction (qcheck.measure.fused) gives the statistics the accumulators' own passes give, and
measuring in groups that fit memory_mb (qcheck.measure.sessions) gives the statistics of one group.

Every test runs twice: with the compiled one-pass kernel (qcheck.measure.kernel, numba) and with numpy's chunks
(what runs without numba). The chunk size is made small here so that every tensor spans several chunks and a
remainder: the per-chunk sums, the spread merged over chunks, the extent taken from channel extremes are all
exercised."""

import math
from dataclasses import asdict

import numpy as np
import onnx
import pytest
from helpers import residual_cnn, write_npy_samples

from qcheck.data.readers import open_data
from qcheck.measure import fused, kernel
from qcheck.measure.error_stats import DistributionAccumulator, ErrorAccumulator, SquaredErrorAccumulator
from qcheck.measure.per_tensor import measure
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.policy.spec import DataSource, Preprocess, QuantizationSpec
from qcheck.quantize.calibrate import Recipe, build_quantized, calibrate
from qcheck.quantize.grid import dequantize
from qcheck.quantize.qdq import read_qdq


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def way(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(kernel, "numba", None)
    elif not kernel.available():
        pytest.skip("numba is not installed")
    return request.param


def _accumulators(scale=0.02):
    return (ErrorAccumulator(scale=scale, qrange=(-1.5, 1.2)), ErrorAccumulator(scale=scale, extent=False),
            DistributionAccumulator(channel_axis=1), SquaredErrorAccumulator(), SquaredErrorAccumulator())


SHAPE = {"skewness", "kurtosis", "bimodality"}  # excess kurtosis ~0 is a difference of ~3: compared to 1e-6


def _same(a, b, rel=2e-6):
    for key, value in a.items():
        other = b[key]
        if isinstance(value, float) and not (math.isnan(value) and math.isnan(other)):
            # abs: errors of ~1e-7 on O(1) tensors (a float op replayed in float) are float32 noise
            assert other == pytest.approx(value, rel=rel, abs=1e-6 if key in SHAPE else 1e-9), key
        else:
            assert other == value, key


def _samples(rng, offset, integers):
    f = (rng.standard_normal((1, 16, 37, 41)) * 0.6 + 0.2).astype(np.float32)
    # clipped to the grid, and with an offset (the zero point 75 vs 60): the error's spread is kept apart
    steps = np.clip(np.round(f / np.float32(0.02)) + 75, 0, 135).astype(np.uint8)
    q = dequantize(steps, 0.02, 75 + offset)
    local = (q + rng.normal(0, 0.004, q.shape)).astype(np.float32)
    w_only = (local + rng.normal(0, 0.002, q.shape)).astype(np.float32)
    return f, q, fused.Quantized(steps, 0.02, 75 + offset) if integers else fused.Quantized(q), local, w_only


@pytest.mark.parametrize("offset", [0, 15])
@pytest.mark.parametrize("integers", [True, False])
def test_fused_sums_are_the_accumulators_own(monkeypatch, offset, integers):
    monkeypatch.setattr(fused, "CHUNK", 4096)  # 24,272 elements: five chunks and a remainder
    rng = np.random.default_rng(4)
    plain, fast = _accumulators(), _accumulators()
    for _ in range(3):
        f, q, quant, local, w_only = _samples(rng, offset, integers)
        whole, loc, dist, weight, rest = plain
        whole.update(f, q)
        loc.update(local, q)
        dist.update(f)
        weight.update(local, w_only)
        rest.update(w_only, q)
        assert fused.reduce_sample(f, quant, local, w_only, *fast)
    for p, g in zip(plain[:2], fast[:2]):
        _same(asdict(p.result()), asdict(g.result()))
    assert fast[0].result().clip_fraction > 0 and fast[0].sample_spreads == pytest.approx(plain[0].sample_spreads)
    _same(asdict(plain[2].result()), asdict(fast[2].result()), rel=1e-5)
    for p, g in zip(plain[3:], fast[3:]):
        assert g.mean_squared_error() == pytest.approx(p.mean_squared_error(), rel=2e-6)


def test_a_non_finite_sample_is_left_to_the_accumulators_untouched():
    f = np.ones((1, 2, 8, 8), np.float32)
    f[0, 1, 3, 3] = np.inf
    accs = _accumulators()
    assert not fused.reduce_sample(f, fused.Quantized(f.copy()), None, None, accs[0], None, accs[2], None, None)
    assert accs[0].n == 0 and accs[2].n == 0 and accs[2].shift is None


def test_activations_beyond_float32_squares_give_finite_sums_and_no_warnings(monkeypatch):
    """A diverging activation (values ~1e20, as ONNX's own test copy of Inception v1 reaches) squares past float32's
    range: the sums are taken again in float64, equal to a float64 computation, and nothing is printed (numpy's
    overflow warnings reached the user's terminal, dozens per run)."""
    import warnings

    monkeypatch.setattr(fused, "CHUNK", 4096)
    rng = np.random.default_rng(5)
    f = (rng.standard_normal((1, 4, 33, 35)) * 1e20).astype(np.float32)
    q = (f * np.float32(1.001)).astype(np.float32)
    e = (f.astype(np.float64) - q.astype(np.float64)).ravel()
    for path in ("fused", "accumulators"):
        accs = _accumulators(scale=1e18)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if path == "fused":
                fused.reduce_sample(f, fused.Quantized(q), None, None, accs[0], None, None, None, None)
            if accs[0].n == 0:  # the fused path leaves a non-finite sum to the accumulators
                accs[0].update(f, q)
            accs[3].update(f, q)
        assert accs[0].sum_ee == pytest.approx(float(np.dot(e, e)), rel=1e-6), path
        assert accs[3].mean_squared_error() == pytest.approx(float(np.dot(e, e)) / e.size, rel=1e-6)
        assert math.isfinite(accs[0].result().rmse_scale)


def _built(tmp_path, samples: int):
    """The residual CNN, calibrated and quantized (ORT's QDQ), and its samples."""
    src = residual_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", samples)
    pm = prepare_model(load_onnx(src), src, {}, tmp_path)
    float_model = onnx.load(str(pm.path))
    data = open_data(DataSource(tmp_path / "calib"), pm.inputs, Preprocess())
    ranges = calibrate(pm.path, data, QuantizationSpec())
    qmodel = onnx.load(str(build_quantized(pm.path, ranges, Recipe(), tmp_path / "q.onnx")))
    return float_model, qmodel, read_qdq(qmodel, float_model), data, ranges


def test_measurement_of_a_built_model_is_the_same_fused_or_not(tmp_path, monkeypatch):
    monkeypatch.setattr(fused, "CHUNK", 500)  # the model's tensors are 256 to 2,048 elements
    float_model, qmodel, qmap, data, ranges = _built(tmp_path, 6)
    rows = {}
    for way in (True, False):
        m = measure(float_model, qmodel, qmap, data, ranges.ranges, {}, ["local", "whole"], fused=way)
        rows[way] = {r.name: r.row() for r in m.tensors}
    assert rows[True].keys() == rows[False].keys()
    measured = [r for r in rows[False].values() if r["kind"] == "activation" and r["rmse_scale"] is not None]
    assert len(measured) >= 6 and any(r["weight_error_share"] is not None for r in measured)
    for name, row in rows[False].items():
        _same(row, rows[True][name], rel=1e-5)


def test_measurement_in_groups_that_fit_memory_mb_is_the_same(tmp_path):
    # memory_mb 0: every activation is its own group, with its own twin and its own runs of both models
    float_model, qmodel, qmap, data, ranges = _built(tmp_path, 4)
    one = measure(float_model, qmodel, qmap, data, ranges.ranges, {}, ["local", "whole"], memory_mb=1024)
    split = measure(float_model, qmodel, qmap, data, ranges.ranges, {}, ["local", "whole"], memory_mb=0)
    groups = sum(1 for t in qmap.tensors.values() if t.kind == "activation")
    assert not one.notes and any(f"in {groups} groups" in n for n in split.notes)
    assert [r.row() for r in split.tensors] == [r.row() for r in one.tensors]
    assert split.outputs == one.outputs


@pytest.mark.parametrize("dtype,zero_point", [(np.int8, -3), (np.int16, 7), (np.uint8, 128)])
def test_sequence_tensors_and_integer_types(dtype, zero_point):
    """[N, T, C] tensors (channels on the last axis) and int8/int16/uint8 grids: the sums and the channel extremes
    are the accumulators' own."""
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    plain = (ErrorAccumulator(scale=0.01, qrange=(-1.0, 1.0)), DistributionAccumulator(channel_axis=2))
    fast = (ErrorAccumulator(scale=0.01, qrange=(-1.0, 1.0)), DistributionAccumulator(channel_axis=2))
    for _ in range(2):
        f = (rng.standard_normal((2, 40, 24)) * 0.3 * np.linspace(0.5, 3, 24)).astype(np.float32)
        q = np.clip(np.round(f / np.float32(0.01)) + zero_point, info.min, info.max).astype(dtype)
        plain[0].update(f, dequantize(q, 0.01, zero_point))
        plain[1].update(f)
        assert fused.reduce_sample(f, fused.Quantized(q, 0.01, zero_point), None, None, fast[0], None, fast[1],
                                   None, None)
    _same(asdict(plain[0].result()), asdict(fast[0].result()))
    _same(asdict(plain[1].result()), asdict(fast[1].result()), rel=1e-5)
    assert fast[1].result().channels == 24 and fast[1].cmin.tolist() == plain[1].cmin.tolist()


def test_the_per_layer_pair_without_a_weights_only_twin():
    """weight_error_share not read: the twin has no weights-only copy; the per-layer sums are the same."""
    rng = np.random.default_rng(5)
    plain, fast = _accumulators(), _accumulators()
    for _ in range(2):
        f, q, quant, local, _ = _samples(rng, 0, True)
        plain[0].update(f, q)
        plain[1].update(local, q)
        assert fused.reduce_sample(f, quant, local, None, fast[0], fast[1], None, None, None)
    for p, g in zip(plain[:2], fast[:2]):
        _same(asdict(p.result()), asdict(g.result()))
