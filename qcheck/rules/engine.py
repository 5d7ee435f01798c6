"""The rule engine: typed rules and findings, conditions over statistics evaluated, findings out.

A rule names statistics (see `results.layer_columns.TENSOR_STATISTICS`, and for
model-scope rules `rules.model_row.MODEL_STATISTICS`) and parameters in its
condition, `rmse / scale > threshold`. Packs are read and checked by
`rules.packs`: the schema (file:line for every problem), the condition (parsed
by the safe evaluator in `policy.expr`; unknown names are refused with the list
of known ones) and the message template (only `{name}` and `{name:.2f}` forms).

Scopes: `tensor` rules see every measured tensor; `node` rules see the output
activations of quantized nodes and give at most one finding per node (its
worst output); `output` rules see the model's outputs; `model` rules see one
row of model statistics. A policy selects packs, disables rules, overrides
parameters and may add inline rules (`rules.inline`), checked the same way.
"""

from __future__ import annotations

import math
import re
import string
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Any

from qcheck.policy.expr import Expression, NotApplicable
from qcheck.results.layer_columns import TENSOR_STATISTICS
from qcheck.rules.model_row import MODEL_STATISTICS, remedies_for

SEVERITIES = ("error", "warning", "info")
SCOPES = ("tensor", "node", "output", "model")
MAX_FORMAT_WIDTH = 64  # `{rmse:>3000000000}` would build a 3 GB message
FORMAT_SPEC = re.compile(r"^[<>^=+\- #0-9,._%a-zA-Z]*$")
_INPUT_NODE = "(input)"  # measure's producer name for graph inputs


def statistics_for(scope: str, layer_metrics: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """The names a condition of this scope may use; `layer_metrics`: the policy's own per-tensor statistics."""
    if scope == "model":
        return MODEL_STATISTICS
    return {**TENSOR_STATISTICS, **dict.fromkeys(layer_metrics, "a layer metric the policy declares")}


@dataclass
class Rule:
    code: str
    name: str
    scope: str
    severity: str
    when: Expression
    message: str
    summary: str
    why: str
    fix: str
    params: dict[str, Any] = field(default_factory=dict)
    kinds: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)
    schemes: list[str] = field(default_factory=list)  # applies_to.schemes: empty = every scheme
    evidence: list[str] = field(default_factory=list)
    rank: Expression | None = None
    message_names: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    pack: str = ""
    source: str = ""  # file:line of the rule

    @property
    def needs(self) -> set[str]:
        """The statistics this rule reads (its condition, evidence and rank)."""
        names = set(self.when.names) | set(self.evidence) | set(self.message_names)
        names |= set(self.rank.names) if self.rank else set()
        return names - set(self.params)

    def doc(self) -> dict:
        """The rule's documentation as plain data (for `qcheck rules`, the report and the docs)."""
        return {"code": self.code, "name": self.name, "scope": self.scope, "severity": self.severity,
                "when": self.when.text, "params": dict(self.params), "kinds": list(self.kinds),
                "op_types": list(self.op_types), "summary": self.summary, "why": self.why, "fix": self.fix,
                "remedies": list(self.remedies), "pack": self.pack, "aliases": list(self.aliases),
                "reads": sorted(self.needs), "source": self.source,
                "schemes": list(self.schemes)}


@dataclass
class Finding:
    code: str
    rule: str
    severity: str
    scope: str
    message: str
    tensor: str | None = None
    node: str | None = None
    op_type: str | None = None
    kind: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # the thresholds the evidence was held against
    remedies: list[str] = field(default_factory=list)
    score: float | None = 0.0  # larger is worse, within one rule; None: the rule's `rank:` cannot be computed here

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- loading


def needed_statistics(rules: list[Rule]) -> set[str]:
    """Every tensor statistic some rule reads: measurement can skip the rest."""
    out: set[str] = set()
    for r in rules:
        if r.scope != "model":
            out |= r.needs
    return out


# --------------------------------------------------------------------------- evaluating


def rows_in_scope(rule: Rule, rows: list[dict]) -> list[dict]:
    """The rows a tensor/node/output rule looks at."""
    out = []
    for row in rows:
        if rule.scope in ("node", "output") and row.get("kind") != "activation":
            continue
        if rule.scope == "node" and (not row.get("node") or row.get("node") == _INPUT_NODE):
            continue
        if rule.scope == "output" and not row.get("is_output"):
            continue
        if rule.kinds and row.get("kind") not in rule.kinds:
            continue
        if rule.op_types and row.get("op_type") not in rule.op_types:
            continue
        out.append(row)
    return out


