"""Read results.json: the one loader `qcheck report` and `qcheck diff` use.

It refuses what is not a qcheck results file (exit 2, naming the file and
the first bad key), upgrades files an older qcheck wrote to the current
schema version, and checks the result against the published JSON Schema
(qcheck/schema/results.schema.json), so readers can index every key the
schema guarantees.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import jsonschema

from qcheck.errors import Problem, QcheckError
from qcheck.results.schema import SCHEMA_VERSION, json_schema


def _complete(data: dict) -> None:
    """Fill keys added during version 1's life with what their absence meant (idempotent).

    Files of version 1 may lack them; it also runs on current files, so a file trimmed by hand (or by a
    tool that drops null parts) reads as an old one would instead of being refused.
    """
    for section in ("compare", "analyses", "search", "given"):
        data.setdefault(section, None)
    data.setdefault("model_statistics", {})
    data.setdefault("finding_counts", {})
    data.setdefault("timings", {})
    data.setdefault("peak_memory_mb", {})
    data.setdefault("layer_metrics", [])
    data.setdefault("graph", [])
    if isinstance(data.get("measure"), dict):  # files before the twin ran only when read: everything was measured
        data["measure"].setdefault("not_computed", {})
    # before per-stage peaks: each figure was the process's peak up to the end of that stage
    data.setdefault("peak_memory_method", "cumulative: the process's peak resident memory up to the end of each stage")
    verdict = data.get("verdict")
    if isinstance(verdict, dict):
        verdict.setdefault("failing_metrics", [])
    for rule in data.get("rules") or []:
        if isinstance(rule, dict):
            for key, empty in (("scope", "tensor"), ("pack", ""), ("when", ""), ("params", {}), ("kinds", []),
                               ("op_types", []), ("remedies", []), ("reads", [])):
                rule.setdefault(key, empty)
    search = data.get("search")
    if isinstance(search, dict):
        for key, value in (("cost", "profile"), ("ranking_source", "the ranking"), ("proposed", {}),
                           ("findings_measured", False), ("stopped_by", None), ("notes", []), ("pareto", []),
                           ("recommendation", None)):
            search.setdefault(key, value)
    analyses = data.get("analyses")
    if isinstance(analyses, dict):
        for key, value in (("sensitivity", None), ("curves", None), ("distributions", None), ("confirm", None),
                           ("float_runs", 0), ("activations", None), ("notes", []), ("timings", {})):
            analyses.setdefault(key, value)
    quantization = data.get("quantization")
    if isinstance(quantization, dict) and "lock" not in data:  # before the lock file: the run ends with its own recipe
        data["lock"] = {"file": None, "quantized_model": quantization.get("quantized_model"),
                        "recipe": quantization.get("recipe"), "recipe_key": quantization.get("recipe_key"),
                        "ranges_file": quantization.get("ranges_file")}


# version -> the step that brings a file of that version to the next one (1 -> 2 added only the schema)
UPGRADES: dict[int, Callable[[dict], None]] = {1: _complete}


def upgrade(data: dict) -> dict:
    """Bring a results document of any earlier version to SCHEMA_VERSION, in place."""
    while data["schema_version"] < SCHEMA_VERSION:
        UPGRADES[data["schema_version"]](data)
        data["schema_version"] += 1
    _complete(data)
    return data


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schema())


def _where(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    if error.validator == "required":  # name the missing key itself, not the object that lacks it
        missing = [k for k in error.validator_value if k not in error.instance]
        path.append(missing[0] if missing else "?")
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(alt: dict) -> str:
    if alt.get("$ref", "").endswith("/number"):
        return "a number"
    if "enum" in alt:
        return "one of " + ", ".join(map(repr, alt["enum"]))
    words = {"object": "an object", "array": "a list", "string": "text", "integer": "an integer", "null": "null",
             "boolean": "true/false", "number": "a number"}
    return words.get(alt.get("type"), "as the schema says")


def check(data: dict, file: str) -> None:
    """Refuse a document that does not fit the schema, naming the first bad key."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is None:
        return
    where = _where(error)
    if error.validator == "required":
        what = "is missing"
    elif error.validator == "anyOf":  # jsonschema's own text would print the whole value
        what = f"is wrong: {_short(error.instance)} is not {' or '.join(_kind(alt) for alt in error.validator_value)}"
    else:
        tail = error.message.rsplit(" is ", 1)[-1] if " is " in error.message else error.message
        what = f"is wrong: {_short(error.instance)} is {tail}"
    raise QcheckError(Problem(f"not a valid qcheck results file: key '{where}' {what}", file=file,
                              hint="run `qcheck run` again to write a fresh results.json"))


def read_results(path: Path) -> dict:
    """results.json as the current schema version (strings "inf"/"nan" still encoded; see files.decode)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QcheckError(Problem("results file not found", file=str(path))) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QcheckError(Problem(f"not a qcheck results file (invalid JSON: {exc})", file=str(path))) from None
    except IsADirectoryError:
        raise QcheckError(Problem("a folder, not a results file", file=str(path))) from None
    except RecursionError:
        raise QcheckError(Problem("not a qcheck results file (nested too deeply)", file=str(path))) from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or "tensors" not in data or type(version) is not int or version < 1:
        raise QcheckError(Problem("not a qcheck results file (no schema_version/tensors)", file=str(path)))
    if version > SCHEMA_VERSION:
        raise QcheckError(Problem(f"results written by a newer qcheck (schema {version})", file=str(path),
                                  hint="upgrade qcheck to render it"))
    check(upgrade(data), str(path))
    return data
