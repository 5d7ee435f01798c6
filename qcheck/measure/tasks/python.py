"""Metrics written in Python, named in the policy: `function: module:function`.

The function is found, in this order, as an installed entry point in the
group `qcheck.metrics` (by its name, or by its value `module:function`), or
in `module.py` next to the policy file. It is called once per evaluation
sample as `function(float_outputs, quant_outputs)`, both dicts of output name
to numpy array, and returns a number, or a dict of numbers keyed by the names
listed in `values:`. The metric's value is the mean over samples.

The YAML text itself is never executed: the policy only names a function
that the user installed or placed next to the policy.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from qcheck.errors import Problem, QcheckError
from qcheck.measure.tasks.base import Stat, TaskMetric, ratio

GROUP = "qcheck.metrics"


class MetricFunctionError(QcheckError):
    """A user's metric function cannot be found, raised, or returned something that is not a number."""


def resolve(text: str, folder: Path, where: Problem) -> Callable:
    """The function `text` names; `where` locates the policy line for messages."""
    def fail(message: str, hint: str | None = None):
        return MetricFunctionError(Problem(message, where.file, where.line, hint))

    for ep in entry_points(group=GROUP):
        if ep.name == text or ep.value == text:
            try:
                fn = ep.load()
            except Exception as exc:  # noqa: BLE001 - the user's package failed to import
                raise fail(f"entry point '{ep.name}' ({ep.value}) in group {GROUP} cannot be loaded: "
                           f"{type(exc).__name__}: {exc}") from None
            break
    else:
        module, _, name = text.partition(":")
        if not name:
            raise fail(f"function '{text}' is not an entry point in group {GROUP}",
                       hint="write module:function with module.py next to the policy, or install the entry point")
        path = folder / (module.replace(".", "/") + ".py")
        if not path.is_file():
            raise fail(f"function '{text}': no entry point in group {GROUP} has that name, and {path} does not exist",
                       hint="put module.py next to the policy, or install a package declaring the entry point")
        spec = importlib.util.spec_from_file_location(f"qcheck_user_metric_{module.replace('.', '_')}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:  # noqa: BLE001 - the user's file failed to import
            raise fail(f"function '{text}': importing {path} failed: {_where(exc)}") from None
        fn = getattr(mod, name, None)
        if fn is None:
            raise fail(f"function '{text}': {path} has no '{name}'")
    if not callable(fn):
        raise fail(f"function '{text}' is not callable")
    return fn


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


class PythonMetric(TaskMetric):
    task = "python"

    def __init__(self, name, options, fn: Callable, where: Problem):
        super().__init__(name, options, None)
        self.fn = fn
        self.where = where
        self.keys = tuple(options.get("values") or ("value",))
        self.columns = tuple(k for key in self.keys for k in (key, key + "#n"))

    def stats(self) -> list[Stat]:
        return [Stat(k, (k, k + "#n"), ratio) for k in self.keys]

    def update(self, sample: str, f: dict, q: dict) -> None:
        text = self.options["function"]
        try:
            out = self.fn(dict(f), dict(q))
        except Exception as exc:  # noqa: BLE001 - the user's code raised: report it, with where
            raise MetricFunctionError(Problem(f"metric '{self.name}': {text} raised on sample {sample}: {_where(exc)}",
                                              self.where.file, self.where.line)) from None
        if not isinstance(out, dict):
            out = {self.keys[0]: out} if len(self.keys) == 1 else out
        if not isinstance(out, dict) or set(out) != set(self.keys):
            got = sorted(out) if isinstance(out, dict) else type(out).__name__
            raise MetricFunctionError(Problem(
                f"metric '{self.name}': {text} must return {'a number' if len(self.keys) == 1 else 'a dict'} with "
                f"{', '.join(self.keys)}; it returned {got} on sample {sample}", self.where.file, self.where.line,
                hint="declare the names it returns under `values:`"))
        row = []
        for key in self.keys:
            try:
                v = float(out[key])
            except (TypeError, ValueError):
                raise MetricFunctionError(Problem(f"metric '{self.name}': {text} returned {out[key]!r} for '{key}' on "
                                                  f"sample {sample}; expected a number", self.where.file,
                                                  self.where.line)) from None
            row += [v, 0.0 if math.isnan(v) else 1.0]
            if math.isnan(v):
                row[-2] = 0.0
        self.items.append(sample)
        self.rows.append(row)
        self.details.append({k: float(out[k]) for k in self.keys})

    def update_item(self, item, index, f, q, b):  # pragma: no cover - update() is overridden
        raise NotImplementedError
