"""Exit codes, for CI: each means one thing."""

from __future__ import annotations

PASS = 0  # the policy's requirements hold (or it has none)
FAIL = 1  # they do not
USER_ERROR = 2  # a usage, policy, model or data error: one message, no traceback
BUG = 3  # a bug in qcheck: the traceback, and a request to report it
RESOURCES = 4  # the machine ran out (memory, a worker process killed, a Ray task lost): retry, or change settings
