"""`layer_metrics:` in the policy: per-tensor statistics the user declares, checked when the policy loads.

    layer_metrics:
      p999_err: "percentile(abs(diff), 99.9) / scale"            # short form: an expression, over samples
      used_steps: {expr: "count_unique(round(quant / scale))", over: elements, chart: true}
      corr: {function: "mymetrics:corr", mode: whole}              # python: module.py next to the policy

Expressions are checked here (policy.array_expr: names, calls, exponents,
one number per tensor); a python function's module is found and imported by
the measure stage (measure.tasks.python.resolve, the rules of python model
metrics), which `qcheck validate` runs too.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from qcheck.policy.array_expr import NAMES, ArrayExpression
from qcheck.policy.expr import ExprError
from qcheck.policy.spec import LayerMetricSpec
from qcheck.results.layer_columns import TENSOR_STATISTICS

# (policy keys, message, hint)
Issue = tuple[tuple, str, str | None]
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_]*)?")
# statistics that are not numbers: the graph cannot be colored by them
NOT_NUMBERS = ("name", "kind", "node", "op_type", "dtype", "per_channel", "is_output", "per_layer_missing")


def read_layer_metrics(given: dict, file: str, line_of) -> tuple[dict[str, LayerMetricSpec], list[Issue]]:
    """The `layer_metrics:` mapping (schema-valid) -> specs, and the problems only its meaning shows.
    `line_of(keys)` gives the policy line of a key path."""
    specs, issues = {}, []
    for name, raw in given.items():
        keys = ("layer_metrics", name)
        entry = {"expr": raw} if isinstance(raw, str) else dict(raw)
        if name in TENSOR_STATISTICS:
            issues.append((keys, f"layer metric '{name}' has the name of a built-in statistic; choose another name",
                           None))
            continue
        if ("expr" in entry) == ("function" in entry):
            issues.append((keys, f"layer metric '{name}': give either `expr:` (an expression) or `function:` "
                                 "(module:function), not both or neither", None))
            continue
        spec = LayerMetricSpec(name, function=entry.get("function"), over=entry.get("over", "samples"),
                               mode=entry.get("mode", "local"), chart=bool(entry.get("chart", False)),
                               timeout=float(entry.get("timeout", 300.0)), file=file, line=line_of(keys))
        if "expr" in entry:
            where = keys if isinstance(raw, str) else (*keys, "expr")
            try:
                spec.expression = ArrayExpression(entry["expr"], over=spec.over)
            except ExprError as exc:
                bad = exc.args[1] if len(exc.args) > 1 else None
                guess = difflib.get_close_matches(bad, NAMES, n=1) if bad else []
                hint = (f"{'did you mean ' + repr(guess[0]) + '? ' if guess else ''}a layer metric reads "
                        f"{', '.join(NAMES)}") if bad else None
                issues.append((where, f"layer metric '{name}': {exc.args[0]}", hint))
                continue
        elif not _FUNCTION.fullmatch(spec.function):
            issues.append(((*keys, "function"), f"layer metric '{name}': function '{spec.function}' must be "
                           "module:function (module.py in the policy's folder) or an entry point name", None))
            continue
        specs[name] = spec
    return specs, issues


def check_color_by(color_by: str, layer_metrics: dict[str, Any]) -> Issue | None:
    """`report.graph.color_by` names a numeric per-tensor statistic or a layer metric."""
    known = [k for k in TENSOR_STATISTICS if k not in NOT_NUMBERS] + list(layer_metrics)
    if color_by in known:
        return None
    guess = difflib.get_close_matches(color_by, known, n=1)
    return (("report", "graph", "color_by"), f"report.graph.color_by: '{color_by}' is neither a numeric per-tensor "
            "statistic nor a layer metric the policy declares",
            (f"did you mean '{guess[0]}'? " if guess else "") + "e.g. rmse_scale, sensitivity_cosine, whole_cosine")
