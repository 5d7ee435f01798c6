"""What every task metric shares: per-sample components, bootstrap intervals, labels.

A task metric sees, sample by sample, the float and the quantized model's
outputs. For each *item* (a sample, or one element of its batch) it stores a
few numbers, its *components* (e.g. true positives, false positives, false
negatives). Each value of the metric is a function of the components summed
over items (F1 = 2tp / (2tp + fp + fn)), or the maximum of a per-item value.
That makes the whole-set value, each item's own value, and a bootstrap
interval (items drawn with replacement, `B` times, from a fixed seed) all the
same computation on different weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcheck.errors import DataError, Problem
from qcheck.measure.outputs import apply_slice
from qcheck.policy.metric_names import task_value
from qcheck.policy.slices import SliceError, parse_slice
from qcheck.policy.task_options import AXIS_OPTIONS

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
WORST_SHOWN = 5


@dataclass
class Stat:
    """One value of a task metric: `combine` maps summed components [..., k] to the value."""

    key: str
    columns: tuple[str, ...]  # which components it reads
    combine: Callable[[np.ndarray], np.ndarray]
    kind: str = "sum"  # "sum": combine(sum of components); "max": max over items of combine(item components)


def ratio(a: np.ndarray) -> np.ndarray:
    """a[..., 0] / a[..., 1], NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a[..., 1] != 0, a[..., 0] / np.where(a[..., 1] != 0, a[..., 1], 1), np.nan)


def bootstrap_weights(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[resamples, n] counts: how often each item is drawn in each resample (multinomial, seeded)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)


def evaluate_stat(stat: Stat, comps: np.ndarray, weights: np.ndarray | None = None,
                  confidence: float = CONFIDENCE) -> dict:
    """Value over all items, per-item values, and the bootstrap interval. comps: [n, k]."""
    n = comps.shape[0]
    if n == 0:
        return {"value": None, "ci": [None, None], "per_sample": []}
    per_item = stat.combine(comps)
    if stat.kind == "max":
        value = _nanmax(per_item)
    else:
        value = float(stat.combine(comps.sum(axis=0)))
    boot = resampled(stat, comps, weights if weights is not None else bootstrap_weights(n))
    boot = boot[np.isfinite(boot)] if boot.size else boot
    tail = (1 - confidence) / 2 * 100
    ci = [float(np.percentile(boot, tail)), float(np.percentile(boot, 100 - tail))] if boot.size else [None, None]
    return {"value": _clean(value), "ci": ci, "per_sample": [_clean(v) for v in per_item]}