# A condition raising one of these met a statistic of a type it cannot take (a string compared with a
# number, a list where a number belongs): a bug in the rule or in the statistic, reported as a finding.
CONDITION_ERRORS = (TypeError, ValueError, ZeroDivisionError, OverflowError)


def check(rule: Rule, row: dict) -> bool | None:
    """Whether the rule fires on this row; None when it does not apply (a value it needs is missing).

    Raises one of CONDITION_ERRORS when the condition cannot be evaluated on the row's values."""
    env = {**row, **rule.params}
    try:
        return bool(rule.when.evaluate(env))
    except NotApplicable:
        return None


def condition_error(rule: Rule, failures: list[tuple[dict, Exception]]) -> Finding:
    """One error finding for a rule whose condition raised on some rows: the rule did not run there, and a
    rule that silently does not run would pass a model it should have stopped."""
    row, exc = failures[0]
    where = f" on tensor '{row['name']}'" if row.get("name") else ""
    reads = sorted(rule.when.names - set(rule.params))
    types = ", ".join(f"{n}: {type(row.get(n)).__name__}" for n in reads)
    more = f" (and on {len(failures) - 1} more row(s))" if len(failures) > 1 else ""
    return Finding(
        code=rule.code, rule=rule.name, severity="error", scope=rule.scope,
        message=f"the condition `{rule.when.text}` could not be evaluated{where}{more}: {type(exc).__name__}: "
                f"{exc} ({types}); the rule was not applied there. Fix the rule ({rule.source}) or report this",
        evidence={"condition_error": f"{type(exc).__name__}: {exc}", "rows": len(failures)},
        params=dict(rule.params), score=float(len(failures)),
    )


def applies_to_scheme(rule: Rule, scheme: str | None) -> bool:
    return not (scheme and rule.schemes and scheme not in rule.schemes)


def evaluate(rules: list[Rule], rows: list[dict], target=None, scheme: str | None = None,
             weights_per_channel: bool = False) -> list[Finding]:
    """Findings of every tensor-, node- and output-scope rule; see `sort_findings` for the order.
    `weights_per_channel`: the recipe already quantizes weights per channel (so no finding proposes it)."""
    findings = []
    for rule in rules:
        if rule.scope == "model" or not applies_to_scheme(rule, scheme):
            continue
        per_node: dict[str, Finding] = {}
        failures = []
        for row in rows_in_scope(rule, rows):
            try:
                fires = check(rule, row)
            except CONDITION_ERRORS as exc:
                failures.append((row, exc))
                continue
            if not fires:
                continue
            f = _finding(rule, row, target, weights_per_channel)
            if rule.scope == "node":
                best = per_node.get(row["node"])
                if best is None or _rank_key(f) > _rank_key(best):
                    per_node[row["node"]] = f
            else:
                findings.append(f)
        findings.extend(per_node.values())
        if failures:
            findings.append(condition_error(rule, failures))
    return by_effect(sort_findings(findings), rows)


