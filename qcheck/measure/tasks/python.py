"""Metrics written in Python, named in the policy: `function: module:function`.

The function is found, in this order, as an installed entry point in the
group `qcheck.metrics` (by its name, or by its value `module:function`), or
in `module.py` next to the policy file. It is called once per evaluation
sample as `function(float_outputs, quant_outputs)`, both dicts of output name
to numpy array, and returns a number, or a dict of numbers keyed by the names
listed in `values:`. The metric's value is the mean over samples.

The YAML text itself is never executed: the policy only names a function
that the user installed or placed next to the policy (a module path with `..`,
an absolute path, or a file that resolves outside the policy's folder is
refused). Every call (the import too) runs in a worker thread under a time
limit (`timeout:`, default 300 seconds) with everything it can
raise caught, `SystemExit` included: user code ends a run only as exit 2 with
a message naming the function. A real Ctrl-C still interrupts the run.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import re
import sys
import threading
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from qcheck.errors import Problem, QcheckError
from qcheck.measure.tasks.base import Stat, TaskMetric, ratio

GROUP = "qcheck.metrics"
DEFAULT_TIMEOUT = 300.0  # seconds per call
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class MetricFunctionError(QcheckError):
    """A user's metric function cannot be found, raised, or returned something that is not a number."""


class _Failed(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def call_limited(fn: Callable, args: tuple, seconds: float) -> Any:
    """fn(*args) in a worker thread; `_Failed` describes what it raised, or that it outran `seconds`.

    The worker is a daemon thread: one that never returns cannot keep the process alive after the run ends.
    """
    outcome: dict[str, Any] = {}

    def work():
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt raised by user code included
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="qcheck-user-code", daemon=True)
    worker.start()
    worker.join(seconds)  # a signal to the main thread (Ctrl-C, SIGTERM) still interrupts this wait
    if worker.is_alive():
        raise _Failed(f"did not return within {seconds:g} s")
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, SystemExit):
            raise _Failed(f"called sys.exit({exc.code!r}) (SystemExit{_where(exc, '')})")
        raise _Failed(f"raised {_where(exc)}")
    return outcome["value"]


def locate(text: str, folder: Path) -> tuple[str, Any]:
    """Where the function `text` names lives, without running anything: ("entry_point", ep) or ("file", path).

    Raises ValueError with the reason it cannot be found (the caller adds the policy line).
    """
    for ep in entry_points(group=GROUP):
        if ep.name == text or ep.value == text:
            return "entry_point", ep
    module, _, name = text.partition(":")
    if not name:
        raise ValueError(f"function '{text}' is not an entry point in group {GROUP}; write module:function with "
                         f"module.py next to the policy, or install the entry point")
    if not _MODULE.fullmatch(module) or not name.isidentifier():
        raise ValueError(f"function '{text}': the module must be a dotted name (module.py in the policy's folder, "
                         "no absolute paths, no '..'), or an installed entry point in group " + GROUP)
    path = folder / (module.replace(".", "/") + ".py")
    if not path.is_file():
        raise ValueError(f"function '{text}': no entry point in group {GROUP} has that name, and {path} does not "
                         "exist; put module.py next to the policy, or install a package declaring the entry point")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"function '{text}': {path} leads outside the policy's folder ({path.resolve()}); copy the "
                         "module next to the policy, or install it as an entry point")
    return "file", path


def resolve(text: str, folder: Path, where: Problem, timeout: float = DEFAULT_TIMEOUT) -> Callable:
    """The function `text` names; `where` locates the policy line for messages."""
    def fail(message: str, hint: str | None = None):
        return MetricFunctionError(Problem(message, where.file, where.line, hint))

    try:
        kind, found = locate(text, folder)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if kind == "entry_point":
        try:
            fn = call_limited(found.load, (), timeout)
        except _Failed as exc:
            raise fail(f"entry point '{found.name}' ({found.value}) in group {GROUP} cannot be loaded: it "
                       f"{exc.what}") from None
    else:
        module, _, name = text.partition(":")
        spec = importlib.util.spec_from_file_location(f"qcheck_user_metric_{module.replace('.', '_')}", found)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        try:
            call_limited(spec.loader.exec_module, (mod,), timeout)
        except _Failed as exc:
            sys.modules.pop(spec.name, None)
            raise fail(f"function '{text}': importing {found} failed: it {exc.what}") from None
        fn = getattr(mod, name, None)
        if fn is None:
            raise fail(f"function '{text}': {found} has no '{name}'")
    if not callable(fn):
        raise fail(f"function '{text}' is not callable")
    return fn


def _where(exc: BaseException, sep: str = ": ") -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    if not sep:
        return at
    return f"{type(exc).__name__}{sep}{exc}{at}"


def _read_only(outputs: dict) -> dict:
    """Views the function cannot write through: `q['y'] -= f['y']` would change what the other metrics see."""
    views = {}
    for k, v in outputs.items():
        if isinstance(v, np.ndarray):
            v = v.view()
            v.flags.writeable = False
        views[k] = v
    return views


def _shown(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - an int too long to print, or a user object whose __repr__ raises
        return f"a {type(value).__name__} that cannot be shown"


def as_number(value: Any) -> float | None:
    """A finite float from what a metric returned, or None when it is not one."""
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        value = value.reshape(()).item()
    if not isinstance(value, (numbers.Real, np.bool_)):
        return None
    try:
        v = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return v if math.isfinite(v) else None


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
        timeout = float(self.options.get("timeout", DEFAULT_TIMEOUT))
        try:
            out = call_limited(self.fn, (_read_only(f), _read_only(q)), timeout)
        except _Failed as exc:
            hint = (f"raise metrics.{self.name}.timeout if it legitimately takes longer"
                    if exc.what.startswith("did not return") else None)
            raise MetricFunctionError(Problem(f"metric '{self.name}': {text} {exc.what} on sample {sample}",
                                              self.where.file, self.where.line, hint)) from None
        if not isinstance(out, dict):
            out = {self.keys[0]: out} if len(self.keys) == 1 else out
        if not isinstance(out, dict) or set(out) != set(self.keys):
            got = sorted(map(str, out)) if isinstance(out, dict) else type(out).__name__
            raise MetricFunctionError(Problem(
                f"metric '{self.name}': {text} must return {'a number' if len(self.keys) == 1 else 'a dict'} with "
                f"{', '.join(self.keys)}; it returned {got} on sample {sample}", self.where.file, self.where.line,
                hint="declare the names it returns under `values:`"))
        values = {}
        for key in self.keys:
            v = as_number(out[key])
            if v is None:
                shown = _shown(out[key])
                raise MetricFunctionError(Problem(
                    f"metric '{self.name}': {text} returned {shown[:80]}{'...' if len(shown) > 80 else ''} for "
                    f"'{key}' on sample {sample}; expected a finite number", self.where.file, self.where.line))
            values[key] = v
        self.items.append(sample)
        self.rows.append([x for key in self.keys for x in (values[key], 1.0)])
        self.details.append(values)

    def update_item(self, item, index, f, q, b):  # pragma: no cover - update() is overridden
        raise NotImplementedError

