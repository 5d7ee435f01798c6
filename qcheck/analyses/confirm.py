"""Confirm the emulation's numbers on real ONNX Runtime quantized models.

The switchable model emulates quantization in float arithmetic; ORT's integer
kernels (QLinearConv, fused requantization) round intermediate results
differently. For each configuration the analyses recommend -- everything
quantized, and the top-k sensitive nodes left float -- a real QDQ model is
built from the same ranges with `quantize.build_quantized`, run against the
float model, and its metric set beside the emulated one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnx

from qcheck.analyses.score import Score, sample_labels
from qcheck.data.readers import DataSet
from qcheck.model.runtime import make_session
from qcheck.policy.spec import MetricSpec
from qcheck.quantize.calibrate import Ranges, Recipe, build_quantized
from qcheck.scratch import temp_folder

DEFAULT_TOLERANCE = 0.01  # |emulated - real| of the ranking metric beyond which the report flags the difference


def confirm(float_path: Path, float_model: onnx.ModelProto, ranges: Ranges, recipe: Recipe, data: DataSet,
            samples: list[int], plans: list[tuple[str, list[str], dict]], metric: str,
            metrics: dict[str, MetricSpec], tolerance: float = DEFAULT_TOLERANCE,
            make_tasks: Callable[[], list] | None = None) -> list[dict]:
    """`plans`: (label, nodes to keep float, the emulated result); `make_tasks`: as for ConfigRunner.
    Returns one row per plan."""
    make_tasks = make_tasks or (list)
    f_sess = make_session(float_model, "float model")
    outputs = [o.name for o in f_sess.get_outputs()]
    references = [dict(zip(outputs, f_sess.run(None, data[i]))) for i in samples]
    labels = sample_labels(data, samples)
    rows = []
    with temp_folder("confirm") as tmp:
        for j, (label, keep_float, emulated) in enumerate(plans):
            variant = replace(recipe, exclude_nodes=sorted(set(recipe.exclude_nodes) | set(keep_float)))
            path = build_quantized(float_path, ranges, variant, Path(tmp) / f"confirm_{j}.onnx")
            q_sess = make_session(path, f"quantized model ({label})")
            score = Score(outputs, metrics, make_tasks())
            for ref, i, name in zip(references, samples, labels):
                score.update(ref, dict(zip(outputs, q_sess.run(None, data[i]))), name)
            real = score.result()
            e, r = emulated.get(metric), real.get(metric)
            diff = None if e is None or r is None else r - e
            rows.append({"label": label, "keep_float": keep_float, "metric": metric, "emulated": e, "real": r,
                         "difference": diff, "agrees": diff is None or abs(diff) <= tolerance * max(1.0, abs(e or 0.0)),
                         "real_all": real, "size_bytes": path.stat().st_size})
    return rows
