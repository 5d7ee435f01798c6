"""Error statistics between a float tensor and its quantized twin.

The quantities are those of TFLite's quantization debugger, on the
difference `error = float - dequantized(quantized)`:

    num_elements, mean_error, stddev, max_abs_error, mean_squared_error

plus the tensor's `scale` and `zero_point`, and derived values:

    range      = scale * (qmax - qmin)      the real interval the grid covers
    rmse_scale = sqrt(mean_squared_error) / scale
                 ~ 1/sqrt(12) = 0.289 when the error is pure rounding noise
    cosine     = <f, q> / (|f| |q|)
    sqnr       = 10 log10(sum f^2 / sum error^2)   [dB]

Everything is accumulated as sums, one sample at a time, so no tensor has to
be kept across samples: `ErrorAccumulator.update` per sample, `.result()` once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

UNIFORM_RMSE_SCALE = 1.0 / math.sqrt(12.0)  # rounding noise, uniform on [-scale/2, scale/2]


def cosine(sum_fq: float, sum_ff: float, sum_qq: float) -> float:
    """Cosine similarity from sums; two all-zero tensors are identical (1.0)."""
    if sum_ff == 0.0 and sum_qq == 0.0:
        return 1.0
    if sum_ff == 0.0 or sum_qq == 0.0:
        return 0.0
    return float(sum_fq / math.sqrt(sum_ff * sum_qq))


def sqnr_db(sum_ff: float, sum_ee: float) -> float:
    """Signal-to-quantization-noise ratio in dB; +inf when there is no error."""
    if sum_ee == 0.0:
        return math.inf
    if sum_ff == 0.0:
        return -math.inf
    return float(10.0 * math.log10(sum_ff / sum_ee))


@dataclass
class ErrorStats:
    """The statistics of one tensor over all samples (plain data)."""

    num_elements: int
    mean_error: float
    stddev: float
    max_abs_error: float
    mean_abs_error: float
    mean_squared_error: float
    rmse: float
    cosine: float
    sqnr: float
    rmse_scale: float | None = None  # only when a scale is known
    clip_fraction: float | None = None  # share of float values outside the representable range
    max_overshoot: float | None = None  # worst distance beyond that range, in units of scale
    float_min: float | None = None
    float_max: float | None = None
    spread_steps: float | None = None  # median over samples of (max - min) / scale: grid steps a sample uses


class ErrorAccumulator:
    """Accumulates error sums of one tensor over samples.

    `scale` may be a scalar or an array that broadcasts against the tensor
    (per-channel weights); `rmse_scale` then measures every element's error in
    units of its own channel's scale. `qrange` (lowest, highest representable
    real value, scalars or arrays) enables the clipping statistics.
    """

    def __init__(self, scale: float | np.ndarray | None = None, qrange: tuple | None = None):
        self.scale = scale
        self.qrange = qrange
        self.n = 0
        self.sum_e = 0.0
        self.sum_abs = 0.0
        self.sum_ee = 0.0
        self.sum_ee_scaled = 0.0
        self.max_abs = 0.0
        self.sum_fq = 0.0
        self.sum_ff = 0.0
        self.sum_qq = 0.0
        self.clipped = 0
        self.overshoot = 0.0
        self.fmin = math.inf
        self.fmax = -math.inf
        self.sample_spreads: list[float] = []
        self.last_dots = (0.0, 0.0, 0.0)

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        if reference.shape != test.shape:
            raise ValueError(f"shape mismatch: float {reference.shape} vs quantized {test.shape}")
        self.last_dots = (0.0, 0.0, 0.0)
        if reference.size == 0:
            return
        # float64 and BLAS dot products: exact enough for 1 - cosine ~ 1e-7, and fast
        f = np.asarray(reference, dtype=np.float64).ravel()
        q = np.asarray(test, dtype=np.float64).ravel()
        e = f - q
        self.n += e.size
        self.sum_e += float(e.sum())
        sum_ee = float(e @ e)
        self.sum_ee += sum_ee
        self.sum_abs += float(np.abs(e).sum())
        self.max_abs = max(self.max_abs, float(e.max()), -float(e.min()))
        # this sample's dot products, kept for per-sample figures (metrics.OutputComparison)
        self.last_dots = (float(f @ q), float(f @ f), float(q @ q))
        self.sum_fq += self.last_dots[0]
        self.sum_ff += self.last_dots[1]
        self.sum_qq += self.last_dots[2]
        fmin, fmax = float(f.min()), float(f.max())
        self.fmin = min(self.fmin, fmin)
        self.fmax = max(self.fmax, fmax)
        scalar_scale = self.scale is not None and np.ndim(self.scale) == 0
        if scalar_scale and float(self.scale) > 0:
            self.sample_spreads.append((fmax - fmin) / float(self.scale))
            self.sum_ee_scaled += sum_ee / float(self.scale) ** 2
        elif self.scale is not None:
            scale = np.broadcast_to(np.asarray(self.scale, dtype=np.float64), reference.shape).ravel()
            with np.errstate(divide="ignore", invalid="ignore"):
                self.sum_ee_scaled += float(((e / scale) ** 2).sum()) if np.all(scale > 0) else math.nan
        if self.qrange is not None:
            self._update_clipping(f, fmin, fmax, reference.shape)

    def _update_clipping(self, f: np.ndarray, fmin: float, fmax: float, shape: tuple) -> None:
        # A value within half a step of the grid's edge rounds to the edge like any other value;
        # beyond that it saturates: that is clipping.
        lo, hi = (np.asarray(v, dtype=np.float64) for v in self.qrange)
        half = 0.5 * np.asarray(self.scale, dtype=np.float64) if self.scale is not None else np.float64(0.0)
        if lo.ndim == 0 and half.ndim == 0:
            if fmin >= lo - half and fmax <= hi + half:
                return  # the common case, decided without touching the tensor again
            self.clipped += int(np.count_nonzero(f < lo - half) + np.count_nonzero(f > hi + half))
            worst = max(float(lo - fmin), float(fmax - hi), 0.0)
        else:
            lo_b = np.broadcast_to(lo, shape).ravel()
            hi_b = np.broadcast_to(hi, shape).ravel()
            half_b = np.broadcast_to(half, shape).ravel()
            below, above = lo_b - f, f - hi_b
            self.clipped += int(np.count_nonzero(below > half_b) + np.count_nonzero(above > half_b))
            worst = float(max(below.max(), above.max(), 0.0))
        if self.scale is not None and worst > 0:
            worst = worst / float(np.max(self.scale))
        self.overshoot = max(self.overshoot, worst)

    def result(self) -> ErrorStats:
        n = max(self.n, 1)
        mean = self.sum_e / n
        mse = self.sum_ee / n
        var = max(mse - mean * mean, 0.0)
        stats = ErrorStats(
            num_elements=self.n,
            mean_error=mean,
            stddev=math.sqrt(var),
            max_abs_error=self.max_abs,
            mean_abs_error=self.sum_abs / n,
            mean_squared_error=mse,
            rmse=math.sqrt(mse),
            cosine=cosine(self.sum_fq, self.sum_ff, self.sum_qq),
            sqnr=sqnr_db(self.sum_ff, self.sum_ee),
            float_min=self.fmin if self.n else None,
            float_max=self.fmax if self.n else None,
        )
        if self.scale is not None:
            stats.rmse_scale = math.sqrt(self.sum_ee_scaled / n)
        if self.sample_spreads:
            stats.spread_steps = float(np.median(self.sample_spreads))
        if self.qrange is not None:
            stats.clip_fraction = self.clipped / n
            stats.max_overshoot = self.overshoot
        return stats


@dataclass
class DistributionStats:
    """The shape of a float tensor's values, and how its channels compare."""

    skewness: float | None = None
    kurtosis: float | None = None  # excess kurtosis: 0 for a normal distribution, large for heavy tails
    bimodality: float | None = None  # (skew^2 + 1) / (excess kurtosis + 3); above 5/9 suggests two modes
    channel_axis: int | None = None
    channels: int | None = None
    channel_range_ratio: float | None = None  # widest channel range / median channel range
    worst_channel: int | None = None


