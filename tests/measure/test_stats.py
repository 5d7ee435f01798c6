"""Error statistics against closed forms."""

import math

import numpy as np
import pytest

from qcheck.measure.error_stats import UNIFORM_RMSE_SCALE, ErrorAccumulator, cosine, sqnr_db
from qcheck.quantize.grid import dequantize, quantize


def roundtrip(x, scale, zp, dtype="uint8"):
    return dequantize(quantize(x, scale, zp, dtype), scale, zp)


def test_uniform_rounding_noise_gives_one_over_sqrt12():
    # Values spread uniformly over many steps: the rounding error is uniform on
    # [-scale/2, scale/2], whose RMS is scale / sqrt(12).
    rng = np.random.default_rng(0)
    scale, zp = 0.05, 128
    x = rng.uniform(-6.0, 6.0, size=400_000).astype(np.float32)
    acc = ErrorAccumulator(scale=scale)
    acc.update(x, roundtrip(x, scale, zp))
    s = acc.result()
    assert s.rmse_scale == pytest.approx(UNIFORM_RMSE_SCALE, abs=0.003)
    assert s.max_abs_error <= scale / 2 * (1 + 1e-5)
    assert abs(s.mean_error) < 0.01 * scale  # rounding is unbiased
    # SQNR of a uniform signal on [-a, a] (power a^2/3) against noise of power scale^2/12
    assert s.sqnr == pytest.approx(10 * math.log10((6.0**2 / 3) / (scale**2 / 12)), abs=0.05)


def test_exactly_representable_values_have_no_error():
    scale, zp = 0.25, 10
    q = np.arange(0, 256, dtype=np.uint8)
    x = (q.astype(np.float32) - zp) * scale
    acc = ErrorAccumulator(scale=scale)
    acc.update(x, roundtrip(x, scale, zp))
    s = acc.result()
    assert s.max_abs_error == 0.0
    assert s.mean_squared_error == 0.0
    assert s.rmse_scale == 0.0
    assert s.cosine == 1.0
    assert math.isinf(s.sqnr)


def test_clipped_tensor_gives_expected_max_abs_error_and_clip_fraction():
    # uint8 grid with zp=0 and scale 0.02 covers [0, 5.1]; values up to 8 saturate at 5.1.
    scale, zp = 0.02, 0
    hi = 255 * scale
    x = np.linspace(0.0, 8.0, 8001).astype(np.float32)
    acc = ErrorAccumulator(scale=scale, qrange=(0.0, hi))
    acc.update(x, roundtrip(x, scale, zp))
    s = acc.result()
    assert s.max_abs_error == pytest.approx(8.0 - hi, rel=1e-5)
    # values more than half a step beyond 5.1 are clipped: those above 5.11
    expected = np.count_nonzero(x.astype(np.float64) > hi + scale / 2) / x.size
    assert s.clip_fraction == pytest.approx(expected)
    assert s.max_overshoot == pytest.approx((8.0 - hi) / scale, rel=1e-4)


def test_accumulating_samples_equals_one_big_tensor():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(1000), rng.standard_normal(500)
    qa, qb = a + rng.normal(0, 0.01, a.shape), b + rng.normal(0, 0.01, b.shape)
    split, whole = ErrorAccumulator(scale=0.1), ErrorAccumulator(scale=0.1)
    split.update(a, qa)
    split.update(b, qb)
    whole.update(np.concatenate([a, b]), np.concatenate([qa, qb]))
    s1, s2 = split.result(), whole.result()
    for field in ("mean_error", "stddev", "max_abs_error", "mean_squared_error", "cosine", "sqnr", "rmse_scale"):
        assert getattr(s1, field) == pytest.approx(getattr(s2, field), rel=1e-12)


def test_per_channel_scale_measures_each_channel_in_its_own_steps():
    # Two channels with scales 1 and 100 and the same error in steps: rmse/scale is that error.
    scale = np.array([1.0, 100.0]).reshape(2, 1)
    f = np.zeros((2, 1000))
    q = f + 0.25 * scale  # a quarter step off in both channels
    acc = ErrorAccumulator(scale=scale)
    acc.update(f, q)
    assert acc.result().rmse_scale == pytest.approx(0.25)


def test_cosine_and_sqnr_edge_cases():
    assert cosine(0.0, 0.0, 0.0) == 1.0  # two all-zero tensors are the same
    assert cosine(0.0, 1.0, 0.0) == 0.0
    assert sqnr_db(1.0, 0.0) == math.inf
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)


def test_quantize_matches_onnx_round_half_to_even_and_saturation():
    x = np.array([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0], dtype=np.float32)
    q = quantize(x, 1.0, 0, "int8")
    assert q.tolist() == [0, 2, 2, 0, 127, -128]


# --------------------------------------------------------------------------- float32 sums, against float64 numpy


