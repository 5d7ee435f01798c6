"""Confirm the emulation's numbers on real ONNX Runtime quantized models.

The switchable model emulates quantization in float arithmetic; ORT's integer
kernels (QLinearConv, fused requantization) round intermediate results
differently. For each configuration the analyses recommend -- everything
quantized, and the top-k sensitive nodes left float -- a real QDQ model is
built from the same ranges with `quantize.build_quantized`, run against the
float model, and its metric set beside the emulated one.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import onnx

from qcheck.data import DataSet
from qcheck.metrics import OutputComparison, apply_slice, parse_slice
from qcheck.policy import MetricSpec
from qcheck.quantize import Ranges, Recipe, build_quantized
from qcheck.runtime import make_session
from qcheck.sensitivity import summarize

DEFAULT_TOLERANCE = 0.01  # |emulated - real| of the ranking metric beyond which the report flags the difference


def confirm(float_path: Path, float_model: onnx.ModelProto, ranges: Ranges, recipe: Recipe, data: DataSet,
            samples: list[int], plans: list[tuple[str, list[str], dict]], metric: str,
            metrics: dict[str, MetricSpec], tolerance: float = DEFAULT_TOLERANCE) -> list[dict]:
    """`plans`: (label, nodes to keep float, the emulated result). Returns one row per plan."""
    f_sess = make_session(float_model, "float model")
    outputs = [o.name for o in f_sess.get_outputs()]
    references = [dict(zip(outputs, f_sess.run(None, data[i]))) for i in samples]
    slices = {name: parse_slice(spec.slice) if spec.slice else () for name, spec in metrics.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="qcheck-confirm-") as tmp:
        for j, (label, keep_float, emulated) in enumerate(plans):
            variant = replace(recipe, exclude_nodes=sorted(set(recipe.exclude_nodes) | set(keep_float)))
            path = build_quantized(float_path, ranges, variant, Path(tmp) / f"confirm_{j}.onnx")
            q_sess = make_session(path, f"quantized model ({label})")
            cmp = {o: OutputComparison(o) for o in outputs}
            user = {m: OutputComparison(m) for m in metrics}
            for ref, i in zip(references, samples):
                got = dict(zip(outputs, q_sess.run(None, data[i])))
                for o in outputs:
                    cmp[o].update(ref[o], got[o])
                for m, spec in metrics.items():
                    user[m].update(apply_slice(ref[spec.output], slices[m], m), apply_slice(got[spec.output], slices[m], m))
            real = summarize(cmp, user, metrics)
            e, r = emulated.get(metric), real.get(metric)
            diff = None if e is None or r is None else r - e
            rows.append({"label": label, "keep_float": keep_float, "metric": metric, "emulated": e, "real": r,
                         "difference": diff, "agrees": diff is None or abs(diff) <= tolerance * max(1.0, abs(e or 0.0)),
                         "real_all": real, "size_bytes": path.stat().st_size})
    return rows
