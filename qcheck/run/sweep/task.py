"""One sweep run, as a worker executes it: plain data in (a Job), plain data out (a summary row).

It is the same function on every executor: a local worker process and a Ray task both call
`run_job`, so the summary cannot depend on where a run happened.
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from pathlib import Path

from threadpoolctl import threadpool_limits

from qcheck.errors import QcheckError
from qcheck.policy.spec import ExecutorSpec
from qcheck.run.sweep.spec import Job, job_policy
from qcheck.run.sweep.summary import error_row, row_from_results


def run_job(job: Job, shards: ExecutorSpec | None = None) -> dict:
    """Run one combination to its own folder; never raises for a run's own failure (the sweep goes on).
    `shards`: where the run's analyses and screening shards go when its policy names no analyses.executor (a
    sweep on Ray: the cluster its task runs on)."""
    from qcheck.run.compare import preference
    from qcheck.run.pipeline import run

    start = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):  # as the `qcheck` command does (see qcheck.cli.main)
        try:
            policy = job_policy(job)
            if shards is not None and policy.analyses.executor is None:
                policy.analyses.executor = shards
            results = run(policy, out=Path(job.out))
            row = row_from_results(job, results, preference(policy.target))
        except QcheckError as exc:
            row = error_row(job, exc.exit_code, str(exc))
        except Exception:  # a bug in qcheck: the row keeps the traceback, the other runs go on
            row = error_row(job, 3, traceback.format_exc())
    row.update(seconds=round(time.perf_counter() - start, 3), worker=f"{platform.node()}:{os.getpid()}")
    return row
