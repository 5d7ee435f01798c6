"""One metric registry (policy/metric_names.py): every stage that asks "which way is better" gets the same answer."""

import json
import math

import pytest
from helpers import json_objects

from qcheck.analyses.sensitivity import badness
from qcheck.measure.outputs import aggregate_model_metrics
from qcheck.policy.metric_names import MODEL_METRIC_NAMES, OUTPUT_METRICS, TASK_VALUES, higher_is_better
from qcheck.policy.spec import REQUIRE_NAMES, MetricSpec
from qcheck.policy.task_options import TASKS
from qcheck.resources import schema_path


def test_the_policy_schema_offers_exactly_the_registered_output_metrics():
    schema = json.loads(schema_path("policy.schema.json").read_text())
    enums = [node["enum"] for node in json_objects(schema) if "cosine" in (node.get("enum") or [])]
    assert enums and all(set(e) == set(OUTPUT_METRICS) for e in enums)
    assert {f"model.{m}" for m in MODEL_METRIC_NAMES} <= set(REQUIRE_NAMES)
    assert set(MODEL_METRIC_NAMES) <= set(OUTPUT_METRICS)


def test_every_value_a_builtin_task_gives_is_registered():
    given = {v for task, (_, values, _) in TASKS.items() if task != "python" for v in values}
    assert given == set(TASK_VALUES)


@pytest.mark.parametrize("name", sorted(set(OUTPUT_METRICS) | set(TASK_VALUES)))
def test_the_ideal_value_is_the_best_end(name):
    m = OUTPUT_METRICS.get(name) or TASK_VALUES[name]
    if m.ideal is not None and m.higher_is_better:
        assert m.ideal == (1.0 if m.bounded else math.inf)
    elif m.ideal is not None:
        assert m.ideal == 0.0
    if name in OUTPUT_METRICS and name in TASK_VALUES:  # one name, one direction
        assert OUTPUT_METRICS[name].higher_is_better == TASK_VALUES[name].higher_is_better


def test_the_model_aggregate_keeps_the_worst_output_by_direction():
    outputs = [{"cosine": 0.99, "sqnr": 30.0, "mse": 0.1, "max_abs": 1.0, "mean_abs": 0.2, "top1": 1.0, "top5": None},
               {"cosine": 0.95, "sqnr": 40.0, "mse": 0.3, "max_abs": 0.5, "mean_abs": 0.4, "top1": 0.5, "top5": None}]
    agg = aggregate_model_metrics(outputs)
    assert agg == {"cosine": 0.95, "sqnr": 30.0, "mse": 0.3, "max_abs": 1.0, "mean_abs": 0.4, "top1": 0.5, "top5": None}


def test_sensitivity_ranks_by_the_same_direction():
    """A node whose configuration has a lower cosine, or a higher mse, is worse; likewise for a task's primary value."""
    metrics = {"err": MetricSpec("err", "y", metric="mse"), "cls": MetricSpec("cls", "y", task="classification"),
               "reg": MetricSpec("reg", "y", task="regression")}
    assert badness({"cosine": 0.9}, "cosine", metrics) > badness({"cosine": 0.99}, "cosine", metrics)
    assert badness({"err": 0.3}, "err", metrics) > badness({"err": 0.1}, "err", metrics)
    assert badness({"cls": 0.5}, "cls", metrics) > badness({"cls": 1.0}, "cls", metrics)  # top1: higher is better
    assert badness({"reg": 2.0}, "reg", metrics) > badness({"reg": 1.0}, "reg", metrics)  # max_abs: lower is better
    assert higher_is_better("iou") and not higher_is_better("cer") and not higher_is_better("a_python_value")
