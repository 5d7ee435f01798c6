"""The rule engine and the built-in pack: every rule fires on its test data and only there.

Each built-in rule has one file tests/rules/<code>.yaml with rows of statistics:
`triggers` (the rule fires), `passes` (the rule looks at the row, every value it
needs is there, and it does not fire) and `out_of_scope` (rows the rule does not
look at), plus the message the first trigger gives.
"""

import json
from pathlib import Path

import pytest
import yaml
from helpers import TESTS, basic_policy

import qcheck
from qcheck.cli.main import main
from qcheck.errors import PolicyError
from qcheck.policy.loader import load_policy
from qcheck.policy.spec import SEARCH_REMEDIES, RulesSpec
from qcheck.policy.targets import builtin_profile
from qcheck.resources import builtin_pack_path
from qcheck.results.layer_columns import TENSOR_STATISTICS
from qcheck.rules.engine import (
    check,
    evaluate,
    evaluate_model,
    needed_statistics,
    rows_in_scope,
)
from qcheck.rules.model_row import MODEL_STATISTICS, model_row, remedies_for, target_allows
from qcheck.rules.packs import load_pack, load_rules

CASES = TESTS / "rules"
BUILTIN = {r.code: r for r in load_pack(builtin_pack_path())}
# what a rule pack may propose: the schema's list, and each one the search can try (or QAT, which it cannot)
REMEDIES = set(json.loads((Path(qcheck.__file__).parent / "schema" / "rulepack.schema.json").read_text())
               ["$defs"]["rule"]["properties"]["remedies"]["items"]["enum"])
assert REMEDIES - {"qat"} <= set(SEARCH_REMEDIES)
ISSUE_LIST = [f"QC1{i:02d}" for i in range(1, 13)]  # the twelve diagnoses of the issue, in its order


def fresh_builtin():
    return {r.code: r for r in load_pack(builtin_pack_path())}


def test_every_builtin_rule_has_a_test_file_and_no_file_is_orphaned():
    files = {p.stem for p in CASES.glob("*.yaml")}
    assert set(BUILTIN) == files
    assert set(ISSUE_LIST) <= set(BUILTIN)


@pytest.mark.parametrize("code", sorted(BUILTIN))
def test_rule_fires_on_its_triggers_and_only_there(code):
    case = yaml.safe_load((CASES / f"{code}.yaml").read_text())
    assert case["rule"] == code
    rule = fresh_builtin()[code]
    assert case["triggers"] and case["passes"], "a rule needs data that triggers it and data that does not"
    for row in case["triggers"]:
        if rule.scope != "model":
            assert rows_in_scope(rule, [row]) == [row], f"trigger out of scope: {row}"
        assert check(rule, row) is True, f"{code} should fire on {row}"
        # every value the rule reads or shows is present: no "n/a" in the evidence
        assert rule.needs <= set(row), f"{code}: trigger row lacks {sorted(rule.needs - set(row))}"
    for row in case["passes"]:
        if rule.scope != "model":
            assert rows_in_scope(rule, [row]) == [row], f"pass row out of scope (put it in out_of_scope): {row}"
        assert check(rule, row) is False, f"{code} should evaluate to false (not n/a) on {row}"
    for row in case.get("out_of_scope", []):
        assert rows_in_scope(rule, [row]) == [], f"{code} should not look at {row}"
    first = case["triggers"][0]
    if rule.scope == "model":
        findings = evaluate_model([rule], first)
    else:
        findings = evaluate([rule], [first])
    assert len(findings) == 1
    f = findings[0]
    assert f.message == case["message"]
    assert f.code == code and f.rule == rule.name and f.severity == rule.severity
    assert set(rule.evidence) <= set(f.evidence) and f.params == rule.params
    if rule.scope != "model":
        assert (f.tensor, f.node, f.op_type) == (first["name"], first["node"], first["op_type"])


@pytest.mark.parametrize("code", sorted(BUILTIN))
def test_every_rule_is_documented(code):
    rule = BUILTIN[code]
    for key in ("summary", "why", "fix"):
        text = getattr(rule, key)
        assert isinstance(text, str) and len(text.split()) >= 5, f"{code} lacks a real {key}"
    assert rule.summary.endswith(".") and len(rule.summary) < 140
    assert rule.remedies and set(rule.remedies) <= REMEDIES
    assert rule.name.count(".") >= 1 and rule.params, f"{code}: thresholds are parameters"
    assert "seed" not in (rule.why + rule.fix + rule.summary).lower()  # internal notes are not user docs
    known = MODEL_STATISTICS if rule.scope == "model" else TENSOR_STATISTICS
    assert rule.needs <= set(known)


# --------------------------------------------------------------------------- packs: refused at load, with file:line


