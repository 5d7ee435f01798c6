"""The report's first page says what to do next, from what was measured; never a remedy measured worse."""

import json
import re

from helpers import basic_policy

from qcheck.cli.main import main
from qcheck.results.next_step import next_step


def _results(**over) -> dict:
    r = {"verdict": {"status": "fail", "requirements": [
            {"text": "model.cosine >= 0.99", "holds": False, "values": {"model.cosine": 0.9102}}]},
         "quantization": {"scheme": "int8"}, "finding_counts": {"error": 0, "warning": 0, "info": 0},
         "findings": [], "search": None, "compare": None, "analyses": None}
    r.update(over)
    return r


def _confirm(*reals: float, metric: str = "cosine") -> dict:
    rows = [{"label": "all quantized", "keep_float": [], "real": reals[0]}]
    rows += [{"label": f"top-{k} float", "keep_float": [f"n{j}" for j in range(k)], "real": v}
             for k, v in enumerate(reals[1:], start=1)]
    return {"metric": metric, "confirm": {"tolerance": 0.001, "rows": rows}}


def test_search_result_comes_first():
    search = {"status": "found", "chosen": 1, "why": "cheapest",
              "candidates": [{"n_changes": 0, "label": "baseline"}, {"n_changes": 1, "label": "fc in float"}]}
    step = next_step(_results(search=search, verdict={"status": "pass", "requirements": []}))
    assert step["source"] == "search" and "fc in float" in step["action"]


def test_float_fallback_measured_worse_is_never_recommended():
    # the example's numbers: keeping the top nodes float is worse on real int8 (0.9075, 0.9078 vs 0.9102)
    step = next_step(_results(analyses=_confirm(0.9102, 0.9075, 0.9078)))
    assert "Keep" not in step["action"]
    assert any("measured worse" in e and "not recommended" in e and "0.9075" in e for e in step["evidence"])


def test_float_fallback_measured_better_is_recommended_with_its_evidence():
    step = next_step(_results(analyses=_confirm(0.9102, 0.95, 0.999)))
    assert step["source"] == "analyses" and step["action"].startswith("Keep n0, n1 in float")
    assert any("0.9102" in e and "0.999" in e for e in step["evidence"])


def test_clipping_tensors_are_named_with_the_fix():
    clip = [{"rule": "range.clipping", "tensor": f"t{i}", "message": "2% beyond", "remedies": []} for i in range(4)]
    step = next_step(_results(findings=clip))
    assert step["action"].startswith("4 tensor(s) clip: widen their range (t0, t1, t2 and 1 more)")


def _failed_search(*candidates: dict) -> dict:
    return {"status": "failed", "chosen": None, "candidates": list(candidates),
            "recommendation": {"action": "quantization-aware training", "reason": "nothing within the budget"}}


def test_a_failed_search_comes_before_the_clipping_lead_it_already_tried():
    """The search tried widening ranges (and every other allowed remedy): its outcome is the next step."""
    clip = [{"rule": "range.clipping", "tensor": "t0", "message": "2% beyond", "remedies": []}]
    step = next_step(_results(findings=clip, search=_failed_search(
        {"passes": False, "within_budget": True, "figure": "confirmed", "label": "float a"})))
    assert step["source"] == "search" and step["action"].startswith("Quantization-aware training")


def test_a_fix_that_passes_outside_the_budget_is_named_with_its_cost():
    """A confirmed candidate passed but costs more than the budget allows: raising the budget is a cheaper
    next step than retraining; the cheapest such candidate is named (a screened one never is)."""
    rows = [{"passes": True, "within_budget": False, "figure": "confirmed", "label": "big", "cost": 40.0,
             "n_changes": 30, "float_nodes": 39, "int16_tensors": 0},
            {"passes": True, "within_budget": False, "figure": "confirmed", "label": "bigger", "cost": 70.0,
             "n_changes": 50, "float_nodes": 70, "int16_tensors": 0},
            {"passes": True, "within_budget": False, "figure": "screened", "label": "screened only", "cost": 1.0,
             "n_changes": 1, "float_nodes": 1, "int16_tensors": 0}]
    step = next_step(_results(search=_failed_search(*rows)))
    assert "needs 39 float node(s) and 0 int16 tensor(s) (big)" in step["action"]
    assert "raise search.budget" in step["action"] and "quantization-aware training" in step["action"]


def test_passing_run_says_nothing_to_fix():
    assert next_step(_results(verdict={"status": "pass", "requirements": []}))["action"].startswith("Nothing to fix")


def test_cover_shows_next_step_and_pooled_and_worst_sample_cosine(tmp_path):
    policy = basic_policy(tmp_path, require=["model.cosine >= 0.999999"])
    assert main(["run", str(policy), "--quiet"]) == 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    html = (tmp_path / "out" / "report.html").read_text()
    cover = html[html.index('<header class="cover">'):html.index("</header>")]
    text = re.sub(r"<[^>]+>", "", cover)
    assert "Next step: " + next_step(results)["action"].replace("`", "") in text
    worst = min(c for o in results["model_metrics"]["outputs"] for c in o["per_sample_cosine"])
    shown = f"{worst:.6f}" if worst >= 0.999 else f"{worst:.4f}"  # the report's cosine format
    assert "pooled over 8 samples" in text and f"worst single sample: {shown}" in text