class DistributionAccumulator:
    """Moments of a float tensor's values and per-channel min/max, over samples.

    Moments are accumulated around a shift (the first sample's mean) so that
    the third and fourth powers do not cancel catastrophically.
    """

    def __init__(self, channel_axis: int | None = None):
        self.axis = channel_axis
        self.shift: float | None = None
        self.n = 0
        self.s1 = self.s2 = self.s3 = self.s4 = 0.0
        self.cmin: np.ndarray | None = None
        self.cmax: np.ndarray | None = None

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        x = np.asarray(values, dtype=np.float64)
        if self.shift is None:
            self.shift = float(x.mean())
        d = x.ravel() - self.shift
        d2 = d * d
        self.n += d.size
        self.s1 += float(d.sum())
        self.s2 += float(d2.sum())
        self.s3 += float((d2 * d).sum())
        self.s4 += float(d2 @ d2)
        if self.axis is not None and x.ndim > self.axis:
            other = tuple(i for i in range(x.ndim) if i != self.axis)
            cmin, cmax = x.min(axis=other), x.max(axis=other)
            self.cmin = cmin if self.cmin is None else np.minimum(self.cmin, cmin)
            self.cmax = cmax if self.cmax is None else np.maximum(self.cmax, cmax)

    def result(self) -> DistributionStats:
        out = DistributionStats()
        if self.n >= 4:
            n = self.n
            mean = self.s1 / n
            m2 = self.s2 / n - mean**2
            m3 = self.s3 / n - 3 * mean * self.s2 / n + 2 * mean**3
            m4 = self.s4 / n - 4 * mean * self.s3 / n + 6 * mean**2 * self.s2 / n - 3 * mean**4
            if m2 > 1e-12 * max(1.0, abs(self.shift or 0.0)) ** 2:
                out.skewness = m3 / m2**1.5
                out.kurtosis = m4 / m2**2 - 3.0
                out.bimodality = (out.skewness**2 + 1.0) / (out.kurtosis + 3.0)
        if self.cmin is not None and self.cmin.size > 1:
            widths = self.cmax - self.cmin
            # Constant channels (dead ReLUs, saturated sigmoids) lose nothing to a shared scale: the median is
            # taken over the channels that vary, so a tensor with mostly dead channels is not an "outlier".
            live = widths[widths > widths.max() * 1e-6] if widths.max() > 0 else widths[:0]
            median = float(np.median(live)) if live.size else 0.0
            out.channel_axis, out.channels = self.axis, int(widths.size)
            out.worst_channel = int(widths.argmax())
            out.channel_range_ratio = float(widths.max() / median) if median > 0 else 1.0
        return out
