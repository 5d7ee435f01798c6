"""Ray, when it is installed: joining a cluster (`address`) or starting one on this machine, bound to 127.0.0.1.

Ray puts a cluster it starts on the machine's own network address by design (so other machines can join it).
A cluster qcheck starts only ever serves this machine, so it binds the loopback address instead: nothing
listens on the network, and a machine without a routable address (a sandbox, an offline laptop) works too.
Joining an existing cluster (`auto`, `ray://host:port`) is left as Ray does it.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from qcheck.errors import Problem, QcheckError

RAY_INSTALL = 'pip install "qcheck[ray]"'
LOOPBACK = "127.0.0.1"
# Ray's switch (named for macOS and Windows, where it is off) that makes a node use the loopback address
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray():
    try:
        import ray
    except ImportError:
        raise QcheckError(Problem("the ray executor needs Ray, which is not installed",
                                  hint=f"install it with `{RAY_INSTALL}` (or run with --executor local)")) from None
    return ray


@contextmanager
def connected(address: str | None, cpus: int):
    """Ray initialized for the block: the cluster at `address`, or a new one on this machine with `cpus` CPUs
    (never one that happens to run here already, which ray.init() without an address would join). A Ray this
    process initialized already (a test's cluster, a Ray task's own worker) is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address and address.startswith("ray://"):
        _client_token_auth()
    try:
        # Ray's client warns of a timeout on stderr before it raises; the error below says it once
        with _loopback(address is None), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **({} if address else {"num_cpus": cpus, "_node_ip_address": LOOPBACK}))
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise QcheckError(Problem(f"cannot reach the Ray cluster at {address or 'a new local cluster'}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                                  hint="start one with `ray start --head`, or give --address ray://host:port; a cluster "
                                       "with token authentication needs its token here (~/.ray/auth_token, or "
                                       "RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)")) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def start_local(cpus: int):
    """A new Ray cluster on this machine bound to 127.0.0.1, left running (ray.shutdown() ends it): for a test or a
    benchmark that hands one cluster to several sweeps."""
    ray = import_ray()
    with _loopback(True):
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address=LOOPBACK)
    return ray


@contextmanager
def _loopback(local: bool):
    """While a local cluster starts: Ray's node-address switch off, so 127.0.0.1 is not replaced by the machine's
    address (ray._private.services.resolve_ip_for_localhost); the processes it starts inherit the environment.
    Restored afterwards, so joining a remote cluster later in this process works as Ray intends."""
    if not local:
        yield
        return
    import ray._private.ray_constants as constants

    saved_env, saved = os.environ.get(_CLUSTER_ENV), constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_ENV], constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = saved_env


def _client_token_auth() -> None:
    """Ray clusters started where a token exists (`ray start` after any local cluster made ~/.ray/auth_token)
    require it, and a Ray Client sends it only in token mode: turn that on when the user left RAY_AUTH_MODE
    unset and a token is at hand (a cluster without authentication ignores it)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path or Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