def write_pack(tmp_path, rules_yaml: str, name="team.yaml") -> Path:
    path = tmp_path / name
    path.write_text("pack: team\nrules:\n" + rules_yaml, encoding="utf-8")
    return path


RULE = """  - code: TM{n:03d}
    name: team.rule{n}
    scope: tensor
    severity: warning
    when: {when}
    params: {{limit: 1}}
    message: "{message}"
    summary: A team rule.
    why: Because.
    fix: Fix it.
"""


@pytest.mark.parametrize("when, words", [
    ('__import__("os").system("touch /tmp/qcheck-pwned")', "calling __import__"),
    ("rmse.__class__", "dunder"),
    ("[x for x in range(3)]", "comprehensions"),
    ("(lambda: 1)()", "calling lambda"),
    ("rmse.real > 0", "unknown statistic 'rmse.real'"),
    ('open("/etc/passwd")', "calling open"),
])
def test_unsafe_conditions_are_refused_with_file_and_line(tmp_path, when, words):
    path = write_pack(tmp_path, RULE.format(n=1, when=json.dumps(when), message="m"))  # a JSON string is YAML
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    text = str(info.value)
    assert f"{path}:7:" in text  # line 7 holds `when:`
    assert words in text
    assert not Path("/tmp/qcheck-pwned").exists()


def test_unknown_statistic_is_refused_with_the_known_names(tmp_path):
    path = write_pack(tmp_path, RULE.format(n=1, when="rmse / scael > limit", message="m"))
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    text = str(info.value)
    assert f"{path}:7: rule TM001: `when` names unknown statistic 'scael'" in text
    assert "did you mean 'scale'?" in text
    assert "known statistics: " + ", ".join(sorted(TENSOR_STATISTICS)) in text


def test_model_scope_rules_know_model_statistics_only(tmp_path):
    path = write_pack(tmp_path, RULE.format(n=1, when="rmse_scale > limit", message="m").replace("scope: tensor",
                                                                                                 "scope: model"))
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    assert "unknown statistic 'rmse_scale'" in str(info.value) and "known model statistics: " in str(info.value)


def test_message_templates_cannot_reach_attributes(tmp_path):
    path = write_pack(tmp_path, RULE.format(n=1, when="rmse > limit", message="{rmse.__class__}"))
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    assert f"{path}:9:" in str(info.value) and "not allowed" in str(info.value)  # line 9 holds `message:`


