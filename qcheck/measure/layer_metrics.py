"""The policy's layer metrics (`layer_metrics:`), computed in the measurement pass that holds the arrays.

The measurement calls `LayerMetrics.update` once per tensor and sample with
the float and dequantized arrays it already compared (no extra model run),
for the comparison the metric names (`mode: local`, the per-layer twin; or
`whole`, the float model), and `LayerMetrics.values` once per tensor at the
end. Expressions are policy.array_expr's; python functions are found and
called like python model metrics (measure.tasks.python: policy folder or
entry point, a worker thread with a time limit, errors naming the tensor and
sample).

A value that is not a number on one sample (0/0) is left out of the mean
over samples; a tensor with no such value gets null, which rules treat as not
applicable.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from qcheck.errors import Problem
from qcheck.measure.tasks.python import DEFAULT_TIMEOUT, MetricFunctionError, _Failed, as_number, call_limited, resolve
from qcheck.policy.array_expr import PER_CHANNEL, REDUCED, Accumulator, as_value, summary_key
from qcheck.policy.spec import LayerMetricSpec
from qcheck.quantize.grid import qlimits
from qcheck.quantize.qdq import QuantizedTensor

ARGUMENTS = ("float", "quant", "diff", "scale", "zero_point", "qmin", "qmax")


def tensor_env(t: QuantizedTensor, reference: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """The names a layer metric reads, for one tensor on one sample."""
    lo, hi = qlimits(t.dtype)
    if t.symmetric_restricted:
        lo = -hi
    return {"float": reference, "quant": test, "diff": reference - test, "scale": t.scale_for(reference.shape),
            "zero_point": t.zero_point_for(reference.shape), "qmin": lo, "qmax": hi,
            summary_key("scale"): t.summary_scale(), summary_key("zero_point"): int(np.median(t.zero_point))}


class _State:
    """One metric on one tensor: per-sample values (over samples) or its reductions' accumulators."""

    def __init__(self, spec: LayerMetricSpec):
        self.total, self.count = 0.0, 0
        self.acc = ([Accumulator(name) for name, _ in spec.expression.reductions]
                    if spec.over == "elements" and spec.expression is not None else None)
        self.scalars: dict[str, Any] | None = None  # the tensor's scale etc., for the final evaluation


class LayerMetrics:
    """Every layer metric of a policy, for one measurement."""

    def __init__(self, specs: dict[str, LayerMetricSpec], folder: Path):
        self.specs = specs
        self.functions: dict[str, tuple[Callable, tuple[str, ...] | None]] = {}
        for name, spec in specs.items():
            if spec.function is not None:
                where = Problem("", spec.file, spec.line)
                fn = resolve(spec.function, folder, where, spec.timeout or DEFAULT_TIMEOUT)
                self.functions[name] = (fn, _named_arguments(fn))
        self.state: dict[tuple[str, str], _State] = {}
        self.seconds = dict.fromkeys(specs, 0.0)  # time spent per metric (bench/)

    def modes(self) -> set[str]:
        return {s.mode for s in self.specs.values()}

    def update(self, mode: str, t: QuantizedTensor, reference: np.ndarray, test: np.ndarray, sample: str) -> None:
        """One tensor's arrays on one sample, from the comparison `mode` (local or whole)."""
        env = None
        for name, spec in self.specs.items():
            if spec.mode != mode:
                continue
            env = env or tensor_env(t, reference, test)
            start = time.perf_counter()
            state = self.state.setdefault((name, t.name), _State(spec))
            if state.acc is not None:
                for (_fn, arg), acc in zip(spec.expression.reductions, state.acc):
                    acc.update(self._guarded(spec, t, sample, lambda a=arg, e=env: a(e)))
                state.scalars = {k: env[k] for k in ("qmin", "qmax", *map(summary_key, PER_CHANNEL))}
            else:
                value = self._one_sample(spec, t, env, sample)
                if not math.isnan(value):
                    state.total += value
                    state.count += 1
            self.seconds[name] += time.perf_counter() - start

    def values(self, tensor: str) -> dict[str, float | None]:
        """Each metric's value on one tensor (None when it had no value)."""
        out = {}
        for name, spec in self.specs.items():
            state = self.state.get((name, tensor))
            if state is None:
                out[name] = None
            elif state.acc is not None:
                reduced = {REDUCED: [a.value() for a in state.acc], **(state.scalars or {})}
                with np.errstate(all="ignore"):
                    value = as_value(spec.expression.evaluate(reduced))
                out[name] = None if math.isnan(value) else value
            else:
                out[name] = state.total / state.count if state.count else None
        return out

    def _one_sample(self, spec: LayerMetricSpec, t: QuantizedTensor, env: dict, sample: str) -> float:
        if spec.expression is not None:
            return self._guarded(spec, t, sample, lambda: as_value(spec.expression.evaluate(env)))
        fn, wanted = self.functions[spec.name]
        args = {k: _read_only(env[k]) for k in (wanted if wanted is not None else ARGUMENTS)}
        try:
            out = call_limited(lambda: fn(**args), (), spec.timeout)
        except _Failed as exc:
            raise self._error(spec, t, sample, f"{spec.function} {exc.what}") from None
        value = as_number(out)
        if value is None and not (isinstance(out, float) and math.isnan(out)):
            raise self._error(spec, t, sample, f"{spec.function} returned {str(out)[:80]!r}; expected a number")
        return math.nan if value is None else value

    def _guarded(self, spec: LayerMetricSpec, t: QuantizedTensor, sample: str, compute: Callable[[], Any]) -> Any:
        try:
            with np.errstate(all="ignore"):  # 0/0 and log(0) are NaN/inf, decided per value, not warnings
                return compute()
        except (ValueError, TypeError, MemoryError) as exc:
            raise self._error(spec, t, sample, f"`{spec.expression.text}` failed: {exc}") from None

    def _error(self, spec: LayerMetricSpec, t: QuantizedTensor, sample: str, what: str) -> MetricFunctionError:
        return MetricFunctionError(Problem(f"layer metric '{spec.name}' on tensor '{t.name}', sample {sample}: {what}",
                                           spec.file, spec.line))


def _named_arguments(fn: Callable) -> tuple[str, ...] | None:
    """The arguments among ARGUMENTS a python layer metric declares; None when it takes **kwargs (all)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.name in ARGUMENTS)


def _read_only(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.view()
        value.flags.writeable = False
    return value
