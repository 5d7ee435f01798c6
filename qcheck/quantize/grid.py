"""The integer grid of a quantized type: its limits, and ONNX's QuantizeLinear and DequantizeLinear."""

from __future__ import annotations

import numpy as np


def quant_steps(dtype: str, symmetric_restricted: bool = False) -> int:
    """Number of steps between qmin and qmax for a quantized type."""
    bits = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "int4": 4, "uint4": 4}[dtype]
    steps = 2**bits - 1
    return steps - 1 if symmetric_restricted else steps


def qlimits(dtype: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def quantize(x: np.ndarray, scale: float | np.ndarray, zero_point: int | np.ndarray, dtype: str) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_to_even(x / scale) + zero_point)."""
    lo, hi = qlimits(dtype)
    q = np.rint(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, lo, hi).astype(dtype)


def dequantize(q: np.ndarray, scale: float | np.ndarray, zero_point: int | np.ndarray) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero_point) * scale, in float32 as ONNX Runtime computes it."""
    if q.dtype.itemsize <= 2 and q.ndim > 0:  # q - zero_point is exact in float32: two passes instead of four
        out = np.subtract(q, np.asarray(zero_point, dtype=np.int32), dtype=np.float32)
        scale32 = np.asarray(scale, dtype=np.float32)
        if np.broadcast_shapes(out.shape, scale32.shape) == out.shape:
            return np.multiply(out, scale32, out=out)
        return out * scale32
    steps = q.astype(np.int32) - np.asarray(zero_point, dtype=np.int32)
    # asarray: a scalar tensor (0-d) must stay an array, or ORT refuses it as a feed
    return np.asarray(steps.astype(np.float32) * np.asarray(scale, dtype=np.float32))