def _float64_reference(f, q, scale):
    f, q = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
    e = f - q
    return {"mean_error": e.mean(), "stddev": e.std(), "max_abs_error": np.abs(e).max(),
            "mean_abs_error": np.abs(e).mean(), "mean_squared_error": (e * e).mean(),
            "rmse_scale": math.sqrt((e * e).mean()) / scale, "cosine": f @ q / math.sqrt((f @ f) * (q @ q)),
            "sqnr": 10 * math.log10((f @ f) / (e @ e)), "float_min": f.min(), "float_max": f.max()}


def test_float32_tensors_give_the_float64_statistics():
    # ORT returns float32: the sums are taken in float32 (pairwise), not in a float64 copy; every
    # statistic must still match a float64 computation to float precision, over several samples.
    rng = np.random.default_rng(7)
    scale, zp = 0.02, 128
    acc = ErrorAccumulator(scale=scale)
    fs, qs = [], []
    for shape in ((1, 64, 80, 80), (1, 16, 160, 160), (1, 3, 7, 5)):
        f = (rng.standard_normal(shape) * 0.7 + 0.3).astype(np.float32)
        q = roundtrip(f, scale, zp)
        acc.update(f, q)
        fs.append(f.ravel())
        qs.append(q.ravel())
    got = acc.result()
    want = _float64_reference(np.concatenate(fs), np.concatenate(qs), scale)
    for key, value in want.items():
        assert getattr(got, key) == pytest.approx(value, rel=1e-5, abs=1e-9), key
    # 1 - cosine (~1e-4 here) is resolved to a relative 1e-3, which <f, q> / (|f| |q|) from float32 sums is not
    assert 1 - got.cosine == pytest.approx(1 - want["cosine"], rel=1e-3)


def test_cosine_from_error_is_the_cosine():
    from qcheck.measure.error_stats import cosine_from_error

    rng = np.random.default_rng(1)
    f, q = rng.standard_normal(1000), rng.standard_normal(1000)
    e = f - q
    assert cosine_from_error(f @ f, q @ q, e @ e) == pytest.approx(f @ q / math.sqrt((f @ f) * (q @ q)), abs=1e-12)
    assert cosine_from_error(f @ f, 4 * (f @ f), (f @ f)) == pytest.approx(1.0)  # q = 2f: same direction
    assert cosine_from_error(0.0, 0.0, 0.0) == 1.0 and cosine_from_error(1.0, 0.0, 1.0) == 0.0


def test_float32_distribution_matches_float64_moments_and_exact_channel_ranges():
    from qcheck.measure.error_stats import DistributionAccumulator

    rng = np.random.default_rng(5)
    xs = [np.exp(rng.standard_normal((1, 32, 40, 40))).astype(np.float32) for _ in range(3)]
    xs[1][0, 7] *= 9.0  # one wide channel
    acc = DistributionAccumulator(channel_axis=1)
    for x in xs:
        acc.update(x)
    d = acc.result()
    v = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
    c = v - v.mean()
    m2, m3, m4 = (c**2).mean(), (c**3).mean(), (c**4).mean()
    assert d.skewness == pytest.approx(m3 / m2**1.5, rel=1e-4)
    assert d.kurtosis == pytest.approx(m4 / m2**2 - 3, rel=1e-4)
    stacked = np.concatenate(xs, axis=0).astype(np.float64)
    widths = stacked.max(axis=(0, 2, 3)) - stacked.min(axis=(0, 2, 3))
    assert d.worst_channel == 7
    assert d.channel_range_ratio == pytest.approx(widths.max() / np.median(widths), rel=1e-12)


def test_stddev_of_an_offset_error_survives_float32_sums():
    # an error that is mostly a constant offset (a shifted zero point): mse - mean^2 from float32 sums
    # would leave noise of ~1e-7 * mse in place of the variance; the centred sums keep it
    rng = np.random.default_rng(11)
    acc = ErrorAccumulator(scale=0.01)
    es = []
    for _ in range(3):
        f = rng.standard_normal(200_000).astype(np.float32)
        q = (f - np.float32(0.5) + rng.normal(0, 1e-4, f.size).astype(np.float32)).astype(np.float32)
        acc.update(f, q)
        es.append(f.astype(np.float64) - q.astype(np.float64))
    assert acc.result().stddev == pytest.approx(np.concatenate(es).std(), rel=1e-3)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32"])
def test_dequantize_is_onnx_dequantize_linear_bit_for_bit(dtype):
    # (q - zero_point) in int32, then float32 times scale, as ONNX Runtime computes it; the float32 shortcut
    # taken for 8/16-bit types must give the same bits, per tensor and per channel
    rng = np.random.default_rng(2)
    info = np.iinfo(np.dtype(dtype))
    q = rng.integers(info.min, info.max, size=(1, 8, 5, 5), endpoint=True).astype(dtype)
    for scale, zp in ((np.float32(0.0173), 3), (np.linspace(1e-3, 0.1, 8).reshape(1, 8, 1, 1), np.arange(8).reshape(1, 8, 1, 1))):
        want = (q.astype(np.int64) - zp).astype(np.int32).astype(np.float32) * np.asarray(scale, np.float32)
        got = dequantize(q, scale, zp)
        assert got.dtype == np.float32 and np.array_equal(got, want)
