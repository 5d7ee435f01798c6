"""Every statistic's sums of one sample of one activation, compiled: each array read once.

measure/fused.py walks a tensor's arrays in cache-sized chunks, but each chunk still takes some 27 numpy
calls (a difference, its sum, its square sum, ...), one after the other. These kernels (compiled by numba,
cached on disk after the first run) read each element once and add it to every sum at once: `_whole` reads
the float tensor and the quantized integers (the whole-model error sums, the quantized tensor's square sum,
the float tensor's shifted moments and per-channel extremes); `_local` reads the per-layer twin's output,
the weights-only twin's and the integers again (one byte each) for the per-layer sums and the weights' share.

Sums are taken in float64 from float32 elements (the difference of two float32 values is exact in float64),
so the results are the accumulators' own to float32 rounding or better (tests/measure/test_fused.py runs every
test on both paths). The error's spread is summed around a shift (the mean error of the first elements), as
error_stats.error_sums does when the error is mostly an offset. `fastmath` lets the compiler reorder the sums
into vector lanes; maxima and minima are taken on the floats' bits as integers (which vectorize where float
maxima do not). A NaN or infinity in any array shows as a non-finite sum, and the caller then takes the
accumulators' own path.

numba is a dependency; should it fail to import, `available()` is False and fused.py's numpy chunks are used
(about 3x slower). Its cost: some 130 MB of resident memory once loaded (LLVM), whatever the data.
"""
from __future__ import annotations

import numpy as np

try:  # pragma: no branch
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; a platform without its wheel only runs slower
    numba = None

# indices into the kernel's result vector
N_WHOLE = 7  # sum_e, sum_abs, max_abs, sum_ee, sum (e - c)^2 around the shift, sum (e - c), sum_ff
WHOLE, LOCAL = 0, N_WHOLE
SUM_QQ = 2 * N_WHOLE
WEIGHT_EE, REST_EE = SUM_QQ + 1, SUM_QQ + 2
MOMENTS = SUM_QQ + 3  # four: sums of d, d^2, d^3, d^4 with d = f - shift
SIZE = MOMENTS + 4
SHIFT_SAMPLE = 4096  # elements whose mean error is the shift the spread is summed around


def available() -> bool:
    return numba is not None


def _bits(typingctx, x):  # pragma: no cover - compiled
    """A float32's bits as an int32: integer min/max reductions vectorize where float ones do not."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


def _ordered(b):  # pragma: no cover - compiled
    """float32 bits -> an int32 that orders as the floats do (and back: the map is its own inverse)."""
    return b ^ ((b >> 31) & 0x7FFFFFFF)


def _whole(f, q, s32, z32, ce, shift, out, cmin, cmax):  # pragma: no cover - compiled
    """The float tensor against the quantized run's: f (outer, channels, inner) float32, q the same shape, integers
    dequantized as (q - zero_point) * scale in float32 (a float32 q with scale 1 and zero point 0 reads as it is).
    Fills out[:N_WHOLE], out[SUM_QQ], the moments around `shift` and per-channel extremes (as ordered int32 bits)."""
    outer, channels, inner = f.shape
    s_e = s_abs = s_ee = s_dd = s_d = s_ff = s_qq = 0.0
    m1 = m2 = m3 = m4 = 0.0
    mx = np.int32(0)
    for c in range(channels):
        cmin[c] = 0x7FFFFFFF
        cmax[c] = -0x7FFFFFFF - 1
    for o in range(outer):
        for c in range(channels):
            lo = np.int32(0x7FFFFFFF)
            hi = np.int32(-0x7FFFFFFF - 1)
            for i in range(inner):
                f32 = f[o, c, i]
                fv = np.float64(f32)
                qv = np.float64((np.float32(q[o, c, i]) - z32) * s32)
                e = fv - qv
                s_e += e
                s_abs += abs(e)
                s_ee += e * e
                d = e - ce
                s_dd += d * d
                s_d += d
                s_ff += fv * fv
                s_qq += qv * qv
                mx = max(mx, bits(np.float32(abs(e))))
                dm = fv - shift
                d2 = dm * dm
                m1 += dm
                m2 += d2
                m3 += d2 * dm
                m4 += d2 * d2
                b = ordered(bits(f32))
                lo = min(lo, b)
                hi = max(hi, b)
            cmin[c] = min(cmin[c], lo)
            cmax[c] = max(cmax[c], hi)
    out[0], out[1], out[2], out[3], out[4], out[5], out[6] = s_e, s_abs, mx, s_ee, s_dd, s_d, s_ff
    out[SUM_QQ] = s_qq
    out[MOMENTS], out[MOMENTS + 1], out[MOMENTS + 2], out[MOMENTS + 3] = m1, m2, m3, m4


def _local(a, w, q, s32, z32, ce, out):  # pragma: no cover - compiled
    """The per-layer twin's output `a` (flat float32) against the quantized run's: out[LOCAL:LOCAL + N_WHOLE]; and,
    in the same read, the weights' part of the error (twin - weights-only twin `w`) and the rest (weights-only
    twin - quantized) as square sums (without a weights-only twin, `w` is `a` and the caller ignores them)."""
    s_e = s_abs = s_ee = s_dd = s_d = s_ff = 0.0
    wee = ree = 0.0
    mx = np.int32(0)
    for i in range(a.size):
        fv = np.float64(a[i])
        qv = np.float64((np.float32(q[i]) - z32) * s32)
        wv = np.float64(w[i])
        e = fv - qv
        s_e += e
        s_abs += abs(e)
        s_ee += e * e
        d = e - ce
        s_dd += d * d
        s_d += d
        s_ff += fv * fv
        mx = max(mx, bits(np.float32(abs(e))))
        x = fv - wv
        y = wv - qv
        wee += x * x
        ree += y * y
    out[7], out[8], out[9], out[10], out[11], out[12], out[13] = s_e, s_abs, mx, s_ee, s_dd, s_d, s_ff
    out[WEIGHT_EE], out[REST_EE] = wee, ree


def _mean_error(a, q, s32, z32):  # pragma: no cover - compiled
    """The mean error over the first SHIFT_SAMPLE elements: the shift the error's spread is summed around."""
    k = min(a.size, SHIFT_SAMPLE)
    s = 0.0
    for i in range(k):
        s += np.float64(a[i]) - np.float64((np.float32(q[i]) - z32) * s32)
    return s / max(k, 1)


