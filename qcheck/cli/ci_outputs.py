"""CI-native outputs of `qcheck run` and `qcheck diff`: JUnit XML and a Markdown summary.

JUnit: one test case per `require:` line (its failure message: the values and the line) and one per
error-severity finding, so Jenkins, GitLab and GitHub test reporters show them natively. Markdown:
verdict, requirements, the next step and where the report is, for a PR comment; appended to
$GITHUB_STEP_SUMMARY when that is set.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from qcheck.errors import Problem, QcheckError
from qcheck.policy.paths import expand_home
from qcheck.results.next_step import next_step
from qcheck.results.values_text import value_text, values_text
from qcheck.run.output_folder import add_to_manifest, read_manifest
from qcheck.scratch import write_text_whole


def _case(suite: ET.Element, classname: str, name: str, failure: str | None, detail: str = "") -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if failure is not None:
        ET.SubElement(case, "failure", message=failure, type="qcheck").text = detail or failure


def _document(name: str, cases: list[tuple[str, str, str | None, str]], seconds: float = 0.0,
              timestamp: str | None = None) -> str:
    failures = sum(1 for c in cases if c[2] is not None)
    root = ET.Element("testsuites", name="qcheck", tests=str(len(cases)), failures=str(failures), errors="0",
                      time=f"{seconds:.3f}")
    suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)), failures=str(failures), errors="0",
                          skipped="0", time=f"{seconds:.3f}", **({"timestamp": timestamp} if timestamp else {}))
    for c in cases:
        _case(suite, *c)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


EXAMPLE_NAMES = {"--junit": "qcheck-junit.xml", "--summary-md": "qcheck-summary.md"}
# how each CI output begins: a file that begins so is the same output of an earlier command, replaced freely
_BEGINS = {"--junit": b'<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="qcheck"', "--summary-md": b"## qcheck"}


def _same_kind(target: Path, flag: str) -> bool:
    try:
        with open(target, "rb") as fh:
            return fh.read(len(_BEGINS[flag])) == _BEGINS[flag]
    except OSError:
        return False


def _output_folder_of(path: Path) -> tuple[Path, str, list[str]] | None:
    """The qcheck output folder `path` lies in (the nearest one up that carries a manifest), `path`'s name there
    and the files the manifest lists; None outside any."""
    for folder in path.parents:
        listed = read_manifest(folder)
        if listed is not None:
            return folder, path.relative_to(folder).as_posix(), listed
    return None


def _refusal(flag: str, target: Path, seen: dict[Path, str], inputs: list[tuple[str, Path]]) -> str | None:
    """Why `flag` may not write `target` (an absolute path), or None."""
    if target.is_dir():
        return "it is a folder"
    if target in seen:
        return f"{seen[target]} writes it too"
    run = None if _same_kind(target, flag) else _output_folder_of(target)
    if run is not None and run[1] in run[2]:
        return f"it is the {run[1]} of the qcheck run in {run[0]}"
    for what, given in inputs:
        g = expand_home(given).resolve()
        if target == g:
            return f"it is the {what}"
        if g.is_dir() and target.is_relative_to(g):
            return f"it is inside the {what} ({g})"
    return None


def run_junit(results: dict) -> str:
    cases = []
    for q in results["verdict"]["requirements"]:
        failure = None
        if not q["holds"]:
            failure = f"{values_text(q['values'])}; requires {q['text']}" + (f" ({q['note']})" if q.get("note") else "")
        cases.append(("qcheck.requirements", q["text"], failure, ""))
    for f in results.get("findings", []):
        if f["severity"] == "error":
            where = f.get("tensor") or f.get("node") or "model"
            cases.append(("qcheck.findings", f"{f['code']} {f['rule']}: {where}", f["message"],
                          f"{f['message']}\nremedies: {', '.join(f.get('remedies') or []) or 'none'}"))
    seconds = sum((results.get("timings") or {}).values())
    return _document(f"qcheck run: {results.get('title', '')}", cases, seconds, results.get("created"))


def diff_junit(d: dict) -> str:
    cases = [("qcheck.diff.metrics", m["name"],
              f"{value_text(m['a'])} -> {value_text(m['b'])} (worse by more than the tolerance {d['tolerance']:g})"
              if m["regression"] else None, "") for m in d["metrics"]]
    for f in d["findings_appeared"]:
        if f.get("severity") == "error":
            cases.append(("qcheck.diff.findings", f"new {f['code']} {f.get('rule', '')}: {f.get('tensor') or 'model'}",
                          f["message"], ""))
    if d["a"]["verdict"] == "pass" and d["b"]["verdict"] == "fail":
        cases.append(("qcheck.diff.verdict", "verdict", "the verdict went from pass to fail", ""))
    else:
        cases.append(("qcheck.diff.verdict", "verdict", None, ""))
    return _document("qcheck diff", cases)


def run_markdown(results: dict, report: str | None = None) -> str:
    v = results["verdict"]
    title = results.get("title", "")
    title = title if title.startswith("qcheck") else f"qcheck: {title}"  # the default title says qcheck already
    lines = [f"## {title} — {v['status'].upper()}", ""]
    if v["requirements"]:
        lines += ["| requirement | values | result |", "|---|---|---|"]
        for q in v["requirements"]:
            lines.append(f"| `{q['text']}` | {values_text(q['values'])} | {'holds' if q['holds'] else '**FAILS**'} |")
        lines.append("")
    step = next_step(results)
    lines.append(f"**Next step:** {step['action']}")
    lines += [f"- {e}" for e in step["evidence"] if e]
    counts = results.get("finding_counts") or {}
    lines += ["", f"Findings: {counts.get('error', 0)} errors, {counts.get('warning', 0)} warnings, "
                  f"{counts.get('info', 0)} info."]
    if report:
        lines.append(f"Report: [{Path(report).name}]({report})")
    return "\n".join(lines) + "\n"


def diff_markdown(d: dict) -> str:
    lines = [f"## qcheck diff — {'FAIL' if d['fails'] else 'ok'}", "",
             f"Verdict: {d['a']['verdict']} → {d['b']['verdict']}", "",
             "| metric | A | B | |", "|---|---|---|---|"]
    for m in d["metrics"]:
        lines.append(f"| `{m['name']}` | {value_text(m['a'])} | {value_text(m['b'])} | {'**regression**' if m['regression'] else ''} |")
    lines += ["", f"Findings appeared: {len(d['findings_appeared'])}, gone: {len(d['findings_gone'])}; "
                  f"recipe changes: {len(d['recipe_changes'])}."]
    if d["fails"]:
        lines += ["", "**Why it fails:** " + "; ".join(d["reasons"])]
    return "\n".join(lines) + "\n"


def check_paths(paths: dict[str, Path | None], inputs: list[tuple[str, Path]]) -> None:
    """Before anything runs: a CI output (`--junit`, `--summary-md`) must not replace a file the command reads
    (the policy, the model, a results file, ...) or land in one of its folders, nor be a folder, nor be asked
    for twice."""
    seen: dict[Path, str] = {}
    for flag, path in paths.items():
        if path is None:
            continue
        target = expand_home(path).resolve()
        why = _refusal(flag, target, seen, inputs)
        if why:
            raise QcheckError(Problem(f"{flag}: refusing to write {path}: {why}",
                                      hint=f"give {flag} a file of its own, e.g. {flag} {EXAMPLE_NAMES[flag]}"))
        seen[target] = flag


def write_outputs(junit: Path | None, junit_text: str, summary: Path | None, summary_text: str) -> None:
    """Write the files asked for (each replaced whole, never half-written); with a summary asked for,
    append it to $GITHUB_STEP_SUMMARY too when that is set (GitHub Actions shows it on the run's page).
    A file written into a qcheck output folder is added to its manifest: the next run may replace it."""
    for path, text in ((junit, junit_text), (summary, summary_text)):
        if path is None:
            continue
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_whole(path, text)
            run = _output_folder_of(path.resolve())
            if run is not None:  # listed, so the next run may replace the folder
                add_to_manifest(run[0], [run[1]])
        except OSError as exc:
            raise QcheckError(Problem(f"cannot write {path}: {exc.strerror}", hint="choose a writable path")) from None
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and summary is not None:
        try:
            with open(step_summary, "a", encoding="utf-8") as fh:
                fh.write(summary_text + "\n")
        except OSError as exc:
            raise QcheckError(Problem(f"cannot append to $GITHUB_STEP_SUMMARY ({step_summary}): {exc.strerror}")) from None
