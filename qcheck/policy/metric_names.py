"""Every metric qcheck knows by name: which way is better, its bounds, its ideal value, what it means.

One table for the output comparisons (`metric:` of a policy metric, the `model.*` names, the
analyses' ranking metric) and for the values task metrics give (`<name>.<value>`). Sensitivity
ranks nodes by it, `qcheck diff` decides what a regression is by it, task metrics list their worst
samples by it, and the aggregate `model.*` value is the worst output by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qcheck.policy.task_options import TASKS


@dataclass(frozen=True)
class MetricName:
    name: str
    higher_is_better: bool
    text: str
    bounded: bool = False  # a rate or similarity in [0, 1] (cosine: [-1, 1]): differences are absolute, not relative
    ideal: float | None = None  # the value when quantization changed nothing (None: no such value)

    @property
    def direction(self) -> int:
        """+1 when higher is better, -1 when lower is better."""
        return 1 if self.higher_is_better else -1


def _table(*entries: MetricName) -> dict[str, MetricName]:
    return {m.name: m for m in entries}


# float vs quantized model outputs (measure/outputs.py), usable as a policy metric's `metric:`
OUTPUT_METRICS = _table(
    MetricName("cosine", True, "cosine similarity of float and quantized outputs", bounded=True, ideal=1.0),
    MetricName("sqnr", True, "signal-to-quantization-noise ratio, dB", ideal=math.inf),
    MetricName("mse", False, "mean squared error", ideal=0.0),
    MetricName("rmse", False, "root mean squared error", ideal=0.0),
    MetricName("max_abs", False, "largest absolute error", ideal=0.0),
    MetricName("mean_abs", False, "mean absolute error", ideal=0.0),
    MetricName("top1", True, "share of samples whose top class is the float model's", bounded=True, ideal=1.0),
    MetricName("top5", True, "share of samples whose top 5 classes hold the float model's top class", bounded=True,
               ideal=1.0),
)

# the `model.<name>` values: each the worst over the model's outputs (rmse is a policy metric only)
MODEL_METRIC_NAMES = ("cosine", "sqnr", "mse", "max_abs", "mean_abs", "top1", "top5")

# values task metrics give (policy/task_options.py lists which task gives which)
TASK_VALUES = _table(
    MetricName("top1", True, "share of items whose top class is unchanged", bounded=True, ideal=1.0),
    MetricName("topk", True, "share of items whose float top class is among the quantized top k", bounded=True,
               ideal=1.0),
    MetricName("accuracy_float", True, "accuracy of the float model against the labels", bounded=True),
    MetricName("accuracy_quant", True, "accuracy of the quantized model against the labels", bounded=True),
    MetricName("accuracy_drop", False, "accuracy_float - accuracy_quant"),
    MetricName("f1", True, "F1 of quantized detections against the float ones", bounded=True, ideal=1.0),
    MetricName("precision", True, "share of quantized detections the float model also makes", bounded=True,
               ideal=1.0),
    MetricName("recall", True, "share of float detections the quantized model also makes", bounded=True, ideal=1.0),
    MetricName("score_max_error", False, "largest score error of matched detections", ideal=0.0),
    MetricName("score_mean_error", False, "mean score error of matched detections", ideal=0.0),
    MetricName("string_agreement", True, "share of decoded strings that are identical", bounded=True, ideal=1.0),
    MetricName("step_agreement", True, "share of time steps whose best class is unchanged", bounded=True, ideal=1.0),
    MetricName("cer", False, "character error rate of the quantized strings against the float ones", ideal=0.0),
    MetricName("cer_float", False, "character error rate of the float model against the labels"),
    MetricName("cer_quant", False, "character error rate of the quantized model against the labels"),
    MetricName("iou", True, "intersection over union of the float and quantized masks", bounded=True, ideal=1.0),
    MetricName("pixel_agreement", True, "share of pixels with the same class", bounded=True, ideal=1.0),
    MetricName("max_abs", False, "largest absolute error", ideal=0.0),
    MetricName("mean_abs", False, "mean absolute error", ideal=0.0),
    MetricName("relative", False, "sum of absolute errors over the sum of absolute float values", ideal=0.0),
    MetricName("psnr", True, "peak signal-to-noise ratio, dB", ideal=math.inf),
)


def output_metric(name: str) -> MetricName | None:
    return OUTPUT_METRICS.get(name)


def task_value(key: str) -> MetricName | None:
    """A task value by name; None for a python task's own values (their direction is not known: lower is better)."""
    return TASK_VALUES.get(key)


def require_metric(name: str, metrics: dict) -> MetricName | None:
    """What a `require:` name measures: a `model.*` output comparison, a policy metric's (`metrics`: the policy's
    MetricSpecs), a built-in task value; None for a python task's values, finding counts and unknown names."""
    if name.startswith("model."):
        return OUTPUT_METRICS.get(name[len("model."):])
    metric, _, key = name.partition(".")
    spec = metrics.get(metric)
    if spec is None:
        return None
    if spec.task is None:
        return OUTPUT_METRICS.get(spec.metric) if not key else None
    if spec.task not in TASKS or spec.task == "python":
        return None
    return TASK_VALUES.get(key or TASKS[spec.task][1][0])


def higher_is_better(name: str) -> bool:
    """For a name in either table; unknown names count as errors (lower is better)."""
    known = OUTPUT_METRICS.get(name) or TASK_VALUES.get(name)
    return known.higher_is_better if known else False


def worst_of(name: str, values: list[float]) -> float:
    """The worst of several values of one output metric (the lowest similarity, the highest error)."""
    return min(values) if OUTPUT_METRICS[name].higher_is_better else max(values)
