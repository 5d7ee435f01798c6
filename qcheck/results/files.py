"""Results of a run as plain data, and their files: results.json and layer_stats.csv.

`results.json` holds everything the report shows, so `qcheck report` can
render it again without running a model. JSON has no Infinity or NaN: such
floats are written as the strings "inf", "-inf" and "nan" and read back as
floats.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from qcheck.results.layer_columns import TENSOR_STATISTICS
from qcheck.results.load import read_results

_SPECIAL = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_TEXT_KEYS = {"name", "node", "tensor", "output", "text", "message", "title", "op_type"}
_TEXT_KEYS |= {"sample", "samples", "label", "float_text", "quant_text", "how_sure"}  # task metrics (qcheck/tasks)


def encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return encode(value.item())
    return value


def decode(value: Any, key: str | None = None) -> Any:
    if isinstance(value, str) and key not in _TEXT_KEYS and value in _SPECIAL:
        return _SPECIAL[value]
    if isinstance(value, dict):
        return {k: decode(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, key) for v in value]
    return value


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(encode(results), indent=1, allow_nan=False) + "\n", encoding="utf-8")


def load_results(path: Path) -> dict:
    """results.json, checked against its schema and upgraded to the current version (see results/load.py)."""
    return decode(read_results(path))


CSV_COLUMNS = list(TENSOR_STATISTICS)


def write_layer_stats(rows: list[dict], path: Path, layer_metrics: list[str] | tuple[str, ...] = ()) -> None:
    """One row per quantized tensor, then one column per layer metric the policy declares; readable with
    pandas.read_csv."""
    columns = CSV_COLUMNS + [name for name in layer_metrics if name not in CSV_COLUMNS]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v  # a node named =HYPERLINK(...) must stay text in a spreadsheet, not become a formula
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return v


SENSITIVITY_VIEWS = ("node", "weight", "activation", "reverse")


def write_sensitivity(analyses: dict, path: Path) -> None:
    """Node sensitivity, worst first: one row per node, cosine/SQNR/MSE per view (empty where not computed)."""
    sens = (analyses or {}).get("sensitivity")
    if not sens:
        return
    columns = ["rank", "node", "op_type", "dominant", "recovered"]
    columns += [f"{view}_{m}" for view in SENSITIVITY_VIEWS for m in ("cosine", "sqnr", "mse")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in sens["nodes"]:
            out = {k: _csv_value(row.get(k)) for k in columns[:5]}
            for view in SENSITIVITY_VIEWS:
                for m in ("cosine", "sqnr", "mse"):
                    out[f"{view}_{m}"] = _csv_value(row["views"].get(view, {}).get(m))
            writer.writerow(out)
