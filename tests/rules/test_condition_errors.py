"""A rule condition that raises (a statistic of a type it cannot take) is an error finding, once per rule.

Before, `check` caught TypeError and called the rule "not applicable", so a statistic of the wrong type
turned a rule off without a word and a model it should have stopped passed.
"""

import json

from helpers import basic_policy

from qcheck.cli.main import main
from qcheck.policy.loader import load_policy
from qcheck.rules.engine import evaluate, evaluate_model
from qcheck.rules.packs import load_rules

INLINE = {"code": "IN001", "name": "inline.op_count", "scope": "tensor", "severity": "warning",
          "when": "op_type > limit", "params": {"limit": 3}, "message": "{op_type}",
          "summary": "S.", "why": "W.", "fix": "F."}


def rules_of(tmp_path, *inline):
    path = basic_policy(tmp_path, rules={"packs": [], "inline": list(inline)})
    return path, load_rules(load_policy(path).rules, str(path))


def test_a_condition_that_raises_is_one_error_finding_naming_the_rule_and_the_types(tmp_path):
    path, rules = rules_of(tmp_path, INLINE)
    rows = [{"name": f"t{i}", "kind": "activation", "node": f"n{i}", "op_type": "Conv"} for i in range(3)]
    findings = evaluate(rules, rows)
    assert len(findings) == 1  # one per rule, not one per row
    f = findings[0]
    assert (f.code, f.severity, f.tensor) == ("IN001", "error", None)
    assert f.evidence == {"condition_error": "TypeError: '>' not supported between instances of 'str' and 'int'",
                          "rows": 3}
    assert "`op_type > limit` could not be evaluated on tensor 't0' (and on 2 more row(s))" in f.message
    assert "op_type: str" in f.message and f"{path}:" in f.message  # the rule's own file:line


def test_a_missing_value_still_means_not_applicable(tmp_path):
    _, rules = rules_of(tmp_path, dict(INLINE, when="rmse > limit"))
    assert evaluate(rules, [{"name": "t", "kind": "activation", "node": "n", "op_type": "Conv", "rmse": None}]) == []


def test_model_scope_conditions_report_the_same_way(tmp_path):
    rule = dict(INLINE, code="IN002", name="inline.model", scope="model", when="float_nodes > limit",
                message="m")
    _, rules = rules_of(tmp_path, rule)
    findings = evaluate_model(rules, {"float_nodes": "many"})
    assert [(f.code, f.severity, f.evidence["rows"]) for f in findings] == [("IN002", "error", 1)]


def test_the_error_finding_reaches_results_and_report(tmp_path, capsys):
    path = basic_policy(tmp_path, rules={"packs": ["builtin"], "inline": [INLINE]})
    assert main(["run", str(path), "--quiet"]) == 0  # the requirement (cosine) holds; the error is a finding
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    mine = [f for f in results["findings"] if f["code"] == "IN001"]
    assert len(mine) == 1 and mine[0]["severity"] == "error"
    assert mine[0]["evidence"]["rows"] == len(results["tensors"])  # a tensor-scope rule sees every row
    assert results["finding_counts"]["error"] >= 1
    assert "could not be evaluated" in (tmp_path / "out" / "report.html").read_text()
