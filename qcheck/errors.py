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


def first_line(exc: BaseException, shown_as: dict | None = None) -> str:
    """The first line of an exception's message (ORT's run to pages), or its type when it has none.

    `shown_as` maps qcheck's working copies (temporary paths) to what the user knows them as (their
    model's file): ONNX Runtime names the file it was given, and a temporary path helps nobody.
    """
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    for path, name in (shown_as or {}).items():
        text = text.replace(str(path), str(name))
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
