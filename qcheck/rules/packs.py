"""Rule packs: YAML files (and a policy's inline rules) read, checked and typed into `Rule`s.

Every problem is reported at once with its file and line: the schema, the condition (unknown names
refused with the known ones), the message template, parameter types and NaN.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import string
from pathlib import Path
from typing import Any

from qcheck.errors import PolicyError, Problem
from qcheck.policy.expr import ExprError, Expression
from qcheck.policy.schema_messages import schema_problems
from qcheck.policy.spec import RulesSpec
from qcheck.policy.yaml_spans import LineDict, line_of, load_yaml
from qcheck.resources import builtin_pack_path, schema_path
from qcheck.rules.engine import FORMAT_SPEC, MAX_FORMAT_WIDTH, Rule, statistics_for


def _rule_schema() -> dict:
    return json.loads(schema_path("rulepack.schema.json").read_text(encoding="utf-8"))


def load_pack(path: Path, layer_metrics: tuple[str, ...] | list[str] = ()) -> list[Rule]:
    """Every rule of one pack file; every problem in it at once, with file:line. `layer_metrics`: the names
    the policy declares under `layer_metrics:`, which conditions may read too."""
    doc = load_yaml(path, what="rule pack")
    if not isinstance(doc, dict):
        raise PolicyError(Problem("a rule pack must be a YAML mapping with `pack:` and `rules:`", str(path), 1))
    problems = schema_problems(doc, _rule_schema(), str(path), "the rule pack")
    if problems:
        raise PolicyError(problems)
    rules, problems = _build_rules(doc["rules"], doc["pack"], str(path), doc, ["rules"], layer_metrics)
    if problems:
        raise PolicyError(problems)
    return rules


def load_inline(spec_doc: LineDict, policy_file: str, layer_metrics: tuple[str, ...] | list[str] = ()) -> list[Rule]:
    """The rules written in a policy under `rules.inline`, checked like a pack, lines in the policy."""
    root = LineDict(rules=spec_doc)
    root.line = getattr(spec_doc, "line", None)
    root.lines = {"rules": root.line}
    schema = _rule_schema()
    wrapper = {"$defs": schema["$defs"], "type": "object", "properties": {"rules": {
        "type": "object", "properties": {"inline": {"type": "array", "items": {"$ref": "#/$defs/rule"}}}}}}
    problems = schema_problems(root, wrapper, policy_file)
    if problems:
        raise PolicyError(problems)
    rules, problems = _build_rules(spec_doc.get("inline") or [], "inline", policy_file, root, ["rules", "inline"],
                                   layer_metrics)
    if problems:
        raise PolicyError(problems)
    return rules


def _build_rules(raws: list, pack: str, file: str, root: Any, prefix: list,
                 layer_metrics: tuple[str, ...] | list[str] = ()) -> tuple[list[Rule], list[Problem]]:
    rules, problems = [], []
    seen: dict[str, int | None] = {}
    for i, raw in enumerate(raws):
        line = line_of(root, prefix + [i])
        if raw["code"] in seen:
            problems.append(Problem(f"rule code {raw['code']} is used twice (first at line {seen[raw['code']]})", file, line))
            continue
        seen[raw["code"]] = line
        try:
            rules.append(_build_rule(raw, pack, f"{file}:{line}", layer_metrics))
        except _FieldError as exc:
            problems.append(Problem(f"rule {raw['code']}: {exc.message}", file, line_of(root, prefix + [i, exc.key]),
                                    hint=exc.hint))
    return rules, problems


class _FieldError(Exception):
    def __init__(self, key: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.key, self.message, self.hint = key, message, hint


def _names_hint(name: str, known: set[str], scope: str, stats: dict[str, str]) -> str:
    guess = difflib.get_close_matches(name, sorted(known), n=1)
    return ((f"did you mean '{guess[0]}'? " if guess else "") +
            f"known {'model ' if scope == 'model' else ''}statistics: " + ", ".join(sorted(stats)))


def _expression(raw: dict, key: str, known: set[str], stats: dict[str, str]) -> Expression:
    try:
        return Expression(raw[key], known_names=known)
    except ExprError as exc:
        bad = exc.args[1] if len(exc.args) > 1 else None
        what = f"`{key}` names unknown statistic '{bad}'" if bad else f"`{key}`: {exc.args[0]}"
        raise _FieldError(key, what, _names_hint(bad, known, raw["scope"], stats) if bad else None) from None


def _build_rule(raw: dict, pack: str, source: str, layer_metrics: tuple[str, ...] | list[str] = ()) -> Rule:
    scope = raw["scope"]
    stats = statistics_for(scope, layer_metrics)
    params = dict(raw.get("params") or {})
    clash = sorted(set(params) & set(stats))
    if clash:
        raise _FieldError("params", f"parameter name(s) {', '.join(clash)} clash with statistics of the same name")
    nan = sorted(k for k, v in params.items() if _is_nan(v))
    if nan:
        raise _FieldError("params", f"parameter(s) {', '.join(nan)} are NaN: every comparison with NaN is false, so "
                                    "the rule would never fire", "give a number")
    known = set(stats) | set(params)
    when = _expression(raw, "when", known, stats)
    rank = _expression(raw, "rank", known, stats) if raw.get("rank") else None
    for name in raw.get("evidence") or []:
        if name not in known:
            raise _FieldError("evidence", f"evidence names unknown statistic '{name}'", _names_hint(name, known, scope, stats))
    try:
        _check_template(raw["message"], known)
    except ValueError as exc:
        raise _FieldError("message", str(exc)) from None
    applies = raw.get("applies_to") or {}
    if applies and scope == "model":
        raise _FieldError("applies_to", "`applies_to` restricts tensors; a model-scope rule has none")
    return Rule(
        code=raw["code"], name=raw["name"], scope=scope, severity=raw["severity"], when=when,
        message=raw["message"], summary=" ".join(raw["summary"].split()), why=" ".join(raw["why"].split()),
        fix=" ".join(raw["fix"].split()), params=params, kinds=list(applies.get("kind", [])),
        op_types=list(applies.get("op_types", [])), schemes=list(applies.get("schemes", [])),
        evidence=list(raw.get("evidence") or []), rank=rank,
        message_names=[n for _t, n, _s, _c in string.Formatter().parse(raw["message"]) if n],
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
        if conversion or (spec and (not FORMAT_SPEC.match(spec) or "{" in spec)):
            raise ValueError(f"message template: format '{{{field_name}:{spec}}}' is not allowed")
        if any(int(n) > MAX_FORMAT_WIDTH for n in re.findall(r"[0-9]+", spec or "")):
            raise ValueError(f"message template: format '{{{field_name}:{spec}}}' asks for a width or precision over "
                             f"{MAX_FORMAT_WIDTH}")


def load_rules(spec: RulesSpec, policy_file: str | None = None) -> list[Rule]:
    """The rules a policy selects: its packs and inline rules, minus disabled rules, with its parameter overrides."""
    rules: list[Rule] = []
    for pack in spec.packs:
        rules.extend(load_pack(builtin_pack_path() if pack == "builtin" else Path(pack), spec.layer_metrics))
    if spec.inline:
        rules.extend(load_inline(spec.doc if spec.doc is not None else LineDict(inline=spec.inline),
                                 policy_file or "policy", spec.layer_metrics))
    problems = []

    def at(*keys) -> int | None:
        return line_of(spec.doc, list(keys)) if spec.doc is not None else None

    by_code: dict[str, Rule] = {}
    for r in rules:
        if r.code in by_code:
            first = by_code[r.code]
            file, _, line = r.source.rpartition(":")
            problems.append(Problem(f"rule code {r.code} is already defined at {first.source} (pack {first.pack}); "
                                    "codes are never reused: give this rule a new code", file,
                                    int(line) if line.isdigit() else None))
        by_code.setdefault(r.code, r)
    by_key: dict[str, Rule] = {}
    for r in rules:
        for key in [r.code, r.name] + r.aliases:
            other = by_key.setdefault(key, r)
            if other is not r and other.code != r.code:
                file, _, line = r.source.rpartition(":")
                problems.append(Problem(f"rule {r.code}: the name '{key}' is already rule {other.code}'s "
                                        f"({other.source}); names and aliases must be unique", file,
                                        int(line) if line.isdigit() else None))
    for i, key in enumerate(spec.disable):
        if key not in by_key:
            problems.append(Problem(f"rules.disable: no rule named '{key}'", policy_file, at("disable", i),
                                    hint=_closest(key, by_key)))
    for key, overrides in spec.params.items():
        rule = by_key.get(key)
        if rule is None:
            problems.append(Problem(f"rules.params: no rule named '{key}'", policy_file, at("params", key),
                                    hint=_closest(key, by_key)))
            continue
        for p, v in (overrides or {}).items():
            if p not in rule.params:
                problems.append(Problem(f"rules.params.{key}: rule {rule.code} has no parameter '{p}' "
                                        f"(it has: {', '.join(rule.params) or 'none'})", policy_file,
                                        at("params", key, p)))
            elif _is_nan(v):
                problems.append(Problem(f"rules.params.{key}.{p} is NaN: every comparison with NaN is false, so rule "
                                        f"{rule.code} would never fire", policy_file, at("params", key, p),
                                        hint=f"give a number like its default {rule.params[p]!r}"))
            elif not _same_kind(rule.params[p], v):
                problems.append(Problem(f"rules.params.{key}.{p} must be {_kind_word(rule.params[p])} like its "
                                        f"default {rule.params[p]!r}, got {v!r}", policy_file, at("params", key, p)))
            else:
                rule.params[p] = v
    if problems:
        raise PolicyError(problems)
    disabled = {by_key[k].code for k in spec.disable}
    return [r for r in rules if r.code not in disabled]


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _same_kind(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _kind_word(default: Any) -> str:
    return "a boolean" if isinstance(default, bool) else "a number" if isinstance(default, (int, float)) else "a string"


def _closest(key: str, names: dict) -> str | None:
    # codes are easy to mistype as QC1O1 or qc101: compare them normalized first
    norm = {n.upper().replace("O", "0"): n for n in sorted(names)}
    wanted = key.upper().replace("O", "0")
    if wanted in norm:
        return f"did you mean '{norm[wanted]}'?"
    guess = difflib.get_close_matches(key, sorted(names), n=1)
    return f"did you mean '{guess[0]}'?" if guess else None
