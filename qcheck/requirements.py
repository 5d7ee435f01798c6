"""The verdict: do the policy's `require:` lines hold?"""

from __future__ import annotations

import math
from typing import Any

from qcheck.expr import NotApplicable
from qcheck.policy import Requirement


def requirement_env(aggregate: dict, user_metrics: dict, finding_counts: dict) -> dict[str, Any]:
    env = {f"model.{k}": v for k, v in aggregate.items()}
    env.update({f"findings.{k}": v for k, v in finding_counts.items()})
    env.update({name: m["value"] for name, m in user_metrics.items()})
    return env


def judge(requirements: list[Requirement], env: dict[str, Any]) -> dict:
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
        lines.append({"text": req.text, "holds": holds, "values": values, "line": req.line, "note": note})
    failed = sum(1 for r in lines if not r["holds"])
    status = "no-requirements" if not lines else ("pass" if failed == 0 else "fail")
    return {"status": status, "requirements": lines, "failed": failed}
