"""Where a sweep's runs execute: a local process pool (the default) or a Ray cluster (and, there, each run's
analyses and screening shards too, as tasks of the same cluster).

Both call `task.run_job` with a Job and hand its row to `on_result` in the driver as soon as
the run finishes, in completion order, so the driver can record it (a sweep interrupted
later keeps it). A worker process that dies (killed, out of memory) is started again up to
`max_retries` times; after that its run gets a row with exit code 4 (resources) and the sweep goes on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from qcheck.compute.ray_cluster import connected
from qcheck.model.runtime import usable_cores
from qcheck.policy.spec import ExecutorSpec
from qcheck.run.sweep.spec import Job
from qcheck.run.sweep.summary import error_row
from qcheck.run.sweep.task import run_job

OnResult = Callable[[Job, dict], None]
INTERRUPT_GRACE_SECONDS = 10


def execute(jobs: list[Job], spec: ExecutorSpec, on_result: OnResult) -> dict:
    """Run every job; returns what the summary says about the executor."""
    if not jobs:
        return {"kind": spec.kind}
    if spec.kind == "ray":
        return run_ray(jobs, spec, on_result)
    return run_local(jobs, spec, on_result)


def default_workers() -> int:
    return usable_cores()


def run_local(jobs: list[Job], spec: ExecutorSpec, on_result: OnResult) -> dict:
    workers = spec.workers or default_workers()
    # spawn, not fork: the driver may hold threads (ONNX Runtime's, BLAS's) a forked child would inherit locked
    context = multiprocessing.get_context("spawn")
    pending, tries = list(jobs), dict.fromkeys((j.run_id for j in jobs), 0)
    while pending:
        with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context) as pool:
            futures = {pool.submit(_run_in_pool, job): job for job in pending}
            pending = []
            try:
                pending += _collect_local(futures, tries, spec.max_retries, on_result)
            except KeyboardInterrupt:  # what finished is recorded already; the runs in flight stop, nothing new starts
                _interrupt_workers(pool)
                raise
    return {"kind": "local", "workers": workers, "max_retries": spec.max_retries}


def _run_in_pool(job: Job) -> dict:
    try:
        return run_job(job)
    except KeyboardInterrupt:  # the run has discarded its staging folder; end the worker, or it takes the next run
        os._exit(130)


def _interrupt_workers(pool: ProcessPoolExecutor) -> None:
    """SIGINT to each worker (a Ctrl-C in a terminal reaches them anyway; `kill -INT` on the driver does not), so
    its run discards its staging folder and the worker ends (`_run_in_pool`); the pool's queued runs are cancelled.
    A SIGINT that lands in a finalizer is swallowed ("Exception ignored"), so it is sent again until the worker
    ends, and SIGTERM ends one still there after a grace period. `_processes` is the pool's own map of its
    workers: the public API cannot stop a running call."""
    processes = list((pool._processes or {}).values())  # before shutdown, which forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        for p in processes:
            if p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
    for p in processes:
        if p.is_alive():
            p.terminate()


def _collect_local(futures: dict, tries: dict, max_retries: int, on_result: OnResult) -> list[Job]:
    """Hand each finished run's row on; returns the runs to start again because their pool broke."""
    again = []
    for future in as_completed(futures):
        job = futures[future]
        try:
            row = future.result()
        except BrokenProcessPool:  # a worker died: every unfinished run of this pool is started again
            tries[job.run_id] += 1
            if tries[job.run_id] <= max_retries:
                again.append(job)
                continue
            row = error_row(job, 4, f"the run's worker process died {tries[job.run_id]} times "
                                    "(killed, or out of memory?)")
        row["attempts"] = tries[job.run_id] + 1
        on_result(job, row)
    return again


def run_ray(jobs: list[Job], spec: ExecutorSpec, on_result: OnResult) -> dict:
    """Each run is a Ray task declaring `num_cpus`; Ray starts it again when its worker dies (max_retries).
    Models and data are read from paths every worker sees (a local cluster, or a shared file system)."""
    # no address: a new cluster on this machine (on 127.0.0.1), sized like the local executor
    with connected(spec.address, spec.workers or default_workers()) as ray:
        task = ray.remote(run_job).options(num_cpus=spec.num_cpus, max_retries=spec.max_retries)
        # each run's analyses and screening shards go to the same cluster (a task's own Ray is the cluster's),
        # unless its policy says where (analyses.executor)
        shards = ExecutorSpec("ray", num_cpus=spec.num_cpus, max_retries=spec.max_retries)
        refs = {task.remote(job, shards): job for job in jobs}
        try:
            _collect_ray(ray, refs, on_result)
        except KeyboardInterrupt:  # on a cluster that outlives this sweep, stop its runs too
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        resources = ray.cluster_resources()
    return {"kind": "ray", "address": spec.address or "local", "num_cpus": spec.num_cpus,
            "max_retries": spec.max_retries, "cluster_cpus": resources.get("CPU")}


def _collect_ray(ray, refs: dict, on_result: OnResult) -> None:
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        job = refs.pop(done[0])
        try:
            row = ray.get(done[0])
        except ray.exceptions.RayError as exc:  # the worker died more than max_retries times
            row = error_row(job, 4, f"the run's Ray task failed: {str(exc).splitlines()[0]}")
        on_result(job, row)
