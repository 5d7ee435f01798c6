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
