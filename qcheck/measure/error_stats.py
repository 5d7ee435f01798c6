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


def cosine_from_error(sum_ff: float, sum_qq: float, sum_ee: float) -> float:
    """The same cosine from |f|^2, |q|^2 and |f - q|^2 (since 2<f, q> = |f|^2 + |q|^2 - |f - q|^2).

    Written as 1 - (|f - q|^2 - (|f| - |q|)^2) / (2 |f| |q|): since ||f| - |q|| <= |f - q|, a relative
    error d in the norms moves 1 - cosine by about d * |f| / |f - q| of itself, where <f, q> / (|f| |q|)
    from the same sums moves it by d * |f|^2 / |f - q|^2: float32 sums resolve 1 - cosine ~ 1e-6."""
    if sum_ff == 0.0 and sum_qq == 0.0:
        return 1.0
    if sum_ff == 0.0 or sum_qq == 0.0:
        return 0.0
    nf, nq = math.sqrt(sum_ff), math.sqrt(sum_qq)
    return float(min(1.0, max(-1.0, 1.0 - (sum_ee - (nf - nq) ** 2) / (2.0 * nf * nq))))


def working_pair(reference: np.ndarray, test: np.ndarray, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both tensors flat, in the precision the sums are taken in: float64 when either is float64 or `exact`;
    otherwise float32 (what ONNX Runtime returns), whose SIMD pairwise sums are ~20x faster than casting to
    float64 and accurate to ~1e-6 relative (error grows with log n)."""
    f, q = np.asarray(reference), np.asarray(test)
    dtype = np.float64 if exact or f.dtype == np.float64 or q.dtype == np.float64 else np.float32
    return f.astype(dtype, copy=False).ravel(), q.astype(dtype, copy=False).ravel()


@dataclass
class SampleSums:
    """One sample's sums over a flat pair, e = f - q (see `error_sums`)."""

    n: int
    sum_e: float
    sum_abs: float
    max_abs: float
    sum_ee: float
    centered: float  # sum (e - mean e)^2: the error's spread, kept apart (see `error_sums`)
    sum_ff: float
    sum_qq: float
    fmin: float = math.nan
    fmax: float = math.nan


FLOAT32_POWERS = 1e7  # beyond this distance from the shift, fourth powers near float32's limit: float64
DOT_CHUNK = 1 << 16  # BLAS dot products of float32 drift beyond ~1e-7 relative past this many elements


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """<a, b> of two flat arrays: BLAS dot products (one read, no temporary) over chunks, summed in float64.
    A float32 product past float32's range (values beyond ~1.8e19, as a diverging activation reaches) is taken
    again in float64, so a sum of squares is never inf while every value is finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        if a.size <= DOT_CHUNK:
            value = float(np.dot(a, b))
        else:
            value = math.fsum(float(np.dot(a[i:i + DOT_CHUNK], b[i:i + DOT_CHUNK]))
                              for i in range(0, a.size, DOT_CHUNK))
    if math.isfinite(value) or a.dtype == np.float64 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return value
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))


def merged_spread(n_a: int, sum_a: float, m2_a: float, n_b: int, sum_b: float, m2_b: float) -> float:
    """The sum of squared deviations from the mean of two parts joined, from each part's count, sum and own
    such sum (Chan et al.'s pairwise update: no cancellation)."""
    if not n_a:
        return m2_b
    if not n_b:
        return m2_a
    delta = sum_b / n_b - sum_a / n_a
    return m2_a + m2_b + delta * delta * n_a * n_b / (n_a + n_b)


def error_sums(f: np.ndarray, q: np.ndarray, extent: bool = True) -> SampleSums:
    """The sums every statistic of `ErrorStats` is built from, over the flat pair (see `working_pair`), in the
    tensors' own precision: one difference, one absolute value, and otherwise reads (sums, chunked dot
    products, min/max); no float64 copy. `extent`: also the float tensor's min and max. Sums that overflow
    float32 are taken again in float64."""
    with np.errstate(over="ignore", invalid="ignore"):  # float32 overflow is caught below: float64 then
        sums = _sums(f, q)
    if f.dtype != np.float64 and not all(math.isfinite(v) for v in (sums.sum_e, sums.sum_ee, sums.sum_abs,
                                                                      sums.sum_ff, sums.sum_qq)):
        return error_sums(f.astype(np.float64), q.astype(np.float64), extent)
    if extent:
        sums.fmin, sums.fmax = float(f.min()), float(f.max())
    return sums


def _sums(f: np.ndarray, q: np.ndarray) -> SampleSums:
    e = f - q
    n = e.size
    sum_e = float(e.sum())
    sum_ee = dot(e, e)
    mean = sum_e / n
    if mean * mean <= 0.5 * sum_ee / n:
        centered = max(sum_ee - sum_e * mean, 0.0)  # the variance is at least the squared mean: no cancellation
    else:
        # an error that is mostly a constant offset: mse - mean^2 would lose its spread, so it is summed
        # around a shift c near the mean (and moved to the exact mean)
        c = e.dtype.type(mean)
        t = e - c
        centered = max(dot(t, t) - n * (mean - float(c)) ** 2, 0.0)
    t = np.abs(e, out=e)
    return SampleSums(n, sum_e, float(t.sum()), float(t.max()), sum_ee, centered, dot(f, f), dot(q, q))


class SquaredErrorAccumulator:
    """Only the mean squared error of a pair over samples (what `weight_error_share` reads)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_ee = 0.0

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        f, q = working_pair(reference, test)
        e = f - q
        self.n += e.size
        self.sum_ee += dot(e, e)

    def add(self, n: int, sum_ee: float) -> None:
        """One sample's count and square sum taken elsewhere (qcheck.measure.fused)."""
        self.n += n
        self.sum_ee += sum_ee

    def mean_squared_error(self) -> float:
        return self.sum_ee / max(self.n, 1)


class ErrorAccumulator:
    """Accumulates error sums of one tensor over samples.

    `scale` may be a scalar or an array that broadcasts against the tensor
    (per-channel weights); `rmse_scale` then measures every element's error in
    units of its own channel's scale. `qrange` (lowest, highest representable
    real value, scalars or arrays) enables the clipping statistics. `exact`
    takes the sums in float64 whatever the tensors' type (the model outputs,
    where requirements are judged, are few). `extent=False` skips the float
    tensor's min, max and per-sample spread (a per-layer twin's, which no
    statistic reads: they come from the true float model).
    """

    def __init__(self, scale: float | np.ndarray | None = None, qrange: tuple | None = None, exact: bool = False,
                 extent: bool = True):
        self.scale = scale
        self.qrange = qrange
        self.exact = exact
        self.extent = extent or qrange is not None
        self.n = 0
        self.sum_e = 0.0
        self.sum_abs = 0.0
        self.sum_ee = 0.0
        self.sum_ee_scaled = 0.0
        self.m2 = 0.0  # sum of (e - mean e)^2 over all samples
        self.max_abs = 0.0
        self.sum_ff = 0.0
        self.sum_qq = 0.0
        self.clipped = 0
        self.overshoot = 0.0
        self.fmin = math.inf
        self.fmax = -math.inf
        self.sample_spreads: list[float] = []
        self.last_sums = (0.0, 0.0, 0.0)  # this sample's (sum f^2, sum q^2, sum e^2): per-sample cosine
        self.last: SampleSums | None = None  # this sample's sums (None for an empty tensor)

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        if reference.shape != test.shape:
            raise ValueError(f"shape mismatch: float {reference.shape} vs quantized {test.shape}")
        if reference.size == 0:
            self.last_sums, self.last = (0.0, 0.0, 0.0), None
            return
        f, q = working_pair(reference, test, self.exact)
        s = error_sums(f, q, extent=self.extent)
        self.add_sums(s)
        if self.scale is not None and np.ndim(self.scale) != 0:
            scale = np.broadcast_to(np.asarray(self.scale, dtype=np.float64), reference.shape).ravel()
            with np.errstate(divide="ignore", invalid="ignore"):
                self.sum_ee_scaled += float((((f - q) / scale) ** 2).sum()) if np.all(scale > 0) else math.nan
        if self.qrange is not None:
            self._update_clipping(f, s.fmin, s.fmax, reference.shape)

    @property
    def fused(self) -> bool:
        """Whether one sample's sums may be taken elsewhere (`add_sums`, qcheck.measure.fused): a scalar scale
        and range, so nothing but the sums and the float tensor's extent is read."""
        return (not self.exact and (self.scale is None or np.ndim(self.scale) == 0)
                and (self.qrange is None or all(np.ndim(v) == 0 for v in self.qrange)))

    def add_sums(self, s: SampleSums, flat_float: np.ndarray | None = None) -> None:
        """Adds one sample's sums. Called alone (`fused`), `flat_float` is the sample's float tensor, read only
        when it reaches beyond the grid (clipping is counted then)."""
        self.last_sums, self.last = (0.0, 0.0, 0.0), None
        if s.n == 0:
            return
        self.last = s
        # the spread of the error around its mean, merged over samples (Chan et al.'s pairwise update)
        self.m2 = merged_spread(self.n, self.sum_e, self.m2, s.n, s.sum_e, s.centered)
        self.n += s.n
        self.sum_e += s.sum_e
        self.sum_abs += s.sum_abs
        self.sum_ee += s.sum_ee
        self.max_abs = max(self.max_abs, s.max_abs)
        self.last_sums = (s.sum_ff, s.sum_qq, s.sum_ee)
        self.sum_ff += s.sum_ff
        self.sum_qq += s.sum_qq
        if self.extent:
            self.fmin = min(self.fmin, s.fmin)
            self.fmax = max(self.fmax, s.fmax)
        if self.scale is not None and np.ndim(self.scale) == 0:
            if float(self.scale) > 0:
                if self.extent:
                    self.sample_spreads.append((s.fmax - s.fmin) / float(self.scale))
                self.sum_ee_scaled += s.sum_ee / float(self.scale) ** 2
            else:
                self.sum_ee_scaled = math.nan
        if flat_float is not None and self.qrange is not None:
            self._update_clipping(flat_float, s.fmin, s.fmax, flat_float.shape)

    def last_cosine(self) -> float:
        """The cosine of the last sample alone."""
        return cosine_from_error(*self.last_sums)

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
        var = max(self.m2 / n, 0.0)
        stats = ErrorStats(
            num_elements=self.n,
            mean_error=mean,
            stddev=math.sqrt(var),
            max_abs_error=self.max_abs,
            mean_abs_error=self.sum_abs / n,
            mean_squared_error=mse,
            rmse=math.sqrt(mse),
            cosine=cosine_from_error(self.sum_ff, self.sum_qq, self.sum_ee),
            sqnr=sqnr_db(self.sum_ff, self.sum_ee),
            float_min=self.fmin if self.n and self.extent else None,
            float_max=self.fmax if self.n and self.extent else None,
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
        x = np.asarray(values)
        x = x.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)
        shift = self.shift_for(x)
        d = x.ravel() - x.dtype.type(shift)
        if x.dtype != np.float64 and float(np.abs(d).max()) > FLOAT32_POWERS:
            d = x.ravel().astype(np.float64) - shift
        d2 = d * d
        self.add_moments(d.size, float(d.sum()), float(d2.sum()), dot(d2, d), dot(d2, d2))
        if self.axis is not None and x.ndim > self.axis:
            self.add_extremes(*channel_extremes(x, self.axis))

    def shift_for(self, x: np.ndarray) -> float:
        """The shift the moments are taken around: the first sample's mean."""
        if self.shift is None:
            self.shift = float(x.mean(dtype=np.float64))
        return self.shift

    def add_moments(self, n: int, s1: float, s2: float, s3: float, s4: float) -> None:
        """One sample's sums of d, d^2, d^3, d^4 with d = x - shift (qcheck.measure.fused takes them elsewhere)."""
        self.n += n
        self.s1 += s1
        self.s2 += s2
        self.s3 += s3
        self.s4 += s4

    def add_extremes(self, cmin: np.ndarray, cmax: np.ndarray) -> None:
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


def channel_extremes(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel min and max along `axis`, exact (taken in the tensor's type, returned as float64)."""
    if axis < x.ndim - 1 and x.flags.c_contiguous and int(np.prod(x.shape[:axis])) == 1:
        x = x.reshape(x.shape[axis], -1)  # batch of one, NCHW: one contiguous row per channel, reduced fast
        axes: int | tuple = 1
    else:
        axes = tuple(i for i in range(x.ndim) if i != axis)
    return x.min(axis=axes).astype(np.float64), x.max(axis=axes).astype(np.float64)
