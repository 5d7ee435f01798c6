"""The sweep file: policies × a matrix of overrides -> one job per combination, each a plain-data description.

A sweep file is told from a policy by its top-level `policies:` key. Overrides are
applied to each policy's YAML document before it is validated, so a bad value is
reported like any policy problem, but at the sweep file's line that wrote it.
"""

from __future__ import annotations

import collections
import copy
import glob
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from qcheck.errors import PolicyError, Problem, QcheckError
from qcheck.policy.loader import policy_from_document, read_policy_document
from qcheck.policy.paths import resolve_in
from qcheck.policy.schema_messages import schema_problems
from qcheck.policy.spec import ExecutorSpec, Policy
from qcheck.policy.yaml_spans import LineDict, line_of, load_yaml, to_plain
from qcheck.resources import schema_path


@lru_cache(maxsize=1)
def sweep_schema() -> dict:
    return json.loads(schema_path("sweep.schema.json").read_text(encoding="utf-8"))


def is_sweep_document(doc: Any) -> bool:
    """A sweep file names policies; a policy names a model."""
    return isinstance(doc, dict) and "policies" in doc and "model" not in doc


MAX_GLOB_FOLDERS = 20_000  # a recursive glob over more is a typo, not a zoo
MAX_RUNS = 5000  # runs one sweep file may expand to: a matrix typo must not queue a million runs


@dataclass(frozen=True)
class Override:
    key: str              # dotted path, e.g. quantization.scheme
    value: Any            # plain data
    line: int | None      # the sweep file's line of this value

    @property
    def keys(self) -> list[str]:
        return self.key.split(".")


@dataclass
class Job:
    """One run of a sweep, as plain data a worker process (or a Ray task) receives."""

    policy: str                       # the policy file
    policy_name: str                  # its folder name under runs/
    combination: str                  # the combination's folder name
    overrides: list[Override]
    out: str                          # the run's output folder
    sweep_file: str
    fingerprint: str | None = None    # filled in by the driver (see fingerprint.py)

    @property
    def run_id(self) -> str:
        return f"{self.policy_name}/{self.combination}"

    @property
    def settings(self) -> dict:
        return {o.key: o.value for o in self.overrides}


@dataclass
class SweepSpec:
    path: Path
    out: Path
    executor: ExecutorSpec
    jobs: list[Job] = field(default_factory=list)


def load_sweep(path: Path, out: Path | None = None) -> SweepSpec:
    """Read and validate a sweep file; expand its policies and matrix into jobs. Raises PolicyError."""
    path = Path(path)
    try:
        doc = load_yaml(path, what="sweep file")
    except QcheckError as exc:
        raise PolicyError(exc.problems) from None
    if not isinstance(doc, dict):
        raise PolicyError(Problem("a sweep file must be a YAML mapping (policies:, matrix:, ...)", str(path), 1))
    problems = schema_problems(doc, sweep_schema(), str(path), "the sweep file")
    if problems:
        raise PolicyError(problems)
    folder = path.resolve().parent
    policies = _policy_files(doc, folder, str(path))
    out = Path(out) if out else folder / doc.get("out", "sweep-out")
    names = _policy_names(policies, folder)
    count = math.prod(len(values) for values in (doc.get("matrix") or {}).values())  # before building them
    if len(policies) * count > MAX_RUNS:
        raise PolicyError(Problem(f"the sweep expands to {len(policies) * count:,} runs ({len(policies)} "
                                  f"polic{'y' if len(policies) == 1 else 'ies'} x {count:,} combinations); "
                                  f"at most {MAX_RUNS:,}", str(path), line_of(doc, ["matrix"]),
                                  hint="split it into several sweep files, or drop values from the matrix"))
    combos = combinations(doc)
    combo_names = unique_names(combos)
    jobs = [Job(policy=str(p), policy_name=names[p], combination=name, overrides=combo,
                out=str(out / "runs" / names[p] / name), sweep_file=str(path))
            for p in policies for combo, name in zip(combos, combo_names)]
    return SweepSpec(path=path, out=out.resolve(), executor=ExecutorSpec.from_document(doc.get("executor", "local")), jobs=jobs)


def _policy_files(doc: dict, folder: Path, file: str) -> list[Path]:
    entries = doc["policies"] if isinstance(doc["policies"], list) else [doc["policies"]]
    found: list[Path] = []
    problems = []
    for i, entry in enumerate(entries):
        pattern = str(resolve_in(folder, entry))
        keys = ["policies", i] if isinstance(doc["policies"], list) else ["policies"]
        if glob.has_magic(entry) and too_wide(pattern):
            problems.append(Problem(f"the glob '{entry}' would search more than {MAX_GLOB_FOLDERS:,} folders", file,
                                    line_of(doc, keys), hint="start it at the folder that holds the policies"))
            continue
        matches = sorted(Path(m).resolve() for m in glob.glob(pattern, recursive=True)) if glob.has_magic(entry) \
            else [Path(pattern).resolve()]
        if not matches or not all(m.is_file() for m in matches):
            problems.append(Problem(f"no policy file {'matches' if glob.has_magic(entry) else 'at'} '{entry}'", file,
                                    line_of(doc, keys), hint="paths and globs start at the sweep file's folder"))
        if glob.has_magic(entry):  # a glob like *.yaml also matches sweep files, this one included
            matches = [m for m in matches if not is_sweep_file(m)]
        found += [m for m in matches if m not in found]
    if problems:
        raise PolicyError(problems)
    return found


