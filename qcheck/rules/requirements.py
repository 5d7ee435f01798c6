"""The verdict: do the policy's `require:` lines hold?"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from qcheck.errors import Problem, QcheckError
from qcheck.policy.expr import EvalError, NotApplicable
from qcheck.policy.spec import Requirement


def requirement_env(aggregate: dict, user_metrics: dict, finding_counts: dict,
                    tasks: dict | None = None) -> dict[str, Any]:
    env = {f"model.{k}": v for k, v in aggregate.items()}
    env.update({f"findings.{k}": v for k, v in finding_counts.items()})
    env.update({name: m["value"] for name, m in user_metrics.items()})
    for name, t in (tasks or {}).items():  # task metrics: `name` is the primary value, `name.<value>` each value
        env[name] = t["value"]
        env.update({f"{name}.{key}": v["value"] for key, v in t["values"].items()})
    return env


def task_intervals(tasks: dict) -> dict[str, dict]:
    """Bootstrap intervals of task-metric values, by the names `require:` uses."""
    out = {}
    for name, t in tasks.items():
        for key, v in t["values"].items():
            if v["ci"][0] is None:
                continue
            entry = {"ci": v["ci"], "n": len(v["per_sample"]), "confidence": t["confidence"]}
            out[f"{name}.{key}"] = entry
            if key == t["primary"]:
                out[name] = entry
    return out


MAX_CORNERS = 4  # names with intervals in one line, beyond which sureness is not judged


def sureness(req: Requirement, env: dict[str, Any], holds: bool, intervals: dict) -> tuple[bool | None, str | None]:
    """Does the line give the same answer at every end of its values' bootstrap intervals?"""
    names = [n for n in sorted(req.expression.names) if n in intervals]
    if not names or len(names) > MAX_CORNERS:
        return None, None
    outcomes = set()
    for corner in itertools.product(*[(intervals[n]["ci"][0], intervals[n]["ci"][1]) for n in names]):
        try:
            outcomes.add(bool(req.expression.evaluate({**env, **dict(zip(names, corner))})))
        except NotApplicable:
            return None, None
    first = intervals[names[0]]
    ranges = "; ".join(f"{n} in [{intervals[n]['ci'][0]:.4g}, {intervals[n]['ci'][1]:.4g}]" for n in names)
    where = f"{round(100 * first['confidence'])}% bootstrap interval over {first['n']} samples: {ranges}"
    if outcomes == {holds}:
        return True, f"sure: {'holds' if holds else 'fails'} across the {where}"
    return False, f"not sure: the {where} reaches both sides of the line; more evaluation samples would settle it"


def with_margin(req: Requirement, env: dict[str, Any], resamples: dict[str, np.ndarray],
                confidence: float) -> dict | None:
    """The line judged with a margin for sampling noise, on bootstrap resamples of its values (`resamples`: name ->
    [B], `measure.resample`). A line `side >= c` holds when its one-sided lower bound at `confidence` does: the
    (1 - confidence) quantile of the side over the resamples, taken as an order statistic (no interpolation); `<=`
    takes the upper bound, the `confidence` quantile. Any other line holds when it holds on at least `confidence`
    of the resamples. None when the line reads no resampled value (findings.* counts, a value with no samples)."""
    names = [n for n in sorted(req.expression.names) if n in resamples]
    if not names:
        return None
    count = len(resamples[names[0]])
    envs = ({**env, **{n: float(resamples[n][b]) for n in names}} for b in range(count))
    limit = req.expression.limit
    out = {"confidence": confidence, "resamples": count, "names": names}
    if limit is None:
        held = [_holds(req, e) for e in envs]
        share = sum(h for h in held if h is not None) / max(sum(h is not None for h in held), 1)
        return {**out, "bound": None, "share": share, "holds": share >= confidence}
    sides = []
    for e in envs:
        try:
            v = limit.side(e)
        except NotApplicable:
            continue
        if isinstance(v, (int, float)) and not math.isnan(v):
            sides.append(float(v))
    if not sides:
        return None
    lower = limit.at_least
    bound = float(np.quantile(sides, 1 - confidence, method="lower") if lower
                  else np.quantile(sides, confidence, method="higher"))
    return {**out, "bound": bound, "side": "lower" if lower else "upper",
            "holds": limit.met_by(bound)}


def _holds(req: Requirement, env: dict[str, Any]) -> bool | None:
    try:
        return bool(req.expression.evaluate(env))
    except (NotApplicable, EvalError, ArithmeticError, TypeError, ValueError):
        return None


def judge(requirements: list[Requirement], env: dict[str, Any], intervals: dict | None = None) -> dict:
    lines = []
    for req in requirements:
        values = {n: env.get(n) for n in sorted(req.expression.names)}
        note = None
        try:
            holds = bool(req.expression.evaluate(env))
            if any(isinstance(v, float) and math.isnan(v) for v in values.values()):
                holds, note = False, "a value is NaN"
        except NotApplicable as exc:
            holds = False
            note = f"{exc.name} has no value for this model" + (
                " (no output looks like class scores)" if exc.name in ("model.top1", "model.top5") else "")
        except (EvalError, ArithmeticError, TypeError, ValueError) as exc:
            shown = ", ".join(f"{n} = {v}" for n, v in values.items())
            raise QcheckError(Problem(f"require: '{req.text}' cannot be evaluated: {exc} (with {shown})", req.file,
                                      req.line, hint="rewrite the line so it cannot divide by zero, e.g. multiply "
                                      "instead of dividing")) from None
        sure, how_sure = sureness(req, env, holds, intervals or {}) if note is None else (None, None)
        lines.append({"text": req.text, "holds": holds, "values": values, "line": req.line, "note": note,
                      "sure": sure, "how_sure": how_sure})
    failed = sum(1 for r in lines if not r["holds"])
    status = "no-requirements" if not lines else ("pass" if failed == 0 else "fail")
    failing = [n for r in lines if not r["holds"] for n in r["values"]]
    return {"status": status, "requirements": lines, "failed": failed, "failing_metrics": list(dict.fromkeys(failing))}
