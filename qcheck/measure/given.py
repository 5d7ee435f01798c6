"""Measuring a quantized model made elsewhere (`quantized:`), with its own scales and zero points.

The seam between `quantize.given` (which reads the model into a `QDQMap`
keyed by the float model's tensor names) and the measurement qcheck runs on
its own models: QDQ and QOperator models go through `per_tensor.measure`
unchanged (a QOperator model's per-layer twin is built from its equivalent QDQ
model, `GivenModel.qdq`, and fed the given model's own integer tensors), dynamic
models through `by_name.measure_by_name`.

Then the exported-range statistics (seed 003: a QAT export's ranges come from
training-time estimates that may not have converged): for every activation
with a fixed grid, the interval the grid covers (`range_min`, `range_max`) and
`range_over_data`, its width over the width the float tensor reaches on the
evaluation data. Far above 1: most of the grid's steps are never used (an
estimate that never converged); below 1: the data are clipped.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from qcheck.data.readers import DataSet
from qcheck.measure.by_name import measure_by_name
from qcheck.measure.layer_metrics import LayerMetrics
from qcheck.measure.per_tensor import Measurement, measure
from qcheck.policy.spec import MetricSpec
from qcheck.quantize.given import GivenModel

GIVEN_RANGE_STATISTICS = ("range_min", "range_max", "range_over_data")


def measure_given(given: GivenModel, qmodel: onnx.ModelProto, float_model: onnx.ModelProto, data: DataSet,
                  metrics: dict[str, MetricSpec], generic_metrics: dict[str, MetricSpec], modes: list[str],
                  include_weights: bool = True, progress: Callable[[int, int], None] | None = None,
                  tasks: list | None = None, need: set[str] | None = None,
                  layer_metrics: LayerMetrics | None = None, memory_mb: int | None = None) -> Measurement:
    """Per-tensor statistics and model outputs of the given model against the float model; `layer_metrics`: the
    policy's own per-tensor metrics (QDQ and QOperator; a dynamic model has no grids to give them); `memory_mb`:
    see `per_tensor.measure`."""
    if given.qmap is None:  # dynamic: no fixed grid
        return measure_by_name(float_model, qmodel, data, generic_metrics, "dynamic", include_weights=include_weights,
                               progress=progress, tasks=tasks)
    twin_of = given.editable  # the QDQ form; a QOperator model that could not be converted has none
    if twin_of is None and given.format == "qoperator":
        modes = [m for m in modes if m != "local"] or ["whole"]
    m = measure(float_model, qmodel, given.qmap, data, {}, metrics, modes, include_weights=include_weights,
                progress=progress, tasks=tasks, need=need, layer_metrics=layer_metrics, memory_mb=memory_mb,
                twin_of=twin_of)
    if twin_of is None and given.format == "qoperator":
        for t in m.tensors:
            if t.kind == "activation":
                t.per_layer_missing = "per-layer replay needs the model as Q/DQ pairs, and it could not be converted"
    return m


def add_range_statistics(rows: list[dict], given: GivenModel) -> None:
    """Add the exported-range columns (GIVEN_RANGE_STATISTICS) to the activation rows, in place."""
    grids = given.grid_ranges()
    for row in rows:
        grid = grids.get(row["name"]) if row.get("kind") == "activation" else None
        if grid is None:
            continue
        row["range_min"], row["range_max"] = grid
        lo, hi = row.get("float_min"), row.get("float_max")
        if lo is None or hi is None:
            continue
        data_width, grid_width = hi - lo, grid[1] - grid[0]
        row["range_over_data"] = grid_width / data_width if data_width > 0 else None
