"""The shards of one computation, run where the policy says: threads here, a local process pool, or Ray.

A computation that splits into many independent pieces (node sensitivity's configurations; the search's
screening of candidates) is cut into *shard groups*: pieces that read the same large data (the float
activations at one suffix's cut, the suffix model). Per group the driver calls

    handle = pool.share(data, nbytes)          # once per group: ray.put, a file, or the object itself
    results = pool.map(fn, handle, shards)     # fn(data, shard) in the workers, results in shard order
    pool.release(handle)

so the data go to the object store (or the disk) once per group, not once per piece, and every worker reads
them from there. `fn` must be a module-level function (a worker imports it by name) and its results plain
data. The same `fn` runs on every executor, so where a shard ran cannot change what it computes.
"""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qcheck.compute.ray_cluster import connected
from qcheck.errors import Problem, QcheckError
from qcheck.model.runtime import usable_cores
from qcheck.policy.spec import DEFAULT_RETRIES, ExecutorSpec
from qcheck.scratch import new_temp_folder

Done = Callable[[int], None]  # called with a shard's index when it finishes, in completion order
_cancel = threading.Event()  # set when a map on threads is interrupted: its shards stop at their next step


class ShardCancelled(Exception):
    """A shard on a thread stopped because the map it belongs to was interrupted (Ctrl-C, an error elsewhere)."""


def check_cancelled() -> None:
    """For a shard function, between its steps: a thread cannot be stopped from outside, so it stops itself.
    (A worker process is ended and a Ray task cancelled instead; there this never raises.)"""
    if _cancel.is_set():
        raise ShardCancelled()


class ThreadShards:
    """Shards on threads of this process (ONNX Runtime releases the GIL while it runs); data shared as they are."""

    kind = "threads"

    def __init__(self, workers: int):
        self.workers = max(1, workers)
        self.tasks = 0
        self.groups = 0  # share() calls: shard groups whose data went to the workers

    def share(self, value: Any, nbytes: int = 0) -> Any:
        self.groups += 1
        return value

    def release(self, handle: Any) -> None:
        pass

    def map(self, fn: Callable, handle: Any, shards: Sequence, done: Done | None = None) -> list:
        self.tasks += len(shards)
        _cancel.clear()
        with ThreadPoolExecutor(min(self.workers, len(shards)) or 1) as pool:
            try:
                return _gather({pool.submit(fn, handle, s): i for i, s in enumerate(shards)}, [None] * len(shards),
                               done)
            except BaseException:
                _cancel.set()  # the running shards stop at their next step, so leaving the pool does not wait long
                raise

    def describe(self) -> dict:
        return {"kind": self.kind, "workers": self.workers, "groups": self.groups, "tasks": self.tasks}

    def close(self, abort: bool = False) -> None:
        pass


class WorkerLost(QcheckError):
    """A worker process kept dying (killed, out of memory): the machine's resources, not the user's input nor a bug
    of qcheck's. Exit code 4 (see README, "Exit codes"): worth retrying, with what to change."""

    exit_code = 4