def too_wide(pattern: str) -> bool:
    """Whether a recursive glob would walk more than MAX_GLOB_FOLDERS folders (`/**/*.yaml` walks the whole disk)."""
    if "**" not in pattern:
        return False
    parts = Path(pattern).parts
    root = Path(*parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))] or ["."])
    walked = 0
    for _ in os.walk(root):  # followlinks=False: a symlink loop is not walked forever
        walked += 1
        if walked > MAX_GLOB_FOLDERS:
            return True
    return False


def is_sweep_file(path: Path) -> bool:
    """Whether the file at `path` is a sweep file (False when it is unreadable: its loader says why, with the line)."""
    try:
        return is_sweep_document(load_yaml(path))
    except QcheckError:
        return False


def _policy_names(policies: list[Path], folder: Path) -> dict[Path, str]:
    """Folder names under runs/: the file's stem, or its path from the sweep folder when stems repeat."""
    stems = [p.stem for p in policies]
    names = {}
    for p in policies:
        if stems.count(p.stem) == 1:
            names[p] = _slug(p.stem)
        else:
            rel = p.with_suffix("").relative_to(folder) if p.is_relative_to(folder) else p.with_suffix("")
            names[p] = _slug("-".join(rel.parts[-3:]))
    return names


def combinations(doc: dict) -> list[list[Override]]:
    """Every combination of one value per matrix key (one empty combination without a matrix)."""
    matrix = doc.get("matrix") or {}
    axes = [[Override(key, to_plain(v), line_of(doc, ["matrix", key, i])) for i, v in enumerate(values)]
            for key, values in matrix.items()]
    return [list(c) for c in itertools.product(*axes)]


def combination_name(combo: list[Override]) -> str:
    """A folder name from the values: scheme-int8_target-npu (`default` without overrides)."""
    if not combo:
        return "default"
    parts = []
    for o in combo:
        value = o.value if isinstance(o.value, (str, int, float, bool)) else json.dumps(o.value, sort_keys=True)
        parts.append(f"{o.keys[-1]}-{value}")
    return _slug("_".join(parts))


def unique_names(combos: list[list[Override]]) -> list[str]:
    """combination_name for each, with a short hash of the overrides added where two names would be one folder
    (values that differ only in punctuation, keys with the same last part, names cut at 120 characters)."""
    names = [combination_name(c) for c in combos]
    counts = collections.Counter(names)
    return [name if counts[name] == 1 else f"{name[:110]}-{_digest(combo)}" for name, combo in zip(names, combos)]


def _digest(combo: list[Override]) -> str:
    text = json.dumps([[list(o.keys), o.value] for o in combo], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:120] or "run"


def job_policy(job: Job) -> Policy:
    """The job's policy: its file with the overrides applied, validated. Raises PolicyError naming the sweep line
    of an override that makes it invalid, or the policy's own line when the policy alone is invalid."""
    path = Path(job.policy)
    base = read_policy_document(path)
    try:
        return policy_from_document(path, apply_overrides(base, job.overrides, job.sweep_file))
    except PolicyError as exc:
        raise PolicyError(_blame(path, base, job, exc.problems)) from None


def apply_overrides(base: LineDict, overrides: list[Override], sweep_file: str) -> LineDict:
    doc = copy.deepcopy(base)
    for o in overrides:
        node = doc
        for depth, key in enumerate(o.keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = LineDict()
            if not isinstance(child, dict):
                where = ".".join(o.keys[:depth + 1])
                raise PolicyError(Problem(f"override '{o.key}': the policy's '{where}' is not a mapping, so it has no "
                                          f"key '{o.keys[depth + 1]}'", sweep_file, o.line,
                                          hint=f"override '{where}' as a whole instead"))
            node = child
        node[o.keys[-1]] = copy.deepcopy(o.value)
    return doc


def _blame(path: Path, base: LineDict, job: Job, problems: list[Problem]) -> list[Problem]:
    """Problems the policy has on its own stay at its lines; the others go to the override that causes them."""
    own = {p.message for p in _problems_of(path, base)}
    blamed = []
    for p in problems:
        if p.message in own or p.file == job.sweep_file:
            blamed.append(p)
            continue
        culprit = next((o for o in job.overrides
                        if p.message in {q.message for q in _problems_of(path, apply_overrides(base, [o], job.sweep_file))}),
                       None)
        if culprit is not None:
            blamed.append(Problem(f"{p.message} (override {culprit.key}: {json.dumps(culprit.value)} on "
                                  f"{path.name})", job.sweep_file, culprit.line, p.hint))
        else:  # only this combination of values is wrong
            together = ", ".join(f"{o.key}: {json.dumps(o.value)}" for o in job.overrides)
            blamed.append(Problem(f"{p.message} (overrides {together} together on {path.name})", job.sweep_file,
                                  job.overrides[0].line if job.overrides else None, p.hint))
    return blamed


def _problems_of(path: Path, doc: LineDict) -> list[Problem]:
    try:
        policy_from_document(path, doc)
    except PolicyError as exc:
        return exc.problems
    return []
