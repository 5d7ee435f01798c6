"""JSON Schema errors rewritten as sentences that point at a file's line (policy, target profile, rule pack)."""

from __future__ import annotations

import difflib
from typing import Any

import jsonschema

from qcheck.errors import Problem
from qcheck.policy.yaml_spans import line_of


def schema_problems(doc: Any, schema: dict, filename: str, what: str = "the policy") -> list[Problem]:
    """Every schema violation in `doc`, as sentences pointing at lines, sorted by line. `what`: the document's
    kind as a sentence names it ("the lock file")."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in validator.iter_errors(doc):
        problems.extend(_explain(error, doc, filename, what))
    unique = {(p.line or 0, p.message): p for p in problems}
    return [unique[k] for k in sorted(unique)]


def _explain(error: jsonschema.ValidationError, doc: Any, filename: str, what: str) -> list[Problem]:
    path = list(error.absolute_path)
    where = _describe_path(path)
    line = line_of(doc, path)
    if error.validator == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}).keys())
        extras = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        out = []
        for key in extras:
            guess = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f" (did you mean '{guess[0]}'?)" if guess else (f" (allowed: {', '.join(allowed)})" if allowed else "")
            out.append(Problem(f"unknown key '{key}'{' in ' + where if where else ''}{hint}", filename, line_of(doc, path + [key])))
        return out
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        place = f"'{where}'" if where else what
        return [Problem(f"{place} is missing the required key '{missing}'", filename, line)]
    if error.validator == "anyOf":
        # Pick the alternative whose type matches what was written, and explain that one.
        for sub in sorted(error.context, key=lambda e: len(list(e.absolute_path)), reverse=True):
            if sub.validator != "type":
                return _explain(sub, doc, filename, what)
        kinds = [s.get("type", "?") for s in error.schema.get("anyOf", []) if isinstance(s, dict)]
        kinds = [k for k in kinds if k != "?"] or ["string", "mapping"]
        return [Problem(f"'{where}' must be a {' or a '.join(_type_word(k) for k in kinds)}, got {_show(error.instance)}", filename, line)]
    if error.validator == "type":
        expected = error.validator_value
        expected = expected if isinstance(expected, list) else [expected]
        return [Problem(f"'{where}' must be {' or '.join(_article(_type_word(t)) for t in expected)}, got {_show(error.instance)}", filename, line)]
    if error.validator == "enum":
        options = ", ".join(str(v) for v in error.validator_value)
        guess = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        hint = f" (did you mean '{guess[0]}'?)" if guess else ""
        return [Problem(f"'{where}' must be one of: {options}; got {_show(error.instance)}{hint}", filename, line)]
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return [Problem(f"'{where}' must be {words[error.validator]} {error.validator_value}, got {_show(error.instance)}", filename, line)]
    if error.validator in ("minItems", "maxItems"):
        n = error.validator_value
        return [Problem(f"'{where}' must have {'at least' if error.validator == 'minItems' else 'at most'} {n} item{'s' if n != 1 else ''}", filename, line)]
    if error.validator == "minLength":
        return [Problem(f"'{where}' must not be empty", filename, line)]
    if error.validator == "pattern":
        return [Problem(f"'{where}': {_show(error.instance)} does not match the expected form {error.validator_value}", filename, line)]
    if error.validator == "propertyNames":
        return [Problem(f"'{where}': name {_show(error.instance)} is not allowed (use letters, digits and _)", filename, line)]
    return [Problem(f"'{where or 'policy'}': {error.message}", filename, line)]


def _describe_path(path: list) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _type_word(t: str) -> str:
    return {"object": "mapping", "array": "list", "integer": "integer", "number": "number",
            "string": "string", "boolean": "boolean (true/false)"}.get(t, t)


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) < 60 else text[:57] + "..."
