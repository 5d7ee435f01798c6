"""`qcheck sweep sweep.yaml`: every policy × every combination of overrides, each an ordinary run, one summary.

The driver plans (validates every combination, fetches each model once, fingerprints each
run), reuses finished runs whose fingerprint matches, hands the rest to an executor
(executors.py), records each result as it arrives (state/), and writes the summary folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from qcheck.errors import QcheckError
from qcheck.policy.spec import ExecutorSpec
from qcheck.run.sweep.fingerprint import run_fingerprint
from qcheck.run.sweep.spec import Job, SweepSpec, is_sweep_file, job_policy, load_sweep
from qcheck.run.sweep.summary import build_summary, error_row, summary_csv
from qcheck.scratch import write_text_whole

__all__ = ["run_sweep", "validate_sweep", "load_sweep", "is_sweep_file", "ExecutorSpec"]


def run_sweep(spec: SweepSpec, executor: ExecutorSpec, force: bool = False,
              log: Callable[[str], None] = lambda m: None, formats: tuple[str, ...] = ("html", "pdf")) -> dict:
    """Run the sweep; returns the summary (also written to <out>/summary/)."""
    from qcheck.compute.ray_cluster import import_ray
    from qcheck.run.sweep.executors import execute

    if executor.kind == "ray":
        import_ray()  # before anything runs: without Ray, say how to install it
    start = time.perf_counter()
    rows: dict[str, dict] = {}
    todo = []
    for job, row in plan(spec.jobs, log):
        if row is None and not force:
            row = _finished(spec.out, job)
        if row is not None:
            rows[job.run_id] = row
        else:
            todo.append(job)
    log(f"{len(spec.jobs)} runs: {len(todo)} to run, {sum(r['reused'] for r in rows.values())} reused, "
        f"{sum(not r['reused'] for r in rows.values())} invalid")

    def on_result(job: Job, row: dict) -> None:
        rows[job.run_id] = row
        _write_atomic(_state_file(spec.out, job), json.dumps(row, indent=1, default=str))
        log(f"[{len(rows)}/{len(spec.jobs)}] {job.run_id}: {row['status'].upper()} ({row.get('seconds', 0):.1f} s)")

    info = execute(todo, executor, on_result)
    ordered = [rows[j.run_id] for j in spec.jobs]
    summary = build_summary(ordered, spec.path, spec.out, info, time.perf_counter() - start)
    write_summary(summary, spec.out / "summary", formats)
    return summary


def plan(jobs: list[Job], log: Callable[[str], None]):
    """(job, None) for a job to run, fingerprinted; (job, error row) for one whose policy is invalid."""
    from qcheck.model.fetch import fetch_model

    fetched: dict[str, str] = {}
    for job in jobs:
        try:
            policy = job_policy(job)
            model = policy.model
            if model.fetch and not model.path.exists() and str(model.path) not in fetched:
                fetch_model(model.fetch, model.path, log=log)  # once here, not once per run in every worker
                fetched[str(model.path)] = job.policy
            job.fingerprint = run_fingerprint(policy)
        except QcheckError as exc:
            yield job, {**error_row(job, exc.exit_code, str(exc)), "seconds": 0.0}
            continue
        yield job, None


def _state_file(out: Path, job: Job) -> Path:
    return out / "state" / f"{job.policy_name}__{job.combination}.json"


def _finished(out: Path, job: Job) -> dict | None:
    """The recorded row of a finished run with the same fingerprint whose folder is still there, else None."""
    try:
        row = json.loads(_state_file(out, job).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if row.get("fingerprint") != job.fingerprint or row.get("exit_code") not in (0, 1):
        return None
    if not (Path(job.out) / "results.json").is_file():
        return None
    return {**row, "reused": True}


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_whole(path, text)


def write_summary(summary: dict, folder: Path, formats: tuple[str, ...]) -> None:
    from qcheck.report.sweep import render_sweep_summary
    from qcheck.results.files import encode

    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "summary.json", json.dumps(encode(summary), indent=1))
    _write_atomic(folder / "summary.csv", summary_csv(summary))
    render_sweep_summary(summary, folder, list(formats))


def validate_sweep(path: Path, progress: Callable[[str, int, int], None] = lambda s, i, n: None) -> dict:
    """`qcheck validate` of every combination (its policy with the overrides: schema, paths, model, data);
    raises QcheckError with every problem at once."""
    from qcheck.run.validate import validate_policy

    spec = load_sweep(path)
    problems = []
    for job in spec.jobs:
        try:
            validate_policy(job_policy(job), progress)
        except QcheckError as exc:
            problems += [p for p in exc.problems if str(p) not in {str(q) for q in problems}]
    if problems:
        raise QcheckError(problems)
    return {"sweep": str(path), "policies": sorted({j.policy for j in spec.jobs}), "runs": len(spec.jobs),
            "combinations": sorted({j.combination for j in spec.jobs}), "executor": spec.executor.kind}
