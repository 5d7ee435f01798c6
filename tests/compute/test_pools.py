"""The shard pools (qcheck/compute/shards.py): results in shard order, a worker's own exception raised as itself,
nothing left behind. `divmod` stands in for a shard function: a module-level function a worker imports by name."""

import time

import pytest

from qcheck.compute.shards import ProcessShards, ThreadShards, check_cancelled, open_shards
from qcheck.policy.spec import ExecutorSpec


@pytest.mark.parametrize("make", [lambda: ThreadShards(2), lambda: ProcessShards(2)], ids=["threads", "local"])
def test_results_come_back_in_shard_order_with_each_completion_reported(make):
    pool, finished = make(), []
    try:
        handle = pool.share(100)
        assert pool.map(divmod, handle, [7, 9, 11, 13], done=finished.append) == [(14, 2), (11, 1), (9, 1), (7, 9)]
        pool.release(handle)
    finally:
        pool.close()
    assert sorted(finished) == [0, 1, 2, 3]
    assert pool.describe()["groups"] == 1 and pool.describe()["tasks"] == 4


def test_a_shard_that_raises_raises_its_own_error_and_the_pool_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the pool puts its shared files
    with pytest.raises(ZeroDivisionError):
        with open_shards(ExecutorSpec("local", workers=2)) as pool:
            pool.map(divmod, pool.share(1), [1, 0])
    assert list(tmp_path.iterdir()) == []


def test_without_an_executor_shards_run_on_threads():
    with open_shards(None, threads=3) as pool:
        assert pool.kind == "threads" and pool.workers == 3
        assert pool.map(divmod, pool.share(10), [3]) == [(3, 1)]


def _long_or_failing(shared, shard):
    """Shard 0 fails at once; the others would run for minutes, checking for cancellation between steps."""
    if shard == 0:
        raise ValueError("this shard failed")
    for _ in range(shared):
        check_cancelled()
        time.sleep(0.01)
    return shard


def test_an_interrupted_map_on_threads_stops_its_other_shards_at_their_next_step():
    pool = ThreadShards(2)
    start = time.monotonic()
    with pytest.raises(ValueError):
        pool.map(_long_or_failing, 30_000, [0, 1])  # shard 1 alone: 300 s
    assert time.monotonic() - start < 60  # it stopped at its next step (seconds on a loaded machine), not after 300 s
    assert pool.map(_long_or_failing, 3, [1, 2]) == [1, 2]  # the next map starts afresh


def _square_slowly(folder: str, shard: int) -> int:
    """Writes the worker's pid where the test sees it, then takes a while: time for the test to kill it."""
    import os
    from pathlib import Path

    (Path(folder) / f"{shard}-{os.getpid()}.pid").write_text("")
    time.sleep(2.0)
    return shard * shard


def _kill_first_worker(folder, killed: list, stop) -> None:
    """SIGKILL to the first worker seen running a shard, as the OOM killer sends it."""
    import os
    import signal

    while not stop.is_set() and not killed:
        for mark in folder.glob("*.pid"):
            pid = int(mark.stem.split("-")[1])
            os.kill(pid, signal.SIGKILL)
            killed.append((int(mark.stem.split("-")[0]), pid))
            return
        time.sleep(0.01)


def test_a_killed_worker_costs_a_fresh_pool_not_the_run(tmp_path):
    """A worker of the local pool killed in the middle of a shard: the shards that had not finished run again on a
    fresh pool; every result comes back, in shard order, and the pool says it retried."""
    import threading

    from qcheck.compute.shards import retry_note

    pool, killed, stop = ProcessShards(2, max_retries=2), [], threading.Event()
    watcher = threading.Thread(target=_kill_first_worker, args=(tmp_path, killed, stop))
    watcher.start()
    try:
        got = pool.map(_square_slowly, pool.share(str(tmp_path)), [1, 2, 3, 4])
    finally:
        stop.set()
        watcher.join()
        pool.close()
    assert killed, "no worker was seen running"
    shard, pid = killed[0]
    assert got == [1, 4, 9, 16]
    assert pool.describe()["retries"] == 1
    # the killed shard ran again, in another process
    assert {int(p.stem.split("-")[1]) for p in tmp_path.glob(f"{shard}-*.pid")} - {pid}
    assert "died 1 time(s)" in retry_note(pool, "screening")[0]


def _die(shared, shard):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_that_keeps_dying_ends_with_a_message_not_a_traceback():
    """Past max_retries fresh pools: WorkerLost, exit code 4 (the machine's resources: not the user's input, not a
    bug of qcheck's), saying what to change."""
    from qcheck.compute.shards import WorkerLost

    pool = ProcessShards(1, max_retries=1)
    try:
        with pytest.raises(WorkerLost) as info:
            pool.map(_die, pool.share(0), [0])
    finally:
        pool.close()
    assert info.value.exit_code == 4 and pool.describe()["retries"] == 1
    text = str(info.value)
    assert "died 2 time(s)" in text and "out of memory" in text and "--workers" in text


def test_a_worker_killed_between_groups_is_replaced_before_the_next_group():
    """The pool spawned by one group's map; a worker killed while idle (the OOM killer does not wait for a shard);
    the next group's map finds the pool broken, starts a fresh one and gives every result."""
    import os
    import signal

    pool = ProcessShards(2, max_retries=1)
    try:
        assert pool.map(divmod, pool.share(100), [7, 9]) == [(14, 2), (11, 1)]
        worker = next(iter(pool._pool._processes.values()))  # the pool's own map of its workers
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=60)
        assert pool.map(divmod, pool.share(50), [3, 4, 6]) == [(16, 2), (12, 2), (8, 2)]
        assert pool.describe()["retries"] == 1
    finally:
        pool.close()
