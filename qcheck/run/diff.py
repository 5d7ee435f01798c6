"""`qcheck diff a b`: what changed between two runs, and whether the change may be merged.

Compares two results.json files (or the output folders holding them):
the verdict, the model metrics (aggregate and the policy's own), findings
that appeared or went away, and the recipe that ends up in the lock. Gating:
the diff *fails* when a new error-severity finding appears or a metric gets
worse than the tolerance allows. Timings (and latencies) are never compared.
"""

from __future__ import annotations

import math
from pathlib import Path

from qcheck.errors import Problem, QcheckError
from qcheck.policy.metric_names import output_metric, task_value
from qcheck.results.files import load_results


def load_run(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
        if not path.exists():
            raise QcheckError(Problem("the folder holds no results.json (not a qcheck output folder)", file=str(path.parent)))
    return load_results(path)


def _worse_by(a: float, b: float, direction: int, bounded: bool) -> float:
    """How much worse b is than a: absolute for bounded metrics, relative to |a| otherwise (<= 0: not worse)."""
    delta = (a - b) if direction > 0 else (b - a)
    if bounded:
        return delta
    if a == 0:
        return math.inf if delta > 0 else 0.0
    return delta / abs(a)


def final_metrics(r: dict) -> dict:
    """The metrics of the model a run ends with: the search's chosen recipe when it chose one, else the policy's."""
    search = r["search"] or {}
    if search.get("chosen") is not None and search.get("status") == "found":
        return dict(search["candidates"][search["chosen"]]["metrics"])
    out = {f"model.{k}": v for k, v in r["model_metrics"]["aggregate"].items()}
    out.update({name: m["value"] for name, m in r["model_metrics"]["user"].items()})
    for name, t in r["model_metrics"]["tasks"].items():
        out[name] = t["value"]
    return out


def _metric_rows(a: dict, b: dict, tolerance: float) -> list[dict]:
    rows = []
    ma, mb = final_metrics(a), final_metrics(b)
    kinds = {**{n: m["metric"] for n, m in b["model_metrics"]["user"].items()},
             **{n: m["metric"] for n, m in a["model_metrics"]["user"].items()}}
    task_dirs = {}  # task metrics: their primary value says which way is better (metric_names.TASK_VALUES)
    for r in (b, a):
        for name, t in r["model_metrics"]["tasks"].items():
            higher = bool(((t.get("values") or {}).get(t.get("primary")) or {}).get("higher_is_better", True))
            known = task_value(t.get("primary") or "")
            task_dirs[name] = (1 if higher else -1, known.bounded if known else higher)  # a python value: as told
    pairs = []
    for name in list(dict.fromkeys([*ma, *mb])):
        if name in task_dirs:
            pairs.append((name, ma.get(name), mb.get(name), *task_dirs[name]))
            continue
        known = output_metric(name[len("model."):] if name.startswith("model.") else kinds.get(name, "max_abs"))
        pairs.append((name, ma.get(name), mb.get(name), known.direction if known else -1,
                      bool(known and known.bounded)))
    for name, va, vb, direction, bounded in pairs:
        if va is None and vb is None:
            continue
        row = {"name": name, "a": va, "b": vb, "regression": False, "worse_by": None}
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
            if math.isnan(vb) and not math.isnan(va):
                row["worse_by"], row["regression"] = math.inf, True
            elif not (math.isnan(va) or math.isnan(vb)) and va != vb:
                if math.isinf(va) and math.isinf(vb):
                    worse = 0.0
                elif math.isinf(va) or math.isinf(vb):
                    worse = math.inf if ((vb < va) if direction > 0 else (vb > va)) else -math.inf
                else:
                    worse = _worse_by(va, vb, direction, bounded)
                row["worse_by"] = worse
                row["regression"] = worse > tolerance
        elif va is not None and vb is None:
            row["regression"] = True  # a metric that disappeared cannot be judged
        rows.append(row)
    return rows


def _finding_key(f: dict) -> tuple:
    return (f.get("code"), f.get("tensor"))


def _recipe(r: dict) -> dict:
    return r["lock"]["recipe"]  # the policy's own recipe unless the search chose another


def diff_runs(a: dict, b: dict, tolerance: float = 0.001) -> dict:
    metrics = _metric_rows(a, b, tolerance)
    fa = {_finding_key(f): f for f in a["findings"]}
    fb = {_finding_key(f): f for f in b["findings"]}
    appeared = [fb[k] for k in fb if k not in fa]
    gone = [fa[k] for k in fa if k not in fb]
    ra, rb = _recipe(a), _recipe(b)
    recipe = [{"field": k, "a": ra.get(k), "b": rb.get(k)} for k in sorted(set(ra) | set(rb)) if ra.get(k) != rb.get(k)]
    reasons = []
    new_errors = [f for f in appeared if f.get("severity") == "error"]
    if new_errors:
        reasons.append(f"{len(new_errors)} new error finding(s): " +
                       ", ".join(f"{f['code']} on {f['tensor']}" for f in new_errors[:5]))
    for m in metrics:
        if m["regression"]:
            how = "disappeared" if m["b"] is None else (
                f"{m['a']:.6g} -> {m['b']:.6g}" if isinstance(m["b"], (int, float)) else f"{m['a']} -> {m['b']}")
            reasons.append(f"{m['name']} regressed beyond the tolerance ({how})")
    va, vb = a["verdict"]["status"], b["verdict"]["status"]
    if va == "pass" and vb == "fail":
        reasons.append("the verdict went from pass to fail")
    return {
        "a": {"title": a["title"], "created": a["created"], "verdict": va, "model_sha256": a["model"]["sha256"]},
        "b": {"title": b["title"], "created": b["created"], "verdict": vb, "model_sha256": b["model"]["sha256"]},
        "tolerance": tolerance,
        "metrics": metrics,
        "findings_appeared": appeared,
        "findings_gone": gone,
        "recipe_changes": recipe,
        "fails": bool(reasons),
        "reasons": reasons,
    }


def format_diff(d: dict) -> str:
    lines = [f"verdict: {d['a']['verdict']} -> {d['b']['verdict']}"]
    if d["a"]["model_sha256"] != d["b"]["model_sha256"]:
        lines.append("model: a different model file")
    lines.append("metrics:")
    for m in d["metrics"]:
        mark = "  REGRESSION" if m["regression"] else ""
        a = f"{m['a']:.6g}" if isinstance(m["a"], (int, float)) else str(m["a"])
        b = f"{m['b']:.6g}" if isinstance(m["b"], (int, float)) else str(m["b"])
        lines.append(f"  {m['name']:<16} {a:>12} -> {b:<12}{'' if a != b else ' (same)'}{mark}")
    for title, items in (("findings appeared", d["findings_appeared"]), ("findings gone", d["findings_gone"])):
        lines.append(f"{title}: {len(items)}")
        for f in items[:10]:
            lines.append(f"  {f['code']} {f['severity']:<7} {f['tensor']}: {f['message']}")
    lines.append(f"recipe changes: {len(d['recipe_changes'])}")
    for c in d["recipe_changes"]:
        lines.append(f"  {c['field']}: {c['a']} -> {c['b']}")
    lines.append("result: FAIL — " + "; ".join(d["reasons"]) if d["fails"] else
                 f"result: ok (no new error finding, no metric worse by more than {d['tolerance']:g})")
    return "\n".join(lines)
