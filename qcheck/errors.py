"""Errors a user can cause, and how they are shown.

A `QcheckError` is a user-facing problem (bad policy, missing file, wrong data):
the CLI prints its message and exits with code 2, never a traceback. Anything
else that escapes is a bug in qcheck and is reported as one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Problem:
    """One thing wrong, with where it is (file and line when known) and what to do."""

    message: str
    file: str | None = None
    line: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        text = where + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class QcheckError(Exception):
    """A problem the user can fix. Holds one or more `Problem`s, all reported at once."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str, hint: str | None = None):
        if isinstance(problems, str):
            problems = [Problem(problems, hint=hint)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = problems
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class PolicyError(QcheckError):
    """The policy file (or a rule pack) is invalid."""


class ModelError(QcheckError):
    """The model cannot be loaded, fixed or quantized."""


class DataError(QcheckError):
    """Calibration or evaluation data do not fit the model."""