def evaluate_model(rules: list[Rule], model_row: dict, target: str | None = None) -> list[Finding]:
    """Findings of the model-scope rules on the run's model statistics (`model_stats.model_row`)."""
    findings = []
    for rule in rules:
        if rule.scope != "model":
            continue
        try:
            if check(rule, model_row):
                findings.append(_finding(rule, model_row, target))
        except CONDITION_ERRORS as exc:
            findings.append(condition_error(rule, [(model_row, exc)]))
    return sort_findings(findings)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then info; within a severity by rule; within a rule the worst first."""
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.code, -_rank_key(f), f.tensor or ""))


def _rank_key(finding: Finding) -> float:
    return -math.inf if finding.score is None else finding.score


def by_effect(findings: list[Finding], rows: list[dict]) -> list[Finding]:
    """Findings on nodes the sensitivity analysis ranked come first, in that rank (quantizing the node alone costs
    the most of the ranking metric, which is the failing requirement's metric by default); the others follow in
    `sort_findings` order. Severity alone is a poor key: a clipping warning on 0.002 % of values outranks nothing."""
    rank = {r["node"]: r["sensitivity_rank"] for r in rows if r.get("node") and r.get("sensitivity_rank") is not None}
    if not rank:
        return findings
    position = {id(f): i for i, f in enumerate(findings)}
    return sorted(findings, key=lambda f: (rank.get(f.node, math.inf), position[id(f)]))


def by_recovery(findings: list[Finding], recovered: dict[str, float]) -> list[Finding]:
    """Findings whose proposed remedy, tried on their node, recovers part of the failing requirements' shortfall
    come first, the most recovered first (`recovered`: node -> shortfall recovered, measured by the search); the
    others keep their order (`by_effect`)."""
    position = {id(f): i for i, f in enumerate(findings)}

    def key(f: Finding) -> tuple:
        gain = recovered.get(f.node or "")
        return (0, -gain, position[id(f)]) if gain is not None and gain > 0 else (1, 0.0, position[id(f)])

    return sorted(findings, key=key)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else (math.copysign(1e300, v) if not math.isnan(v) else None)


def _score(rule: Rule, row: dict, env: dict, evidence: dict) -> float | None:
    """How bad the finding is within its rule. A `rank:` that cannot be computed on this row (a statistic it
    reads is missing) gives None, not 0: the finding then comes after every ranked one of its rule."""
    if rule.rank is not None:
        try:
            return _number(rule.rank.evaluate(env))
        except (NotApplicable, TypeError, ValueError, ZeroDivisionError, OverflowError):
            return None
    for v in evidence.values():
        value = _number(v)
        if value is not None:
            return value
    return 0.0


def _finding(rule: Rule, row: dict, target: str | None, weights_per_channel: bool = False) -> Finding:
    env = {**row, **rule.params}
    # declared evidence first (the first one orders findings within a rule by default), then what `when` reads
    evidence = {n: row.get(n) for n in dict.fromkeys(rule.evidence + sorted(rule.when.names - set(rule.params)))}
    if rule.scope == "model":
        where = {}
    else:
        where = {"tensor": row.get("name"), "node": row.get("node"), "op_type": row.get("op_type"),
                 "kind": row.get("kind")}
    return Finding(
        code=rule.code, rule=rule.name, severity=rule.severity, scope=rule.scope,
        message=render_message(rule.message, env), evidence=evidence, params=dict(rule.params),
        remedies=applicable_remedies(remedies_for(rule.remedies, target), row, weights_per_channel), score=_score(rule, row, env, evidence), **where,
    )


# ops whose weights ONNX Runtime can quantize per channel: per_channel changes nothing on any other node
PER_CHANNEL_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def applicable_remedies(remedies: list[str], row: dict, weights_per_channel: bool = False) -> list[str]:
    """The remedies that can change something where the finding is: no per_channel for a node without
    weights (Relu, GlobalAveragePool ...), for a weight already per channel or when the recipe already
    quantizes weights per channel; no int16 activations for a weight. Model-scope rows (no op_type) keep
    them all."""
    out = []
    for remedy in remedies:
        if remedy == "per_channel" and "op_type" in row and (
                weights_per_channel or row["op_type"] not in PER_CHANNEL_OPS
                or (row.get("kind") == "weight" and row.get("per_channel"))):
            continue
        if remedy == "int16_activations" and row.get("kind") in ("weight", "bias"):
            continue
        out.append(remedy)
    return out


class _Values(dict):
    def __missing__(self, key):
        return "n/a"


def render_message(template: str, env: dict) -> str:
    values = _Values()
    for _text, name, spec, _conv in string.Formatter().parse(template):
        if name is None:
            continue
        v = env.get(name)
        if v is None:
            values[name] = "n/a"
        elif isinstance(v, bool):
            values[name] = "yes" if v else "no"
        elif spec and not isinstance(v, (int, float)):
            values[name] = str(v)
        else:
            values[name] = v
    try:
        return template.format_map(values)
    except (ValueError, TypeError):
        return template.format_map(_Values({k: str(v) for k, v in values.items()}))


def count_by_severity(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}


# --------------------------------------------------------------------------- documentation


def format_doc(doc: dict) -> str:
    """One rule's documentation as text (`qcheck rules QC101`); the report's appendix shows the same fields."""
    params = ", ".join(f"{k} = {v}" for k, v in doc["params"].items()) or "none"
    applies = []
    if doc.get("kinds"):
        applies.append("kinds " + ", ".join(doc["kinds"]))
    if doc.get("op_types"):
        applies.append("op types " + ", ".join(doc["op_types"]))
    lines = [f"{doc['code']} {doc['name']} ({doc['severity']}, {doc['scope']} scope, pack {doc['pack']})", "",
             doc["summary"], "", f"when:       {doc['when']}", f"parameters: {params}"]
    if applies:
        lines.append(f"applies to: {'; '.join(applies)}")
    lines.append(f"remedies:   {', '.join(doc['remedies']) or 'none'}")
    if doc.get("reads"):
        lines.append(f"reads:      {', '.join(doc['reads'])}")
    if doc.get("aliases"):
        lines.append(f"aliases:    {', '.join(doc['aliases'])}")
    lines += ["", "Why it matters", textwrap.fill(doc["why"], 88, initial_indent="  ", subsequent_indent="  "),
              "", "How to fix", textwrap.fill(doc["fix"], 88, initial_indent="  ", subsequent_indent="  ")]
    return "\n".join(lines)
