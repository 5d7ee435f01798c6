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