if numba is not None:
    # reassociation lets the sums vectorize; no nnan/ninf: a NaN or infinity must still show in the sums
    _jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    bits = intrinsic(_bits)
    ordered = _jit(_ordered)
    _whole_c, _local_c, _mean_error_c = (_jit(fn) for fn in (_whole, _local, _mean_error))

def as_3d(a: np.ndarray, axis: int | None) -> np.ndarray:
    """A C-contiguous array viewed as (outer, channels, inner) around `axis` (None: one channel)."""
    if axis is None or a.ndim == 0:
        return a.reshape(1, 1, -1)
    outer = int(np.prod(a.shape[:axis], dtype=np.int64))
    return a.reshape(outer, a.shape[axis], -1)


def sums(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int, local: np.ndarray | None,
         weight_only: np.ndarray | None, shift: float | None, axis: int | None) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """The kernels on one sample's arrays (all of f's shape): the SIZE sums (max_abs as a float) and the per-channel
    min and max of `f` along `axis` (None: one channel, the whole tensor's). `shift`: the moments' (else 0)."""
    f, q = np.ascontiguousarray(f), np.ascontiguousarray(q)
    s32, z32 = np.float32(scale), np.float32(zero_point)
    f3, q3 = as_3d(f, axis), as_3d(q, axis)
    cmin, cmax = np.empty(f3.shape[1], np.int32), np.empty(f3.shape[1], np.int32)
    out = np.zeros(SIZE)
    f1, q1 = f.reshape(-1), q.reshape(-1)
    _whole_c(f3, q3, s32, z32, _mean_error_c(f1, q1, s32, z32), float(shift or 0.0), out, cmin, cmax)
    if local is not None:
        l1 = np.ascontiguousarray(local).reshape(-1)
        w1 = np.ascontiguousarray(weight_only).reshape(-1) if weight_only is not None else l1
        _local_c(l1, w1, q1, s32, z32, _mean_error_c(l1, q1, s32, z32), out)
        if weight_only is None:
            out[WEIGHT_EE] = out[REST_EE] = 0.0
    for at in (WHOLE + 2, LOCAL + 2):  # the largest |error|, kept as its float32 bits
        out[at] = float(np.int32(out[at]).view(np.float32))
    return out, _from_ordered(cmin), _from_ordered(cmax)


def _from_ordered(o: np.ndarray) -> np.ndarray:
    return (o ^ ((o >> 31) & np.int32(0x7FFFFFFF))).view(np.float32).astype(np.float64)
