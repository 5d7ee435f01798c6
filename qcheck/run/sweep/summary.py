"""The sweep's summary as plain data: one row per policy × combination, and the files that hold it.

Rows are computed from each run's results (in the worker, so only the row travels back);
the summary adds what needs every row: per model and target, the recommended scheme (the
first in the target's order of preference whose run passed, as compare mode decides).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from pathlib import Path

from qcheck import __version__
from qcheck.run.sweep.spec import Job

SUMMARY_VERSION = 1
STATUS_BY_CODE = {0: "pass", 1: "fail", 2: "error", 3: "bug", 4: "resources"}  # qcheck.cli.exit_codes
# The worst run's exit code is the sweep's, in this order: a bug first (it must be reported whatever else happened),
# then a policy, model or data error (fix it), then resources that ran out (retry), a failure, a pass.
SEVERITY = (3, 2, 4, 1, 0)
CSV_COLUMNS = ["run", "policy", "model", "scheme", "target", "settings", "status", "exit_code", "cosine", "sqnr",
               "max_abs", "failing", "errors", "warnings", "recommended", "fix", "fix_cost", "seconds", "reused",
               "report", "message"]


def _base_row(job: Job) -> dict:
    return {"run": job.run_id, "policy": job.policy, "policy_name": job.policy_name,
            "combination": job.combination, "settings": job.settings, "folder": job.out,
            "fingerprint": job.fingerprint, "reused": False}


def row_from_results(job: Job, results: dict, target_order: list[str]) -> dict:
    v = results["verdict"]
    agg = results["model_metrics"]["aggregate"]
    compare = results.get("compare") or {}
    search = results.get("search") or {}
    chosen = next((c for c in search.get("candidates", []) if c["id"] == search.get("chosen")), None)
    code = 1 if v["status"] == "fail" else 0
    return {**_base_row(job), "status": v["status"], "exit_code": code,  # pass, fail or no-requirements
            "model": results["model"]["name"], "scheme": results["quantization"]["scheme"],
            "target": results["target"]["name"], "target_order": target_order,
            "cosine": agg.get("cosine"), "sqnr": agg.get("sqnr"), "max_abs": agg.get("max_abs"),
            "failing": list(v.get("failing_metrics") or []),
            "errors": results["finding_counts"]["error"], "warnings": results["finding_counts"]["warning"],
            "compare_recommendation": (compare.get("recommendation") or {}).get("scheme"),
            "search": search.get("status"),
            "fix": chosen["label"] if chosen else ("none needed" if search.get("status") == "not-needed" else None),
            "fix_cost": chosen["cost"] if chosen else (0 if search.get("status") == "not-needed" else None),
            "message": None}


def error_row(job: Job, code: int, message: str) -> dict:
    return {**_base_row(job), "status": STATUS_BY_CODE.get(code, "error"), "exit_code": code, "model": None,
            "scheme": job.settings.get("quantization.scheme"), "target": job.settings.get("target"),
            "target_order": [], "cosine": None, "sqnr": None, "max_abs": None, "failing": [], "errors": None,
            "warnings": None, "compare_recommendation": None, "search": None, "fix": None, "fix_cost": None,
            "message": message}


def exit_code(rows: list[dict]) -> int:
    """The worst run decides: 3 (a bug) > 2 (a policy, model or data error) > 4 (resources ran out) > 1 (fails) > 0."""
    codes = {r["exit_code"] for r in rows}
    return next((c for c in SEVERITY if c in codes), 0)


def recommend(rows: list[dict]) -> None:
    """Fill `recommended` in every row: its run's compare recommendation, else the first scheme in its target's
    order of preference that passed for the same policy and target in this sweep."""
    passing: dict[tuple, set] = {}
    for r in rows:
        if r["exit_code"] == 0:  # passed, or has no requirements (as compare mode counts it)
            passing.setdefault((r["policy"], r["target"]), set()).add(r["scheme"])
    for r in rows:
        ok = passing.get((r["policy"], r["target"]), set())
        r["recommended"] = r.get("compare_recommendation") or next((s for s in r["target_order"] if s in ok), None)


def build_summary(rows: list[dict], sweep_file: Path, out: Path, executor: dict, seconds: float) -> dict:
    recommend(rows)
    folder = out / "summary"
    for r in rows:
        report = Path(r["folder"]) / "report.html"
        r["report"] = os.path.relpath(report, folder) if report.is_file() and r["exit_code"] in (0, 1) else None
    counts = {s: sum(r["status"] == s for r in rows) for s in [*STATUS_BY_CODE.values(), "no-requirements"]}
    return {"summary_version": SUMMARY_VERSION, "qcheck": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sweep": str(sweep_file), "out": str(out), "executor": executor, "seconds": round(seconds, 3),
            "counts": counts, "reused": sum(bool(r["reused"]) for r in rows), "exit_code": exit_code(rows),
            "runs": rows}


def summary_csv(summary: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in summary["runs"]:
        w.writerow({**r, "settings": json.dumps(r["settings"], sort_keys=True), "failing": " ".join(r["failing"]),
                    "message": (r["message"] or "").splitlines()[0] if r["message"] else ""})
    return buf.getvalue()


def comparable(summary: dict) -> list[dict]:
    """The rows without what differs between two sweeps of the same runs (time, worker, folders)."""
    drop = {"seconds", "worker", "folder", "report", "reused", "attempts"}
    return [{k: v for k, v in r.items() if k not in drop} for r in summary["runs"]]
