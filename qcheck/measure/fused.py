"""One sample of one quantized activation, every statistic's sums taken in one chunked pass.

The accumulators of error_stats read their arrays one statistic at a time: a difference, its sum, its
square sum, its absolute value, ... for the whole-model pair, again for the per-layer pair, again for the
distribution's moments and the weights' share: some 35 passes over arrays larger than the L2 cache, per
tensor and sample. Here the arrays are walked in chunks of CHUNK elements that stay in the cache, and every
sum reads each chunk while it is there; the quantized tensor's squares are read once for both pairs, and
the float tensor's extent comes from its channel extremes (which the distribution reads anyway). Chunk sums
are added in float64 and the error's spread is merged over chunks with Chan et al.'s formula, so the numbers
are those of the separate passes to float32 rounding (tests/measure/test_fused.py compares them).

With numba installed, `reduce_sample` hands the arrays to the compiled kernel (measure/kernel.py: every sum in
one pass, no chunk loop in Python); the numpy chunks below are what runs without it.

Only float32 tensors with a scalar scale and range take this path (every activation ORT quantizes per
tensor); the rest, and any sample with a non-finite sum, are left to the accumulators' own `update`.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from qcheck.measure import kernel
from qcheck.measure.error_stats import (
    FLOAT32_POWERS,
    DistributionAccumulator,
    ErrorAccumulator,
    SampleSums,
    SquaredErrorAccumulator,
    channel_extremes,
    merged_spread,
)


@dataclass
class Quantized:
    """The quantized run's tensor: dequantized `values`, or integer `values` on a scalar grid, dequantized one
    chunk at a time exactly as quantize.grid.dequantize does it (the steps are exact in float32)."""

    values: np.ndarray
    scale: float | None = None
    zero_point: int = 0

    def chunk(self, flat: np.ndarray, i: int, j: int, buf: np.ndarray) -> np.ndarray:
        if self.scale is None:
            return flat[i:j]
        out = np.subtract(flat[i:j], np.int32(self.zero_point), dtype=np.float32, out=buf[:j - i])
        return np.multiply(out, np.float32(self.scale), out=out)


CHUNK = 1 << 15  # 128 KB of float32 per array: the four arrays and three buffers stay in a 2 MB L2 cache
_scratch = threading.local()  # each reducing thread's buffers


def _buffers() -> tuple[np.ndarray, ...]:
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None or bufs[0].size != CHUNK:
        bufs = _scratch.bufs = tuple(np.empty(CHUNK, np.float32) for _ in range(4))
    return bufs


class _PairSums:
    """Running sums of e = a - q over chunks, as error_stats.error_sums takes them over a whole tensor."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_e = self.sum_abs = self.max_abs = self.sum_ee = self.m2 = self.sum_aa = 0.0

    def add_chunk(self, a: np.ndarray, q: np.ndarray, e: np.ndarray, t: np.ndarray) -> None:
        np.subtract(a, q, out=e)
        n = e.size
        sum_e = float(e.sum())
        sum_ee = float(np.dot(e, e))
        mean = sum_e / n
        if mean * mean <= 0.5 * sum_ee / n:
            centered = max(sum_ee - sum_e * mean, 0.0)
        else:  # mostly an offset: summed around a float32 shift near the mean (see error_sums)
            c = np.float32(mean)
            np.subtract(e, c, out=t)
            centered = max(float(np.dot(t, t)) - n * (mean - float(c)) ** 2, 0.0)
        np.abs(e, out=e)
        self.m2 = merged_spread(self.n, self.sum_e, self.m2, n, sum_e, centered)
        self.n += n
        self.sum_e += sum_e
        self.sum_ee += sum_ee
        self.sum_abs += float(e.sum())
        self.max_abs = max(self.max_abs, float(e.max()))
        self.sum_aa += float(np.dot(a, a))

    def result(self, sum_qq: float, fmin: float = math.nan, fmax: float = math.nan) -> SampleSums:
        return SampleSums(self.n, self.sum_e, self.sum_abs, self.max_abs, self.sum_ee, self.m2, self.sum_aa, sum_qq,
                          fmin, fmax)

    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.sum_e, self.sum_abs, self.sum_ee, self.m2, self.sum_aa))


