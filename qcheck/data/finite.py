"""NaN and Inf made by the float model itself, found and named before anything is quantized.

Calibration records each tensor's range; a non-finite range means the float
model produced NaN or Inf on some calibration sample. That cannot be
quantized and would poison every statistic, so the run stops with the tensor,
the node that made it and the first sample it happens on.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx

from qcheck.data.readers import DataSet
from qcheck.errors import DataError, Problem
from qcheck.model.graph import GraphIndex


def non_finite_tensors(ranges: dict[str, tuple[float, float]]) -> list[str]:
    return [name for name, (lo, hi) in ranges.items() if not (math.isfinite(lo) and math.isfinite(hi))]


def describe_non_finite(a: np.ndarray) -> str:
    parts = []
    for what, mask in (("NaN", np.isnan(a)), ("+Inf", np.isposinf(a)), ("-Inf", np.isneginf(a))):
        n = int(mask.sum())
        if n:
            parts.append(f"{n} {what}")
    return " and ".join(parts) + f" value{'s' if a.size != 1 else ''} (of {a.size})"


def check_ranges_finite(float_path: Path, ranges: dict[str, tuple[float, float]], data: DataSet) -> None:
    """Raise a DataError naming the first tensor (in graph order), node and sample with NaN/Inf."""
    bad = non_finite_tensors(ranges)
    if not bad:
        return
    from qcheck.model.runtime import make_session, with_outputs

    model = onnx.load(str(float_path))
    index = GraphIndex(model)
    producer = index.producer
    bad.sort(key=lambda t: index.order.get(t, -1))
    graph_outputs = set(index.output_names)
    session = make_session(with_outputs(model, bad), "float model")
    names = [o.name for o in session.get_outputs()]
    for i in range(len(data)):
        values = dict(zip(names, session.run(None, data[i])))
        for t in bad:
            a = values.get(t)
            if a is None or np.isfinite(a).all():
                continue
            node = producer.get(t)
            made_by = f" (made by {node.op_type} node '{node.name}')" if node is not None else ""
            what = "output" if t in graph_outputs else "tensor"
            raise DataError(Problem(
                f"sample {data.samples[i].label}: the float model's {what} '{t}'{made_by} contains "
                f"{describe_non_finite(a)}, before any quantization",
                file=str(data.source),
                hint="the float model is numerically broken on this input (e.g. Log or Div of 0); fix the model "
                     "or drop the sample; NaN/Inf cannot be quantized"))
    raise DataError(Problem(f"calibration produced non-finite ranges for {', '.join(bad[:5])}", file=str(data.source),
                            hint="the float model produces NaN or Inf on the calibration data"))
