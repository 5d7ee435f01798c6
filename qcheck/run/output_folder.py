"""Writing a run's outputs without ever leaving a half-written folder behind.

Everything goes into a staging folder next to the destination; only when the
run has finished is the staging folder swapped in (two renames), and the
previous run's folder removed. A failed run leaves the previous one intact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from qcheck.errors import Problem, QcheckError

MARKER = "results.json"  # a folder holding this is a qcheck output folder


class OutputDir:
    def __init__(self, final: Path):
        self.final = final.resolve()
        self.staging = self.final.parent / f".{self.final.name}.tmp-{os.getpid()}"
        self._check()

    def _check(self) -> None:
        if self.final.exists() and not self.final.is_dir():
            raise QcheckError(Problem("the output path exists and is a file, not a folder", file=str(self.final),
                                      hint="set report.out (or --out) to a folder"))
        if self.final.is_dir() and any(self.final.iterdir()) and not (self.final / MARKER).exists():
            raise QcheckError(Problem(
                "the output folder is not empty and does not hold a previous qcheck run; refusing to replace it",
                file=str(self.final), hint="choose another report.out (or --out), or empty the folder"))
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            if self.staging.exists():
                shutil.rmtree(self.staging)
            self.staging.mkdir()
        except OSError as exc:
            raise QcheckError(Problem(f"cannot write the output folder: {exc.strerror or exc}", file=str(self.final),
                                      hint="check the permissions, or set report.out (or --out) elsewhere")) from None

    def path(self, name: str) -> Path:
        return self.staging / name

    def commit(self) -> Path:
        """Swap the finished staging folder in place of the destination."""
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.staging, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