def test_schema_errors_and_duplicate_codes_name_the_line(tmp_path):
    text = RULE.format(n=1, when="rmse > limit", message="m") + RULE.format(n=1, when="rmse > 2", message="m")
    path = write_pack(tmp_path, text.replace("severity: warning", "severity: warn", 1))
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    assert f"{path}:6: 'rules[0].severity' must be one of: info, warning, error" in str(info.value)
    path = write_pack(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_pack(path)
    assert f"{path}:13: rule code TM001 is used twice (first at line 3)" in str(info.value)


# --------------------------------------------------------------------------- policy side


def policy_with_rules(tmp_path, rules: dict) -> Path:
    return basic_policy(tmp_path, rules=rules)


def test_policy_packs_disable_params_and_inline_rules(tmp_path):
    team = write_pack(tmp_path, RULE.format(n=7, when="max_abs_error > limit", message="{max_abs_error:.2f}"))
    path = policy_with_rules(tmp_path, {
        "packs": ["builtin", team.name],
        "disable": ["QC109", "range.degenerate"],
        "params": {"quant.rmse_scale": {"threshold": 0.9}, "TM007": {"limit": 3}},
        "inline": [{"code": "IN001", "name": "inline.big_scale", "scope": "tensor", "severity": "error",
                    "when": "scale > limit", "params": {"limit": 10}, "message": "scale {scale}",
                    "summary": "Big scale.", "why": "Because.", "fix": "Fix it."}],
    })
    policy = load_policy(path)
    rules = {r.code: r for r in load_rules(policy.rules, str(path))}
    assert "QC109" not in rules and "QC110" not in rules and "QC101" in rules
    assert rules["QC101"].params == {"threshold": 0.9}
    assert rules["TM007"].params == {"limit": 3} and rules["TM007"].pack == "team"
    assert rules["IN001"].pack == "inline" and rules["IN001"].source.startswith(f"{path}:")
    rows = [{"name": "t", "kind": "activation", "node": "n", "op_type": "Conv", "scale": 20.0, "max_abs_error": 4.0,
             "rmse": 16.0, "rmse_scale": 0.8, "range": 5100.0, "cosine": 0.999}]
    codes = [f.code for f in evaluate(list(rules.values()), rows)]
    assert codes == ["IN001", "TM007"]  # errors first; QC101 no longer fires at 0.8 with threshold 0.9


def test_policy_rule_mistakes_name_the_policy_line(tmp_path):
    path = policy_with_rules(tmp_path, {
        "disable": ["QC1O1"],
        "params": {"QC101": {"treshold": 0.9}, "QC104": {"max_fraction": "a lot"}},
        "inline": [{"code": "IN001", "name": "inline.x", "scope": "tensor", "severity": "error",
                    "when": "scael > 1", "message": "m", "summary": "S.", "why": "W.", "fix": "F."}],
    })
    policy = load_policy(path)
    lines = path.read_text().splitlines()
    with pytest.raises(PolicyError) as info:
        load_rules(policy.rules, str(path))
    text = str(info.value)
    when_line = next(i for i, line in enumerate(lines, 1) if "scael" in line)
    assert f"{path}:{when_line}: rule IN001: `when` names unknown statistic 'scael'" in text
    # the inline rule is refused first; fix it and the other mistakes show with their lines
    policy.rules.inline[0]["when"] = "scale > 1"
    with pytest.raises(PolicyError) as info:
        load_rules(policy.rules, str(path))
    text = str(info.value)
    line = next(i for i, s in enumerate(lines, 1) if "QC1O1" in s)
    assert f"{path}:{line}: rules.disable: no rule named 'QC1O1'" in text and "did you mean 'QC101'?" in text
    line = next(i for i, s in enumerate(lines, 1) if "treshold" in s)
    assert f"{path}:{line}: rules.params.QC101: rule QC101 has no parameter 'treshold' (it has: threshold)" in text
    line = next(i for i, s in enumerate(lines, 1) if "a lot" in s)
    assert f"{path}:{line}: rules.params.QC104.max_fraction must be a number" in text


def test_renamed_rules_keep_answering_to_their_old_names(tmp_path):
    team = write_pack(tmp_path, RULE.format(n=2, when="rmse > limit", message="m").replace(
        "    name: team.rule2\n", "    name: team.new_name\n    aliases: [team.old_name]\n"))
    spec = RulesSpec(packs=[str(team)], params={"team.old_name": {"limit": 5}})
    assert load_rules(spec)[0].params == {"limit": 5}
    spec = RulesSpec(packs=[str(team)], disable=["team.old_name"])
    assert load_rules(spec) == []


def test_a_team_pack_cannot_reuse_a_builtin_code(tmp_path):
    team = write_pack(tmp_path, RULE.format(n=1, when="rmse > limit", message="m").replace("TM001", "QC101"))
    with pytest.raises(PolicyError) as info:
        load_rules(RulesSpec(packs=["builtin", str(team)]))
    assert f"{team}:3: rule code QC101 is already defined at " in str(info.value)
    team = write_pack(tmp_path, RULE.format(n=1, when="rmse > limit", message="m").replace("team.rule1",
                                                                                         "quant.rmse_scale"))
    with pytest.raises(PolicyError) as info:
        load_rules(RulesSpec(packs=["builtin", str(team)]))
    assert f"{team}:3: rule TM001: the name 'quant.rmse_scale' is already rule QC101's" in str(info.value)


# --------------------------------------------------------------------------- evaluation


def test_node_scope_gives_one_finding_per_node_worst_first():
    rule = fresh_builtin()["QC103"]
    rows = [
        {"name": "a0", "kind": "activation", "node": "split", "op_type": "Split", "cosine": 0.98, "sqnr": 1, "rmse_scale": 1},
        {"name": "a1", "kind": "activation", "node": "split", "op_type": "Split", "cosine": 0.90, "sqnr": 1, "rmse_scale": 1},
        {"name": "b", "kind": "activation", "node": "conv", "op_type": "Conv", "cosine": 0.95, "sqnr": 1, "rmse_scale": 1},
    ]
    findings = evaluate([rule], rows)
    assert [(f.node, f.tensor) for f in findings] == [("split", "a1"), ("conv", "b")]  # 1 - cosine: 0.10, 0.05
    assert findings[0].score == pytest.approx(0.10)


def test_a_rank_that_cannot_be_computed_sorts_last_not_as_zero(tmp_path):
    """`rank: -weight_error_share` on rows where the share is missing: no score (None), after every ranked
    finding of the rule, even those with negative scores (a 0 would have put it first)."""
    path = write_pack(tmp_path, RULE.format(n=1, when="rmse_scale > limit", message="m") + "    rank: -weight_error_share\n")
    rule = load_pack(path)[0]
    rows = [{"name": n, "kind": "activation", "node": n, "op_type": "Conv", "rmse_scale": 2.0, "weight_error_share": w}
            for n, w in (("a", 0.9), ("b", None), ("c", 0.1))]
    findings = evaluate([rule], rows)
    assert [(f.tensor, f.score) for f in findings] == [("c", -0.1), ("a", -0.9), ("b", None)]


def test_remedies_follow_what_the_target_allows():
    assert target_allows("cpu", "float_fallback") and target_allows(None, "float_fallback")
    assert not target_allows("npu", "float_fallback") and target_allows("npu", "int16")
    assert not target_allows("mcu", "int16") and not target_allows("edgetpu", "float_fallback")
    rule = fresh_builtin()["QC101"]
    row = {"name": "t", "kind": "activation", "node": "n", "op_type": "Conv", "rmse": 2.0, "scale": 1.0,
           "rmse_scale": 2.0, "range": 255.0, "cosine": 0.9}
    assert evaluate([rule], [row], "cpu")[0].remedies == ["keep_float", "int16_activations", "per_channel",
                                                            "calibration_method"]
    assert evaluate([rule], [row], "npu")[0].remedies == ["int16_activations", "per_channel", "calibration_method"]
    assert evaluate([rule], [row], "mcu")[0].remedies == ["per_channel", "calibration_method"]
    assert remedies_for(["qat"], "mcu") == ["qat"]
    # an Edge TPU quantizes weights per tensor: per_channel is not proposed; skip_first needs float layers
    assert remedies_for(["per_channel", "skip_first", "calibration_method"], "edgetpu") == ["calibration_method"]
    assert remedies_for(["skip_first", "int16_activations"], builtin_profile("gpu")) == ["skip_first"]
    # int16 weights need 16-bit tensors like int16 activations: a GPU target (int16: false) is not offered them
    assert remedies_for(["int16_weights", "keep_float"], "gpu") == ["keep_float"]
    assert remedies_for(["int16_weights", "keep_float"], "cpu") == ["int16_weights", "keep_float"]


def test_model_row_counts_flagged_quantized_nodes_and_reads_the_verdict():
    findings = [{"severity": "warning", "node": "conv1"}, {"severity": "error", "node": "conv1"},
                {"severity": "info", "node": "conv2"}, {"severity": "warning", "node": "float_node"}]
    row = model_row("mcu", ["conv1", "conv2", "conv3", "conv4"], ["float_node"], {"status": "fail", "failed": 1},
                    {"cosine": 0.97, "sqnr": 15.0}, findings)
    assert row["flagged_nodes"] == 1 and row["flagged_fraction"] == 0.25  # info and float nodes do not count
    assert row["float_nodes"] == 1 and row["float_fraction"] == pytest.approx(0.2)
    assert row["requirements_met"] is False and row["worst_cosine"] == 0.97
    assert not row["target_float_fallback"] and not row["target_int16"]
    assert set(row) == set(MODEL_STATISTICS)
    qat = evaluate_model([fresh_builtin()["QC112"]], row, "mcu")
    assert [f.code for f in qat] == ["QC112"] and qat[0].remedies == ["qat"]
    none = model_row(None, ["a"], [], {"status": "no-requirements", "failed": 0}, {"cosine": 0.9}, [])
    assert none["requirements_met"] is None and check(fresh_builtin()["QC112"], none) is None


def test_needed_statistics_are_what_conditions_evidence_and_messages_read():
    rules = fresh_builtin()
    assert needed_statistics([rules["QC101"]]) == {"rmse", "scale", "rmse_scale", "range", "cosine"}
    assert "weight_error_share" in needed_statistics(list(rules.values()))
    assert needed_statistics([rules["QC111"]]) == set()  # model scope reads no tensor statistic


# --------------------------------------------------------------------------- command line


def test_qcheck_rules_lists_the_policy_packs_and_prints_one_rule(tmp_path, capsys):
    path = policy_with_rules(tmp_path, {"disable": ["QC102"], "inline": [
        {"code": "IN001", "name": "inline.big_scale", "scope": "tensor", "severity": "error", "when": "scale > 10",
         "message": "m", "summary": "Big scale.", "why": "Because it is big.", "fix": "Make it small."}]})
    assert main(["rules", "--policy", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    codes = [line.split()[0] for line in out]
    assert codes == [c for c in sorted(BUILTIN) if c != "QC102"] + ["IN001"]
    assert out[0].split(None, 3) == ["QC101", "warning", "quant.rmse_scale", BUILTIN["QC101"].summary]
    assert main(["rules", "QC104"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("QC104 range.clipping (warning, tensor scope, pack builtin)")
    assert "parameters: max_fraction = 0.001, overshoot_steps = 8" in text
    assert " ".join(text.split("Why it matters")[1].split("How to fix")[0].split()) == BUILTIN["QC104"].why
    assert main(["rules", "QC999"]) == 2
    assert main(["rules", "--stats"]) == 0
    assert "requirements_met" in capsys.readouterr().out
