"""Test-wide settings: one BLAS thread, as the `qcheck` command sets (see qcheck.cli.main)."""

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    with threadpool_limits(1, user_api="blas"):
        yield
