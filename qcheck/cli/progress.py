"""What the terminal shows while a run works: stage lines, progress bars with time left, or JSON lines.

Three modes, all on stderr so stdout stays for results:

- `bar` (an interactive terminal): one line per stage, redrawn in place as
  `  calibrate [########........]  12/40 samples  0:03, ~0:07 left`;
- `plain` (a log file, CI): stage lines; every PLAIN_INTERVAL seconds a line with the stage, done/total
  and the time left (`    measure: 12/40 samples, 0:31 so far, ~1:12 left`), also while a stage
  reports nothing (a heartbeat names what is running), so a CI log is never silent for a minute;
  and one line when a stage's samples are done;
- `json` (`--json`): one JSON object per line, `{"event": "progress", "stage": ..., "done": 12,
  "total": 40, "elapsed_s": 3.1, "eta_s": 7.2}`, for tools to follow;
- `quiet`: nothing.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

from qcheck.errors import printable

PLAIN_INTERVAL = 30.0  # seconds between plain progress lines: CI logs see one at least every minute

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
        self._done = self._total = 0
        self._activity = ""  # the last stage line (`log`), for the heartbeat
        self._activity_start = clock()
        self._last_line = clock()  # when the plain stream last got a line
        self._lock = threading.Lock()  # the heartbeat thread writes too
        self._stop: threading.Event | None = None

    @classmethod
    def for_terminal(cls, quiet: bool = False, json_lines: bool = False, stream: TextIO | None = None) -> Reporter:
        stream = stream or sys.stderr
        if json_lines:
            return cls("json", stream)
        if quiet:
            return cls("quiet", stream)
        if getattr(stream, "isatty", lambda: False)():
            return cls("bar", stream)
        reporter = cls("plain", stream)
        reporter.start_heartbeat()
        return reporter

    def start_heartbeat(self, interval: float | None = None) -> None:
        """Plain mode: a thread that writes a line when none was written for `interval` seconds."""
        interval = PLAIN_INTERVAL if interval is None else interval
        self._stop = threading.Event()

        def beat(stop=self._stop):
            while not stop.wait(max(interval / 4, 0.01)):
                now = self.clock()
                with self._lock:
                    if now - self._last_line >= interval and self._activity:
                        self._write_locked(self._status_line(now))

        threading.Thread(target=beat, name="qcheck-progress", daemon=True).start()

    def close(self) -> None:
        """Stop the heartbeat and end a half-drawn bar."""
        if self._stop is not None:
            self._stop.set()
        self.finish()

    def _status_line(self, now: float) -> str:
        if self._stage and 0 < self._done < self._total:
            return self._plain_progress(now)
        return f"    still working: {self._activity} ({format_seconds(now - self._activity_start)} so far)\n"

    def _plain_progress(self, now: float) -> str:
        elapsed = now - self._start
        eta = eta_seconds(elapsed, self._done - 1, self._total - 1) if self._done > 1 else None
        unit = UNITS.get(self._stage, "steps")
        left = f", ~{format_seconds(eta)} left" if eta is not None else ""
        return f"    {self._stage}: {self._done}/{self._total} {unit}, {format_seconds(elapsed)} so far{left}\n"

    def _write(self, text: str) -> None:
        with self._lock:
            self._write_locked(text)

    def _write_locked(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
        self._last_line = self.clock()

    def finish(self) -> None:
        """End a bar left half-drawn (the run stopped mid-stage), so what follows starts on its own line."""
        if self._open_line:
            self._write("\n")
            self._open_line = False

    def log(self, msg: str) -> None:
        if self.mode == "quiet":
            return
        self.finish()
        self._activity, self._activity_start = msg.rstrip(" .") or msg, self.clock()
        if self.mode == "json":
            self._write(json.dumps({"event": "log", "message": msg}) + "\n")
        else:
            self._write(f"  {printable(msg)}\n")

    def progress(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self._stage:
            self.finish()  # the previous stage's last state stays on screen
            self._stage, self._start, self._last_draw = stage, now, -1e9
            # the first report comes after the first sample: count from a sample earlier, at that pace
        self._done, self._total = done, total
        elapsed = now - self._start
        eta = eta_seconds(elapsed, done - 1, total - 1) if done > 1 else None
        finished = done >= total
        if self.mode == "plain" and not finished:
            if now - self._last_line >= PLAIN_INTERVAL:
                self._write(self._plain_progress(now))
            return
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
