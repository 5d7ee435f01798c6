"""Errors a user can cause, and how they are shown.

A `QcheckError` is a user-facing problem (bad policy, missing file, wrong data):
the CLI prints its message and exits with code 2, never a traceback. Anything
else that escapes is a bug in qcheck and is reported as one.
"""

from __future__ import annotations

import re
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


THIRD_PARTY = ("onnxruntime", "onnx")


def raised_by_third_party(exc: BaseException, packages: tuple[str, ...] = THIRD_PARTY) -> bool:
    """Whether `exc` was raised in `packages` (ONNX Runtime, onnx) rather than in qcheck's own code: the innermost
    frame of its traceback that belongs to qcheck or to one of them decides (numpy called from either counts as its
    caller). For the broad `except Exception` around a call into ORT's Python code, which raises plain ValueError,
    AssertionError, KeyError ...: only those become the user's or the candidate's problem; a bug of qcheck's in
    the same block must stay a bug (exit 3 with its traceback)."""
    owner, tb = None, exc.__traceback__
    while tb is not None:
        top = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        if top == "qcheck" or top in packages:
            owner = top
        tb = tb.tb_next
    return owner in packages


# ORT prefixes some messages with its C++ source file, line and function signature: no help to a user.
_CPP_LOCATION = re.compile(r"[\w./\\-]+\.(?:h|hpp|cc|cpp):\d+ (?:[^()]*\([^()]*\)\s*(?:const\s*)?)?")


def first_line(exc: BaseException, shown_as: dict | None = None) -> str:
    """The first line of an exception's message (ORT's run to pages), or its type when it has none.

    `shown_as` maps qcheck's working copies (temporary paths) to what the user knows them as (their
    model's file): ONNX Runtime names the file it was given, and a temporary path helps nobody.
    """
    text = str(exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    text = _CPP_LOCATION.sub("", text)
    for path, name in (shown_as or {}).items():
        text = text.replace(str(path), str(name))
    return text


# Characters a terminal or an SVG would act on rather than show: C0/C1 controls (ESC starts a terminal command; XML
# forbids them, so WeasyPrint drops a plot whose label holds one) and the bidi overrides that reorder what is shown
# ("Trojan source"). A hostile model can put them in its node and tensor names.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with every control and bidi character shown as its escape (`\\x1b`, `\\u202e`); newlines and tabs kept."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1] if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                            text)


def printable_data(value):
    """`printable` applied to every string in nested dicts and lists (keys too): results as a report shows them."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_data(k): printable_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_data(v) for v in value]
    return value


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