def resampled(stat: Stat, comps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The stat's value on each resample: [B] from comps [n, k] and weights [B, n] (how often each item is drawn);
    NaN where a resample leaves it undefined."""
    if stat.kind == "max":
        masked = np.where(weights > 0, stat.combine(comps)[None, :], np.nan)
        with np.errstate(all="ignore"):
            return np.array([_nanmax(row) for row in masked], dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.asarray(stat.combine(weights @ comps), dtype=np.float64)


def _nanmax(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.max()) if finite.size else float("nan")


def _clean(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) else v


class TaskMetric:
    """Base class: collects components and details per item; `result()` is plain data."""

    task = ""
    columns: tuple[str, ...] = ()

    def __init__(self, name: str, options: dict, labels: list | None = None):
        self.name = name
        self.options = options
        self.declared = dict(options)  # as the policy gives them (options may be renumbered for batch_axis)
        self.labels = labels
        self.items: list[str] = []
        self.rows: list[list[float]] = []
        self.details: list[dict] = []
        self._renumbered = False  # axis options renumbered for batch_axis (batch_first)

    # ---- subclasses
    def stats(self) -> list[Stat]:
        raise NotImplementedError

    def update_item(self, item: str, index: int, f: dict, q: dict, b: int) -> tuple[dict, dict]:
        """Components and details of batch element b of one sample."""
        raise NotImplementedError

    def batch_size(self, f: dict) -> int:
        out = self.options.get("output")
        return int(np.shape(f[out])[0]) if out and np.ndim(f[out]) > 0 else 1

    # ---- shared
    def batch_first(self, f: dict, q: dict) -> tuple[dict, dict]:
        """With `batch_axis` (an output whose batch is not first, e.g. PyTorch's [time, batch, classes]): the
        outputs this metric reads with that axis moved first, and its axis options renumbered to match."""
        axis = int(self.options.get("batch_axis", 0))
        if not axis:
            return f, q
        names = [self.options[k] for k in ("output", "boxes_output", "scores_output") if self.options.get(k)]
        ndim = np.ndim(f[names[0]])
        if axis >= ndim:
            raise shape_error(self.name, f"batch_axis {axis} is not an axis of output '{names[0]}' "
                                         f"(shape {list(np.shape(f[names[0]]))})")
        if self.options.get("slice"):  # the slice counts axes as the model returns them too: apply it first
            sliced = {n: take(f, n, self.options["slice"], self.name) for n in names}
            if any(np.ndim(v) != ndim for v in sliced.values()):
                raise shape_error(self.name, f"with batch_axis, the slice {self.options['slice']} must keep every "
                                             f"axis (use ranges like 0:1, not single indices)")
            f = {**f, **sliced}
            q = {**q, **{n: take(q, n, self.options["slice"], self.name) for n in names}}
        if not self._renumbered:
            opts = dict(self.options)
            opts.pop("slice", None)
            for key in AXIS_OPTIONS:
                if key in opts:
                    a = int(opts[key]) % ndim
                    if a == axis:
                        raise shape_error(self.name, f"{key} {opts[key]} is the batch axis (batch_axis {axis})")
                    opts[key] = a + 1 if a < axis else a
            self.options, self._renumbered = opts, True
        move = {n: np.moveaxis(np.asarray(f[n]), axis, 0) for n in names}
        moved_q = {n: np.moveaxis(np.asarray(q[n]), axis, 0) for n in names}
        return {**f, **move}, {**q, **moved_q}

    def update(self, sample: str, f: dict, q: dict) -> None:
        f, q = self.batch_first(f, q)
        n = self.batch_size(f)
        for b in range(n):
            item = sample if n == 1 else f"{sample}[{b}]"
            comps, details = self.update_item(item, len(self.items), f, q, b)
            self.items.append(item)
            self.rows.append([float(comps.get(c, 0.0)) for c in self.columns])
            self.details.append(details)

    def label(self, index: int):
        return None if self.labels is None or index >= len(self.labels) else self.labels[index]

    def check_label_count(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.items):
            raise DataError(Problem(
                f"metric '{self.name}': the labels file holds {len(self.labels)} labels, but the evaluation data "
                f"gave {len(self.items)} items (samples x batch)", file=str(self.options.get("labels")),
                hint="one label per evaluation sample, in the order the samples are read (natural file-name order)"))

    def result(self) -> dict:
        self.check_label_count()
        comps = np.asarray(self.rows, dtype=np.float64).reshape(len(self.rows), len(self.columns))
        weights = bootstrap_weights(len(self.items)) if self.items else None
        values = {}
        for stat in self.stats():
            idx = [self.columns.index(c) for c in stat.columns]
            values[stat.key] = evaluate_stat(stat, comps[:, idx], weights)
            values[stat.key]["higher_is_better"] = bool(task_value(stat.key) and task_value(stat.key).higher_is_better)
            values[stat.key]["key"] = stat.key
        primary = next(iter(values)) if values else None
        return {
            "task": self.task,
            "options": {k: v for k, v in self.declared.items() if k != "task"},
            "primary": primary,
            "value": values[primary]["value"] if primary else None,
            "values": values,
            "samples": list(self.items),
            "worst": self.worst(values.get(primary) if primary else None),
            "confidence": CONFIDENCE,
            "resamples": BOOTSTRAP_RESAMPLES,
            "has_labels": self.labels is not None,
        }

    def worst(self, primary: dict | None) -> list[dict]:
        """Up to WORST_SHOWN items with the worst primary value (not the ideal one), with what changed."""
        if not primary or not primary["per_sample"]:
            return []
        higher = primary.get("higher_is_better", True)
        scored = [(v, i) for i, v in enumerate(primary["per_sample"]) if v is not None]
        scored.sort(key=lambda t: t[0] if higher else -t[0])
        known = task_value(primary.get("key", ""))
        ideal = known.ideal if known else None
        if ideal is not None:  # only the samples where something changed
            scored = [(v, i) for v, i in scored if v != ideal]
        return [{"sample": self.items[i], "value": v, **self.details[i]} for v, i in scored[:WORST_SHOWN]]


# --------------------------------------------------------------------------- helpers for subclasses


def take(arrays: dict, output: str, slice_text: str | None, metric: str) -> np.ndarray:
    a = np.asarray(arrays[output])
    if slice_text:
        try:
            a = apply_slice(a, parse_slice(slice_text), f"metric '{metric}'")
        except SliceError as exc:
            raise DataError(Problem(str(exc))) from None
    return a


def shape_error(metric: str, message: str, hint: str | None = None) -> DataError:
    return DataError(Problem(f"metric '{metric}': {message}", hint=hint))


def class_index(v) -> int | None:
    """A label as a class index: an integer, or a float or text that is one exactly; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    return None


def load_labels(path: Path, metric: str, kind: str) -> list:
    """Labels from .npy (one per row), .json (a list) or .txt (one per line). kind: 'int' or 'str'."""
    try:
        if path.suffix == ".npy":
            raw = np.load(path, allow_pickle=False).tolist()
        elif path.suffix == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
        else:
            raw = path.read_text(encoding="utf-8").splitlines()
            if raw and raw[-1] == "":
                raw = raw[:-1]
    except FileNotFoundError:
        raise DataError(Problem(f"metric '{metric}': labels file not found", file=str(path))) from None
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(Problem(f"metric '{metric}': cannot read the labels ({exc})", file=str(path),
                                hint="use .npy (an array), .json (a list) or .txt (one label per line)")) from None
    if not isinstance(raw, list):
        raise DataError(Problem(f"metric '{metric}': the labels must be a list, one per sample", file=str(path)))
    if kind == "int":
        out = []
        for i, v in enumerate(raw):
            index = class_index(v)
            if index is None:  # 1.5, inf, NaN, true, "cat": none names a class; int() would truncate or crash
                raise DataError(Problem(f"metric '{metric}': label {i + 1} is {v!r}, not a class index",
                                        file=str(path), line=i + 1 if path.suffix == ".txt" else None))
            out.append(index)
        return out
    return [str(v) for v in raw]
