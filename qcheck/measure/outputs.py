"""Model-level metrics: how far the quantized model's outputs are from the float model's.

Per output, over all evaluation samples: cosine, MSE, max and mean absolute
error, SQNR, and, where the output is a class-score vector, top-1 and top-5
agreement (the float model's top class is among the quantized model's top k).
User metrics apply one of these to a slice of an output (`output0[:, 4:, :]`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qcheck.errors import DataError, Problem
from qcheck.measure.error_stats import ErrorAccumulator
from qcheck.policy.metric_names import MODEL_METRIC_NAMES, worst_of
from qcheck.policy.slices import SliceError, parse_slice
from qcheck.policy.spec import MetricSpec


def apply_slice(array: np.ndarray, index: tuple, what: str) -> np.ndarray:
    try:
        out = array[index]
    except IndexError as exc:
        raise SliceError(f"{what}: slice does not fit an output of shape {list(array.shape)}: {exc}") from None
    return np.asarray(out)


def class_axis(shape: tuple[int, ...]) -> int | None:
    """The class axis when an output looks like class scores ([N, C], [N, T, C] or [N, C, 1, 1])."""
    if len(shape) in (2, 3) and shape[-1] >= 2:
        return len(shape) - 1
    if len(shape) == 4 and shape[1] >= 2 and shape[2] == 1 and shape[3] == 1:
        return 1
    return None


# one sample's sums in `OutputComparison.sample_sums`, in this order
SAMPLE_COLUMNS = ("n", "sum_abs", "max_abs", "sum_ee", "sum_ff", "sum_qq", "hits1", "hits5", "total")


@dataclass
class TopK:
    hits1: int = 0
    hits5: int = 0
    total: int = 0

    def update(self, f: np.ndarray, q: np.ndarray, axis: int) -> None:
        f2 = np.moveaxis(f, axis, -1).reshape(-1, f.shape[axis])
        q2 = np.moveaxis(q, axis, -1).reshape(-1, q.shape[axis])
        top_f = f2.argmax(axis=1)
        self.hits1 += int((q2.argmax(axis=1) == top_f).sum())
        k = min(5, q2.shape[1])
        top_q = np.argpartition(-q2, k - 1, axis=1)[:, :k]
        self.hits5 += int((top_q == top_f[:, None]).any(axis=1).sum())
        self.total += f2.shape[0]


@dataclass
class OutputComparison:
    """Float vs quantized outputs of one model output, accumulated over samples."""

    name: str
    errors: ErrorAccumulator = field(default_factory=lambda: ErrorAccumulator(exact=True))
    topk: TopK | None = None
    per_sample_cosine: list[float] = field(default_factory=list)
    shape: list[int] | None = None
    # per sample, the sums every value is made of (SAMPLE_COLUMNS): what a bootstrap resamples (measure/resample.py)
    sample_sums: list[tuple[float, ...]] = field(default_factory=list)

    def update(self, f: np.ndarray, q: np.ndarray) -> None:
        self.shape = list(f.shape)
        self.errors.update(f, q)
        self.per_sample_cosine.append(self.errors.last_cosine())
        axis = class_axis(f.shape)
        hits = (0, 0, 0)
        if axis is not None:
            self.topk = self.topk or TopK()
            before = (self.topk.hits1, self.topk.hits5, self.topk.total)
            self.topk.update(f, q, axis)
            hits = (self.topk.hits1 - before[0], self.topk.hits5 - before[1], self.topk.total - before[2])
        s = self.errors.last
        sums = (s.n, s.sum_abs, s.max_abs, s.sum_ee, s.sum_ff, s.sum_qq) if s is not None else (0,) * 6
        self.sample_sums.append(tuple(float(v) for v in (*sums, *hits)))

    def result(self) -> dict:
        s = self.errors.result()
        out = {
            "name": self.name,
            "shape": self.shape,
            "cosine": s.cosine,
            "mse": s.mean_squared_error,
            "max_abs": s.max_abs_error,
            "mean_abs": s.mean_abs_error,
            "sqnr": s.sqnr,
            "float_min": s.float_min,
            "float_max": s.float_max,
            "top1": None,
            "top5": None,
            "per_sample_cosine": self.per_sample_cosine,
        }
        if self.topk and self.topk.total:
            out["top1"] = self.topk.hits1 / self.topk.total
            out["top5"] = self.topk.hits5 / self.topk.total
        return out


def metric_value(result: dict, metric: str) -> float | None:
    """A generic metric's value from an `OutputComparison.result()`: rmse is the root of its mse."""
    return math.sqrt(result["mse"]) if metric == "rmse" else result.get(metric)


