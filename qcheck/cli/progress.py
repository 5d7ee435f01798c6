"""What the terminal shows while a run works: stage lines, progress bars with time left, or JSON lines.

Three modes, all on stderr so stdout stays for results:

- `bar` (an interactive terminal): one line per stage, redrawn in place as
  `  calibrate [########........]  12/40 samples  0:03, ~0:07 left`;
- `plain` (a log file, CI): stage lines, and one line when a stage's samples are done;
- `json` (`--json`): one JSON object per line, `{"event": "progress", "stage": ..., "done": 12,
  "total": 40, "elapsed_s": 3.1, "eta_s": 7.2}`, for tools to follow;
- `quiet`: nothing.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

# What a stage counts, when the bar should say so; other stages show bare counts.
UNITS = {"calibrate": "samples", "measure": "samples", "curves": "samples", "check calibration data": "samples",
         "check evaluation data": "samples"}


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def eta_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Time left at the average pace so far; None before anything is done."""
    if done <= 0 or total <= 0:
        return None
    return elapsed / done * max(total - done, 0)


def bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Reporter:
    """Console callbacks (`log`, `progress`) for the pipeline, in one of the modes above."""

    def __init__(self, mode: str = "plain", stream: TextIO | None = None, clock=time.monotonic, min_interval: float = 0.1):
        if mode not in ("bar", "plain", "json", "quiet"):
            raise ValueError(mode)
        self.mode, self.stream, self.clock, self.min_interval = mode, stream or sys.stderr, clock, min_interval
        self._stage: str | None = None
        self._open_line = False  # a bar is drawn without its newline yet
        self._start = 0.0
        self._last_draw = -1e9

    @classmethod
    def for_terminal(cls, quiet: bool = False, json_lines: bool = False, stream: TextIO | None = None) -> Reporter:
        stream = stream or sys.stderr
        if json_lines:
            return cls("json", stream)
        if quiet:
            return cls("quiet", stream)
        return cls("bar" if getattr(stream, "isatty", lambda: False)() else "plain", stream)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def finish(self) -> None:
        """End a bar left half-drawn (the run stopped mid-stage), so what follows starts on its own line."""
        if self._open_line:
            self._write("\n")
            self._open_line = False

    def log(self, msg: str) -> None:
        if self.mode == "quiet":
            return
        self.finish()
        if self.mode == "json":
            self._write(json.dumps({"event": "log", "message": msg}) + "\n")
        else:
            self._write(f"  {msg}\n")

    def progress(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self._stage:
            self.finish()  # the previous stage's last state stays on screen
            self._stage, self._start, self._last_draw = stage, now, -1e9
            # the first report comes after the first sample: count from a sample earlier, at that pace
        elapsed = now - self._start
        eta = eta_seconds(elapsed, done - 1, total - 1) if done > 1 else None
        finished = done >= total
        if self.mode == "quiet" or (not finished and now - self._last_draw < self.min_interval):
            return
        self._last_draw = now
        if self.mode == "json":
            self._write(json.dumps({"event": "progress", "stage": stage, "done": done, "total": total,
                                    "elapsed_s": round(elapsed, 3), "eta_s": None if eta is None else round(eta, 3)})
                        + "\n")
        elif self.mode == "bar":
            left = "" if finished else (f", ~{format_seconds(eta)} left" if eta is not None else "")
            unit = UNITS.get(stage, "")
            self._write(f"\r    {stage:<10} {bar(done, total)} {done}/{total}{' ' + unit if unit else ''}  "
                        f"{format_seconds(elapsed)}{left}"
                        + ("\n" if finished else "\x1b[K"))
            self._open_line = not finished
        elif finished:  # plain: one line per stage, nothing redrawn in log files
            unit = UNITS.get(stage, "steps")
            self._write(f"    {stage}: {total} {unit} in {format_seconds(elapsed)}\n")
