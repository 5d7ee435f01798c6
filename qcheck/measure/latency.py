"""Latency of a model on this machine: the median of repeated runs after a warmup.

A figure for comparing schemes on the same machine in the same run, not a
benchmark of the target: other processes share the CPU, and ONNX Runtime's
CPU kernels are not the target's.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from qcheck.model.runtime import make_session

RUNS = 20
WARMUP = 3


def measure_latency(model: Path, feed: dict[str, np.ndarray], runs: int = RUNS, warmup: int = WARMUP,
                    what: str = "model") -> dict:
    """Median, min and max wall time of `runs` session runs on `feed`, in milliseconds."""
    sess = make_session(model, what)
    types = {i.name: i.type for i in sess.get_inputs()}
    feed = {k: v.astype(np.float16) if types.get(k) == "tensor(float16)" else v for k, v in feed.items()}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs,
            "warmup": warmup}


def quantize_feed(feed: dict[str, np.ndarray], io_params: dict[str, dict]) -> dict[str, np.ndarray]:
    """Float inputs -> the integer inputs of an int8-only model (ORT's QuantizeLinear: round half to even, saturate)."""
    out = dict(feed)
    for name, p in io_params.items():
        if p["role"] != "input" or name not in feed:
            continue
        info = np.iinfo(p["dtype"])
        q = np.rint(feed[name].astype(np.float32) / np.float32(p["scale"])) + p["zero_point"]
        out[name] = np.clip(q, info.min, info.max).astype(p["dtype"])
    return out