def aggregate_model_metrics(outputs: list[dict]) -> dict[str, float | None]:
    """`model.*` names: the worst value over all outputs (lowest similarity, highest error)."""
    def worst(key: str) -> float | None:
        values = [o[key] for o in outputs if o.get(key) is not None]
        return worst_of(key, values) if values else None

    return {name: worst(name) for name in MODEL_METRIC_NAMES}


@dataclass
class OutputMetrics:
    """Every comparison of two models' outputs over samples: each model output, the policy's generic metrics
    (an output or a slice of one, compared with one statistic) and the task metrics given.

    The one set-up the per-tensor measurement, the name matching, the sensitivity scores and the search's
    candidates share; build it with `compare_outputs`.
    """

    outputs: list[str]
    comparisons: dict[str, OutputComparison]
    user: dict[str, tuple[MetricSpec, OutputComparison]]
    slices: dict[str, tuple]
    tasks: list
    item_samples: list[list[int]] = field(default_factory=list)  # per task: each item's sample (its index)
    n_samples: int = 0

    def update(self, label: str, f_vals: dict, q_vals: dict) -> None:
        """One sample's outputs (reference, compared)."""
        for name, cmp in self.comparisons.items():
            cmp.update(f_vals[name], q_vals[name])
        for mname, (spec, cmp) in self.user.items():
            try:
                cmp.update(apply_slice(f_vals[spec.output], self.slices[mname], f"metric '{mname}'"),
                           apply_slice(q_vals[spec.output], self.slices[mname], f"metric '{mname}'"))
            except SliceError as exc:
                raise DataError(Problem(str(exc))) from None
        if len(self.item_samples) != len(self.tasks):
            self.item_samples = [[] for _ in self.tasks]
        for task, samples in zip(self.tasks, self.item_samples):
            before = len(task.items)
            task.update(label, {n: f_vals[n] for n in self.outputs}, {n: q_vals[n] for n in self.outputs})
            samples += [self.n_samples] * (len(task.items) - before)
        self.n_samples += 1

    def output_results(self) -> list[dict]:
        return [self.comparisons[o].result() for o in self.outputs if o in self.comparisons]

    def user_results(self) -> dict[str, dict]:
        """The policy's generic metrics as results.json holds them."""
        out = {}
        for name, (spec, cmp) in self.user.items():
            r = cmp.result()
            out[name] = {"value": metric_value(r, spec.metric), "output": spec.output, "slice": spec.slice,
                         "metric": spec.metric, "per_sample_cosine": r["per_sample_cosine"]}
        return out

    def task_results(self) -> dict[str, dict]:
        return {t.name: t.result() for t in self.tasks}


def compare_outputs(outputs: list[str], metrics: dict[str, MetricSpec], tasks: list | None = None,
                    model: bool = True) -> OutputMetrics:
    """Fresh comparisons for `outputs`, the generic ones of `metrics` (task metrics come as `tasks`) and `tasks`.
    `model=False`: no comparison of each whole output (no `model.*` value; what reads only the others skips it)."""
    generic = {name: spec for name, spec in metrics.items() if spec.task is None}
    return OutputMetrics(
        outputs=list(outputs),
        comparisons={name: OutputComparison(name) for name in outputs} if model else {},
        user={name: (spec, OutputComparison(f"{spec.output}{spec.slice or ''}")) for name, spec in generic.items()},
        slices={name: parse_slice(spec.slice) if spec.slice else () for name, spec in generic.items()},
        tasks=list(tasks or []),
    )
