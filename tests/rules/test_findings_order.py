"""Findings ordered by measured effect: a node the sensitivity analysis ranks high comes before a more severe
finding on a node that costs nothing when quantized alone."""

from qcheck.rules.engine import Finding, by_effect, sort_findings


def _f(code, severity, node, score=0.0):
    return Finding(code, code.lower(), severity, "tensor", f"{code} on {node}", tensor=f"{node}:0", node=node,
                   score=score)


def test_findings_on_sensitive_nodes_come_first_whatever_their_severity():
    findings = sort_findings([_f("QC101", "error", "stem", 5.0), _f("QC106", "warning", "concat", 1.0),
                              _f("QC101", "error", "mid", 9.0), _f("QC120", "info", "unranked")])
    assert [f.node for f in findings] == ["mid", "stem", "concat", "unranked"]  # by severity: the old order
    rows = [{"node": "concat", "sensitivity_rank": 1}, {"node": "stem", "sensitivity_rank": 7},
            {"node": "mid", "sensitivity_rank": 3}, {"node": "unranked"}]
    assert [f.node for f in by_effect(findings, rows)] == ["concat", "mid", "stem", "unranked"]
    assert by_effect(findings, [{"node": "stem"}]) == findings  # no sensitivity measured: order unchanged
