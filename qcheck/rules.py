"""The rule engine: rule packs in YAML, conditions over statistics, findings out.

A rule names statistics (see `catalog.TENSOR_STATISTICS`) and parameters in
its condition, `rmse / scale > threshold`. Packs are checked when they load:
the schema (file:line for every problem), the condition (parsed by the safe
evaluator in `expr`; unknown names are refused with the list of known ones)
and the message template (only `{name}` and `{name:.2f}` forms).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qcheck.catalog import TENSOR_STATISTICS
from qcheck.errors import PolicyError, Problem
from qcheck.expr import ExprError, Expression, NotApplicable
from qcheck.policy import RulesSpec, schema_problems
from qcheck.resources import builtin_pack_path, schema_path
from qcheck.yamlsrc import line_of, load_yaml

SEVERITIES = ("error", "warning", "info")
_FORMAT_SPEC = re.compile(r"^[<>^=+\- #0-9,._%a-zA-Z]*$")
_BUILTIN_NAMES = ("abs", "min", "max", "log10", "sqrt")


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
    remedies: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    pack: str = ""
    source: str = ""  # file:line of the rule

    def doc(self) -> dict:
        """The rule's documentation as plain data (for `qcheck rules`, the report and the docs)."""
        return {"code": self.code, "name": self.name, "scope": self.scope, "severity": self.severity,
                "when": self.when.text, "params": dict(self.params), "summary": self.summary, "why": self.why,
                "fix": self.fix, "remedies": list(self.remedies), "pack": self.pack, "aliases": list(self.aliases),
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
    params: dict[str, Any] = field(default_factory=dict)
    remedies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- loading


def load_pack(path: Path) -> list[Rule]:
    doc = load_yaml(path, what="rule pack")
    if not isinstance(doc, dict):
        raise PolicyError(Problem("a rule pack must be a YAML mapping with `pack:` and `rules:`", str(path), 1))
    schema = json.loads(schema_path("rulepack.schema.json").read_text(encoding="utf-8"))
    problems = schema_problems(doc, schema, str(path))
    if problems:
        raise PolicyError(problems)
    rules, problems = [], []
    seen: dict[str, int] = {}
    for i, raw in enumerate(doc["rules"]):
        line = line_of(doc, ["rules", i])
        if raw["code"] in seen:
            problems.append(Problem(f"rule code {raw['code']} is used twice (first at line {seen[raw['code']]})", str(path), line))
            continue
        seen[raw["code"]] = line
        try:
            rules.append(_build_rule(raw, doc["pack"], f"{path}:{line}"))
        except ExprError as exc:
            problems.append(Problem(f"rule {raw['code']}: {exc.args[0]}", str(path), line_of(doc, ["rules", i, "when"]),
                                    hint=_names_hint(exc, raw)))
        except ValueError as exc:
            problems.append(Problem(f"rule {raw['code']}: {exc}", str(path), line_of(doc, ["rules", i, "message"])))
    if problems:
        raise PolicyError(problems)
    return rules


def _names_hint(exc: ExprError, raw: dict) -> str | None:
    if len(exc.args) < 2:
        return None
    known = sorted(set(TENSOR_STATISTICS) | set(raw.get("params") or {}))
    guess = difflib.get_close_matches(exc.args[1], known, n=1)
    return (f"did you mean '{guess[0]}'? " if guess else "") + "known statistics: " + ", ".join(sorted(TENSOR_STATISTICS))


def _build_rule(raw: dict, pack: str, source: str) -> Rule:
    params = dict(raw.get("params") or {})
    clash = sorted(set(params) & set(TENSOR_STATISTICS))
    if clash:
        raise ValueError(f"parameter name(s) {', '.join(clash)} clash with statistics of the same name")
    known = set(TENSOR_STATISTICS) | set(params)
    when = Expression(raw["when"], known_names=known)
    _check_template(raw["message"], known | set(raw.get("evidence") or []))
    for name in raw.get("evidence") or []:
        if name not in known:
            raise ValueError(f"evidence names unknown statistic '{name}'")
    applies = raw.get("applies_to") or {}
    return Rule(
        code=raw["code"], name=raw["name"], scope=raw["scope"], severity=raw["severity"], when=when,
        message=raw["message"], summary=raw["summary"].strip(), why=" ".join(raw["why"].split()),
        fix=" ".join(raw["fix"].split()), params=params, kinds=list(applies.get("kind", [])),
        op_types=list(applies.get("op_types", [])), schemes=list(applies.get("schemes", [])), evidence=list(raw.get("evidence") or []),
        remedies=list(raw.get("remedies") or []), aliases=list(raw.get("aliases") or []), pack=pack, source=source,
    )


def _check_template(template: str, known: set[str]) -> None:
    """Only {name} and {name:spec} with known names: str.format could otherwise reach attributes."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"message template: {exc}") from None
    for _text, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if not field_name.isidentifier() or field_name.startswith("_"):
            raise ValueError(f"message template: '{{{field_name}}}' is not allowed; use {{name}} or {{name:.2f}}")
        if field_name not in known:
            raise ValueError(f"message template names unknown value '{field_name}'")
        if conversion or (spec and (not _FORMAT_SPEC.match(spec) or "{" in spec)):
            raise ValueError(f"message template: format '{{{field_name}:{spec}}}' is not allowed")


def load_rules(spec: RulesSpec, policy_file: str | None = None) -> list[Rule]:
    """The rules a policy selects: its packs, minus disabled rules, with its parameter overrides."""
    rules: list[Rule] = []
    for pack in spec.packs:
        rules.extend(load_pack(builtin_pack_path() if pack == "builtin" else Path(pack)))
    by_key = {}
    for r in rules:
        for key in [r.code, r.name] + r.aliases:
            by_key[key] = r
    problems = []
    for key in spec.disable:
        if key not in by_key:
            problems.append(Problem(f"rules.disable: no rule named '{key}'", policy_file,
                                    hint=_closest(key, by_key)))
    for key, overrides in spec.params.items():
        rule = by_key.get(key)
        if rule is None:
            problems.append(Problem(f"rules.params: no rule named '{key}'", policy_file, hint=_closest(key, by_key)))
            continue
        for p, v in overrides.items():
            if p not in rule.params:
                problems.append(Problem(f"rules.params.{key}: rule {rule.code} has no parameter '{p}' "
                                        f"(it has: {', '.join(rule.params) or 'none'})", policy_file))
            elif isinstance(rule.params[p], (int, float)) and not isinstance(v, (int, float)) or isinstance(v, bool) != isinstance(rule.params[p], bool):
                problems.append(Problem(f"rules.params.{key}.{p} must be a {type(rule.params[p]).__name__}, got {v!r}",
                                        policy_file))
            else:
                rule.params[p] = v
    if problems:
        raise PolicyError(problems)
    disabled = {by_key[k].code for k in spec.disable}
    return [r for r in rules if r.code not in disabled]


def _closest(key: str, names: dict) -> str | None:
    guess = difflib.get_close_matches(key, sorted(names), n=1)
    return f"did you mean '{guess[0]}'?" if guess else None


# --------------------------------------------------------------------------- evaluating


def evaluate(rules: list[Rule], rows: list[dict], scheme: str | None = None) -> list[Finding]:
    """Findings for every tensor-scope rule on every row it applies to; errors first, then by evidence."""
    findings = []
    for rule in rules:
        if rule.scope != "tensor" or (scheme and rule.schemes and scheme not in rule.schemes):
            continue
        for row in rows:
            if rule.kinds and row.get("kind") not in rule.kinds:
                continue
            if rule.op_types and row.get("op_type") not in rule.op_types:
                continue
            env = {**row, **rule.params}
            try:
                hit = bool(rule.when.evaluate(env))
            except NotApplicable:
                continue
            except (TypeError, ValueError, ZeroDivisionError, OverflowError):
                continue  # a value of an unexpected type on this row: the rule does not apply
            if hit:
                findings.append(_finding(rule, row, env))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: (order[f.severity], f.code, -_strength(f)))
    return findings


def _strength(f: Finding) -> float:
    """How far past its threshold a finding is, to list the worst first within a rule."""
    values = [v for v in f.evidence.values() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return values[0] if values else 0.0


def _finding(rule: Rule, row: dict, env: dict) -> Finding:
    # declared evidence first (the first one orders findings within a rule), then what `when` reads
    evidence = {n: row.get(n) for n in dict.fromkeys(rule.evidence + sorted(rule.when.names - set(rule.params)))}
    return Finding(
        code=rule.code, rule=rule.name, severity=rule.severity, scope=rule.scope,
        message=render_message(rule.message, env), tensor=row.get("name"), node=row.get("node"),
        op_type=row.get("op_type"), kind=row.get("kind"), evidence=evidence, params=dict(rule.params),
        remedies=list(rule.remedies),
    )


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