def _flat32(a: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return None
    return a.ravel() if a.dtype == np.float32 else None


def reduce_sample(f: np.ndarray, quant: Quantized, local: np.ndarray | None, weight_only: np.ndarray | None,
                  whole: ErrorAccumulator, local_acc: ErrorAccumulator | None, dist: DistributionAccumulator | None,
                  weight_err: SquaredErrorAccumulator | None, rest_err: SquaredErrorAccumulator | None) -> bool:
    """Adds one sample to the tensor's accumulators (those given); False when this path does not apply, with
    nothing added (the caller updates them one by one). `f` the float model's tensor, `quant` the quantized run's
    (see `Quantized`), `local` the per-layer twin's, `weight_only` the twin's with dequantized weights."""
    q = quant.values
    f1, l1, w1 = _flat32(f), _flat32(local), _flat32(weight_only)
    q1 = q.ravel() if quant.scale is not None else _flat32(q)
    if (f1 is None or q1 is None or f1.size == 0 or f.shape != q.shape or not whole.fused
            or (local is not None and (l1 is None or local.shape != f.shape or local_acc is None or not local_acc.fused))
            or (weight_only is not None and (w1 is None or weight_only.shape != f.shape or local is None))):
        return False
    if kernel.available() and (quant.scale is not None or q.dtype == np.float32):
        return _compiled(f, quant, local, weight_only, whole, local_acc, dist, weight_err, rest_err)
    extremes = None
    if dist is not None and dist.axis is not None and f.ndim > dist.axis:
        extremes = channel_extremes(f, dist.axis)
        fmin, fmax = float(extremes[0].min()), float(extremes[1].max())
    else:
        fmin, fmax = float(f1.min()), float(f1.max())
    if not (math.isfinite(fmin) and math.isfinite(fmax)):
        return False
    shift = dist.shift_for(f) if dist is not None else 0.0
    moments = dist is not None and max(abs(fmin - shift), abs(fmax - shift)) <= FLOAT32_POWERS
    with np.errstate(over="ignore", invalid="ignore"):  # float32 squares past its range: the accumulators' path
        sums = _chunked(f1, quant, q1, l1, w1 if weight_err is not None else None,
                        np.float32(shift) if moments else None)
    if sums is None:
        return False
    whole_sums, local_sums, mom, weight_ee, rest_ee, sum_qq = sums
    whole.add_sums(whole_sums.result(sum_qq, fmin, fmax), flat_float=f1)
    if local_sums is not None:
        local_acc.add_sums(local_sums.result(sum_qq))
    if weight_ee is not None and weight_err is not None and rest_err is not None:
        weight_err.add(f1.size, weight_ee)
        rest_err.add(f1.size, rest_ee)
    if dist is not None:
        if mom is None:
            dist.update(f)  # far from the shift: float64 moments, as the accumulator takes them
        else:
            dist.add_moments(f1.size, *mom)
            if extremes is not None:
                dist.add_extremes(*extremes)
    return True


def _compiled(f: np.ndarray, quant: Quantized, local: np.ndarray | None, weight_only: np.ndarray | None,
              whole: ErrorAccumulator, local_acc: ErrorAccumulator | None, dist: DistributionAccumulator | None,
              weight_err: SquaredErrorAccumulator | None, rest_err: SquaredErrorAccumulator | None) -> bool:
    """`reduce_sample` by the compiled one-pass kernel (measure/kernel.py); False, with nothing added, when a sum is
    not finite."""
    axis = dist.axis if dist is not None and dist.axis is not None and f.ndim > dist.axis else None
    shift = None
    if dist is not None:  # the accumulator's shift (the first sample's mean), kept only once a sample is added
        shift = dist.shift if dist.shift is not None else float(f.mean(dtype=np.float64))
    with_w = weight_only is not None and weight_err is not None and rest_err is not None
    scale, zp = (quant.scale, quant.zero_point) if quant.scale is not None else (1.0, 0)
    out, cmin, cmax = kernel.sums(f, quant.values, scale, zp, local, weight_only if with_w else None, shift, axis)
    fmin, fmax = float(cmin.min()), float(cmax.max())
    if not (np.all(np.isfinite(out)) and math.isfinite(fmin) and math.isfinite(fmax)):
        return False
    n = f.size

    def pair(at: int, sum_qq: float, lo: float = math.nan, hi: float = math.nan) -> SampleSums:
        sum_e, sum_abs, max_abs, sum_ee, sum_dd, sum_d, sum_aa = (float(v) for v in out[at:at + kernel.N_WHOLE])
        return SampleSums(n, sum_e, sum_abs, max_abs, sum_ee, max(sum_dd - sum_d * sum_d / n, 0.0), sum_aa, sum_qq,
                          lo, hi)

    sum_qq = float(out[kernel.SUM_QQ])
    whole.add_sums(pair(kernel.WHOLE, sum_qq, fmin, fmax), flat_float=f.ravel())
    if local is not None:
        local_acc.add_sums(pair(kernel.LOCAL, sum_qq))
    if with_w:
        weight_err.add(n, float(out[kernel.WEIGHT_EE]))
        rest_err.add(n, float(out[kernel.REST_EE]))
    if dist is not None:
        dist.shift = shift
        dist.add_moments(n, *(float(v) for v in out[kernel.MOMENTS:kernel.MOMENTS + 4]))
        if axis is not None:
            dist.add_extremes(cmin, cmax)
    return True


def _chunked(f1: np.ndarray, quant: Quantized, q1: np.ndarray, l1: np.ndarray | None, w1: np.ndarray | None,
             shift: np.float32 | None) -> tuple | None:
    """The chunk loop: (whole sums, local sums, moments, weights' and rest's square sums, sum q^2), or None
    when a sum is not finite (float32 overflow: the accumulators' own path takes float64 then)."""
    e, t, d, qbuf = _buffers()
    whole, local = _PairSums(), _PairSums() if l1 is not None else None
    sum_qq = 0.0
    mom = [0.0, 0.0, 0.0, 0.0] if shift is not None else None
    weight_ee = rest_ee = 0.0 if w1 is not None else None
    n = f1.size
    for i in range(0, n, CHUNK):
        j = min(i + CHUNK, n)
        m = j - i
        fc, qc, ec, tc = f1[i:j], quant.chunk(q1, i, j, qbuf), e[:m], t[:m]
        whole.add_chunk(fc, qc, ec, tc)
        sum_qq += float(np.dot(qc, qc))
        if local is not None:
            lc = l1[i:j]
            local.add_chunk(lc, qc, ec, tc)
            if w1 is not None:
                wc = w1[i:j]
                np.subtract(lc, wc, out=ec)
                weight_ee += float(np.dot(ec, ec))
                np.subtract(wc, qc, out=ec)
                rest_ee += float(np.dot(ec, ec))
        if mom is not None:
            dc = d[:m]
            np.subtract(fc, shift, out=dc)
            np.multiply(dc, dc, out=tc)
            mom[0] += float(dc.sum())
            mom[1] += float(tc.sum())
            mom[2] += float(np.dot(tc, dc))
            mom[3] += float(np.dot(tc, tc))
    extra = [sum_qq, *(mom or ()), *((weight_ee, rest_ee) if w1 is not None else ())]
    if not whole.finite() or (local is not None and not local.finite()) or not all(math.isfinite(v) for v in extra):
        return None
    return whole, local, mom, weight_ee, rest_ee, sum_qq
