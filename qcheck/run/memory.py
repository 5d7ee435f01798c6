"""Peak resident memory of each stage of a run.

On Linux the kernel keeps the process's resident high-water mark (VmHWM in
/proc/self/status) and lets the process reset it (writing 5 to
/proc/self/clear_refs): resetting at a stage's start and reading at its end
gives that stage's own peak, caught between samples as well as at the end.
Elsewhere (macOS, a kernel that refuses the reset) only the process's peak so
far is known (`getrusage`), so a stage's figure is the peak of it and every
stage before; `METHOD` says which one a run used.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")
PER_STAGE = "per stage: the resident high-water mark reset at each stage's start (Linux VmHWM)"
SO_FAR = "cumulative: the process's peak resident memory up to the end of each stage (getrusage)"


def _read_hwm_mb() -> float | None:
    try:
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _rusage_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


class StagePeak:
    """`start()` before a stage, `peak_mb()` after it."""

    def __init__(self) -> None:
        self.method = PER_STAGE if self._reset() and _read_hwm_mb() is not None else SO_FAR

    @staticmethod
    def _reset() -> bool:
        try:
            _CLEAR.write_text("5")
        except OSError:
            return False
        return True

    def start(self) -> None:
        if self.method == PER_STAGE:
            self._reset()

    def peak_mb(self) -> float:
        if self.method == PER_STAGE:
            value = _read_hwm_mb()
            if value is not None:
                return value
        return _rusage_mb()
