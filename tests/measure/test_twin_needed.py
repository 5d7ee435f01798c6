"""The per-layer twin runs only when something in the run reads a column it produces (qcheck.run.needs).

Two runs of small_cnn on the same data: rules that read only whole-model columns skip the twin, and the
results, the CSV and the report say the per-layer columns were not computed and why; a rule that reads
weight_error_share gets the twin back. The whole-model columns are the same numbers in both runs (the twin
does not touch them)."""

import csv
import json

import pytest
from helpers import basic_policy

from qcheck.cli.main import main
from qcheck.policy.loader import load_policy
from qcheck.results.layer_columns import PER_LAYER_ERROR, PER_LAYER_GROUP
from qcheck.rules.packs import load_rules
from qcheck.run.needs import statistics_read

RULE = {"code": "IN001", "name": "inline.whole", "scope": "tensor", "severity": "info",
        "when": "whole_cosine < limit", "params": {"limit": 0.5}, "message": "{name}",
        "summary": "S.", "why": "W.", "fix": "F."}
SHARE = dict(RULE, code="IN002", name="inline.share", when="weight_error_share > limit")


def _run(tmp, *rules, **extra):
    policy = basic_policy(tmp, rules={"packs": [], "inline": list(rules)}, analyses=False, **extra)
    assert main(["run", str(policy), "--quiet"]) == 0
    return json.loads((tmp / "out" / "results.json").read_text()), tmp / "out"


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    return (_run(tmp_path_factory.mktemp("whole"), RULE), _run(tmp_path_factory.mktemp("share"), RULE, SHARE))


def test_rules_that_read_no_per_layer_column_skip_the_twin_and_say_why(both):
    (results, out), _ = both
    why = results["measure"]["not_computed"][PER_LAYER_GROUP]
    assert why.startswith("not computed: nothing in this run reads them") and "weight_error_share" in why
    acts = [t for t in results["tensors"] if t["kind"] == "activation"]
    assert acts and all(t[k] is None for t in acts for k in (*PER_LAYER_ERROR, "weight_error_share"))
    assert all(t["per_layer_missing"] == why for t in acts)
    assert all(isinstance(t["whole_rmse_scale"], float) for t in acts)
    with open(out / "layer_stats.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "activation"]
    assert rows and all(r["per_layer_missing"] == why and r["rmse_scale"] == "" for r in rows)
    html = (out / "report.html").read_text()
    assert "<b>Per-layer statistics</b>: not computed: nothing in this run reads them" in html
    assert "Worst activation tensors by whole-model rmse/scale" in html
    assert "Worst activation tensors by per-layer rmse/scale" not in html


def test_a_rule_reading_a_twin_column_gets_the_twin(both):
    (plain, _), (share, out) = both
    assert PER_LAYER_GROUP not in share["measure"]["not_computed"]
    acts = {t["name"]: t for t in share["tensors"] if t["kind"] == "activation"}
    with_producer = [t for t in acts.values() if t["node"] != "(input)"]
    assert with_producer and all(isinstance(t["rmse_scale"], float) and t["per_layer_missing"] is None
                                 for t in with_producer)
    assert any(isinstance(t["weight_error_share"], float) for t in with_producer)
    assert "Worst activation tensors by per-layer rmse/scale" in (out / "report.html").read_text()
    for t in plain["tensors"]:  # the twin changes no whole-model number
        if t["kind"] == "activation":
            for key in ("whole_rmse_scale", "whole_cosine", "whole_max_abs_error", "clip_fraction", "float_max"):
                assert t[key] == acts[t["name"]][key], (t["name"], key)


def test_what_a_run_reads(tmp_path):
    path = basic_policy(tmp_path, rules={"packs": ["builtin"]})
    policy = load_policy(path)
    assert {"rmse_scale", "cosine", "weight_error_share", "kurtosis"} <= statistics_read(
        policy, load_rules(policy.rules, str(path)))

    def read(**overrides):
        p = basic_policy(tmp_path, rules={"packs": [], "inline": [RULE]}, **overrides)
        pol = load_policy(p)
        return statistics_read(pol, load_rules(pol.rules, str(p)))

    assert read() == {"whole_cosine", "name"}
    assert "sqnr" in read(report={"out": "out", "graph": {"color_by": "sqnr"}})
    # the search ranks nodes by per-layer statistics when node sensitivity does not rank them
    assert {"cosine", "rmse_scale"} <= read(analyses=False, search={"strategy": "greedy"})
    assert "cosine" not in read(search={"strategy": "greedy"})


def test_a_layer_metric_in_local_mode_keeps_the_twin(tmp_path):
    from qcheck.measure.layer_metrics import LayerMetrics
    from qcheck.measure.per_tensor import skipped_statistics
    from qcheck.policy.spec import LayerMetricSpec
    from qcheck.results.layer_columns import DISTRIBUTION_GROUP

    modes = ["local", "whole"]
    local = LayerMetrics({"m": LayerMetricSpec(name="m", mode="local")}, tmp_path)
    whole = LayerMetrics({"m": LayerMetricSpec(name="m", mode="whole")}, tmp_path)
    assert PER_LAYER_GROUP not in skipped_statistics({"whole_cosine"}, modes, local)
    assert PER_LAYER_GROUP in skipped_statistics({"whole_cosine"}, modes, whole)
    assert PER_LAYER_GROUP not in skipped_statistics({"rmse_scale"}, modes, None)
    assert skipped_statistics(None, modes, None) == {}  # no `need`: everything
    # per-layer mode alone: the twin is all there is, it runs
    assert PER_LAYER_GROUP not in skipped_statistics({"whole_cosine"}, ["local"], None)
    assert DISTRIBUTION_GROUP in skipped_statistics({"whole_cosine"}, modes, None)
    assert DISTRIBUTION_GROUP not in skipped_statistics({"kurtosis"}, modes, None)