class ProcessShards:
    """Shards on a pool of worker processes on this machine (spawned once, reused for every group). A group's data
    are pickled once to a file in a temporary folder; each worker loads a file once and keeps the latest.
    A worker that dies (killed, out of memory) breaks the pool: the shards that did not finish run again on a fresh
    pool, up to `max_retries` times per map; then WorkerLost."""

    kind = "local"

    def __init__(self, workers: int, max_retries: int = DEFAULT_RETRIES):
        self.workers = max(1, workers)
        self.max_retries = max_retries
        self.tasks = 0
        self.groups = 0  # share() calls: shard groups whose data went to the workers
        self.bytes_shared = 0
        self.retries = 0  # pools started again because a worker died
        self._pool: ProcessPoolExecutor | None = None
        self._folder: Path | None = None

    def share(self, value: Any, nbytes: int = 0) -> str:
        self.groups += 1
        if self._folder is None:
            self._folder = new_temp_folder("shards")
        path = self._folder / f"{len(list(self._folder.glob('*.pickle')))}-{time.monotonic_ns()}.pickle"
        with open(path, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        self.bytes_shared += path.stat().st_size
        return str(path)

    def release(self, handle: str) -> None:
        Path(handle).unlink(missing_ok=True)

    def map(self, fn: Callable, handle: str, shards: Sequence, done: Done | None = None) -> list:
        self.tasks += len(shards)
        results: dict[int, Any] = {}
        for attempt in range(self.max_retries + 1):
            if self._pool is None:
                # spawn, not fork: the driver holds ONNX Runtime's and BLAS's threads, which a forked child inherits
                # locked
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            try:
                _gather({self._pool.submit(_call_with_file, fn, handle, s): i for i, s in enumerate(shards)
                         if i not in results}, results, done)
                return [results[i] for i in range(len(shards))]
            except BrokenProcessPool:  # a worker died: the shards that did not finish run again on a fresh pool
                self._stop_pool(abort=True)
                if attempt < self.max_retries:
                    self.retries += 1
        raise WorkerLost(Problem(
            f"a worker process of the local pool died {self.max_retries + 1} time(s) running the same shards "
            f"(killed, or out of memory: {self.workers} worker(s), each holding a shard group's data)",
            hint="give it more memory or fewer workers (--workers, analyses.executor.workers), smaller shard groups "
                 "(analyses.memory_mb), or run without analyses.executor (threads of one process)"))

    def describe(self) -> dict:
        return {"kind": self.kind, "workers": self.workers, "groups": self.groups, "tasks": self.tasks,
                "bytes_shared": self.bytes_shared, "retries": self.retries}

    def close(self, abort: bool = False) -> None:
        self._stop_pool(abort)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _stop_pool(self, abort: bool) -> None:
        """`abort` (an interrupt, an error, a dead worker): the workers end now, not after the shards they are
        running. The pool's own map of its workers (`_processes`) is the only handle on them; the public API cannot
        stop a call."""
        if self._pool is not None:
            processes = list((self._pool._processes or {}).values()) if abort else []
            self._pool.shutdown(wait=not abort, cancel_futures=True)
            for process in processes:
                process.terminate()
            self._pool = None


_loaded: dict[str, Any] = {}  # in a worker process: the group data it read last, by file


def _call_with_file(fn: Callable, path: str, shard: Any) -> Any:
    if path not in _loaded:
        _loaded.clear()  # one group at a time: the previous group's data are done with
        with open(path, "rb") as f:
            _loaded[path] = pickle.load(f)
    return fn(_loaded[path], shard)


class RayShards:
    """Shards as Ray tasks declaring `num_cpus`, retried when their worker dies; a group's data go to the object
    store once (ray.put) and every task of the group receives the reference (on the same node, a zero-copy read)."""

    kind = "ray"

    def __init__(self, ray, spec: ExecutorSpec):
        self.ray, self.spec = ray, spec
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1) // spec.num_cpus))
        self.tasks = 0
        self.groups = 0  # share() calls: shard groups whose data went to the workers
        self.bytes_shared = 0
        self._remote: dict[Callable, Any] = {}

    def share(self, value: Any, nbytes: int = 0):
        self.groups += 1
        self.bytes_shared += nbytes
        return self.ray.put(value)

    def release(self, handle) -> None:
        del handle  # the store frees an object when no reference to it is left

    def map(self, fn: Callable, handle, shards: Sequence, done: Done | None = None) -> list:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn).options(num_cpus=self.spec.num_cpus,
                                                           max_retries=self.spec.max_retries)
        self.tasks += len(shards)
        refs = [self._remote[fn].remote(handle, s) for s in shards]
        index = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        try:
            while pending:
                finished, pending = self.ray.wait(pending, num_returns=1)
                if done:
                    done(index[finished[0]])
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:  # the worker's own exception, not Ray's wrapper of it
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None
        except KeyboardInterrupt:
            for ref in pending:
                self.ray.cancel(ref, force=True)
            raise

    def describe(self) -> dict:
        return {"kind": self.kind, "workers": self.workers, "groups": self.groups, "tasks": self.tasks,
                "bytes_shared": self.bytes_shared, "address": self.spec.address or "local", "num_cpus": self.spec.num_cpus}

    def close(self, abort: bool = False) -> None:
        pass


def byte_ranges(sizes: list[int], room: int) -> list[tuple[int, int]]:
    """Consecutive ranges (lo, hi) of items whose sizes add up to at most `room` bytes each (an item alone may
    exceed it): a shard group's batches split so that what one part sends its workers is bounded (memory_mb)."""
    ranges, lo, size = [], 0, 0
    for i, nbytes in enumerate(sizes):
        if i > lo and size + nbytes > room:
            ranges.append((lo, i))
            lo, size = i, 0
        size += nbytes
    return ranges + [(lo, len(sizes))]


def retry_note(pool, what: str) -> list[str]:
    """The note a run's results carry when workers of the local pool died and their shards ran again."""
    n = getattr(pool, "retries", 0)
    return [f"{what}: a worker process of the local pool died {n} time(s) (killed, or out of memory?); the shards it "
            "had not finished ran again on a fresh pool (the same computation: the same results)"] if n else []


def _gather(futures: dict, results: dict | list, done: Done | None) -> dict | list:
    """Each future's result into `results` at its index, as they finish (those that finished stay there when
    another fails)."""
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                results[futures[f]] = f.result()
                if done:
                    done(futures[f])
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    return results


@contextmanager
def open_shards(spec: ExecutorSpec | None, threads: int | None = None) -> Iterator:
    """The pool for `spec` (None: threads of this process, `threads` of them, default the usable cores); a Ray
    cluster qcheck starts for it (no address) ends with the block."""
    if spec is None:
        yield ThreadShards(threads or usable_cores())
        return
    if spec.kind == "ray":
        with connected(spec.address, spec.workers or usable_cores()) as ray:
            yield RayShards(ray, spec)
        return
    pool = ProcessShards(spec.workers or usable_cores(), spec.max_retries)
    try:
        yield pool
    except BaseException:
        pool.close(abort=True)
        raise
    pool.close()
