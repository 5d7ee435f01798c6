"""A `require:` line that holds (or fails) for every value its names can take: `model.cosine >= -2`,
`dets.f1 >= 0`, `x >= 0.9 or x < 0.9`, `abs(model.sqnr) >= 0`, `model.top1 > 1`.

Such a line gates nothing (or everything) whatever the model does, so a CI job that relies on it is fooled.
Each name has a domain (cosine lies in [-1, 1], a rate in [0, 1], an error in [0, inf), finding counts are
whole numbers >= 0; a python metric's values are any number); the line is evaluated at the points where its
truth can change: the domain's ends, the line's own constants, just either side of each and midway between
them. A line that is true at all of them (or false at all) is refused where it is written. The test is
conservative: a line that holds only almost everywhere (`model.cosine != 0.5`) may pass it, one that can fail
is never refused.
"""

from __future__ import annotations

import ast
import itertools
import math

from qcheck.policy.expr import EvalError
from qcheck.policy.metric_names import MetricName, require_metric
from qcheck.policy.spec import MetricSpec

Domain = tuple[float, float, bool]  # low, high, whole numbers only
ANY: Domain = (-math.inf, math.inf, False)
COUNT: Domain = (0.0, math.inf, True)
MAX_NAMES = 3  # points grow as a product over names; lines with more names are not checked
MAX_POINTS = 200_000  # nor lines whose grid is larger (each point is one evaluation, ~1 us)


def metric_domain(m: MetricName | None) -> Domain:
    if m is None:
        return ANY
    if m.bounded:
        return (-1.0, 1.0, False) if m.name == "cosine" else (0.0, 1.0, False)
    if m.name == "accuracy_drop":
        return (-1.0, 1.0, False)
    if not m.higher_is_better and m.ideal == 0.0 or m.name in ("cer_float", "cer_quant"):
        return (0.0, math.inf, False)  # an error or a distance
    return ANY  # sqnr, psnr


def domain_of(name: str, metrics: dict[str, MetricSpec]) -> Domain:
    """The values a `require:` name can take (`metrics`: the policy's)."""
    return COUNT if name.startswith("findings.") else metric_domain(require_metric(name, metrics))


def constants(expression_text: str) -> list[float]:
    tree = ast.parse(expression_text, mode="eval")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            v = float(node.value)
            out += [v, -v]  # `-0.5` parses as the unary minus of 0.5
    return [v for v in out if math.isfinite(v)]


def points(domain: Domain, marks: list[float]) -> list[float]:
    """Where a line's truth can change for a name of this domain: its ends, the marks and either side of each,
    midway between neighbours, and far out on an open end."""
    low, high, whole = domain
    finite = [v for v in (low, high) if math.isfinite(v)]
    ps = set(finite) | {0.0, 1.0, -1.0}
    for c in marks:
        step = max(abs(c), 1.0) * 1e-6
        ps |= {c, c - step, c + step}
    extent = max([abs(v) for v in ps] + [1.0])
    ps |= {-1e3 * extent, 1e3 * extent}
    ordered = sorted(ps)
    ps |= {(a + b) / 2 for a, b in zip(ordered, ordered[1:])}
    if whole:
        ps = {float(math.floor(v)) for v in ps} | {float(math.ceil(v)) for v in ps}
    return sorted(v for v in ps if low <= v <= high)


def always(expression, metrics: dict[str, MetricSpec]) -> bool | None:
    """True when `expression` (a parsed requirement) holds at every point of its names' domains, False when it
    fails at every one, None when it can go either way (or has too many names to check). `metrics`: the
    policy's."""
    names = sorted(expression.names)
    if not names or len(names) > MAX_NAMES:
        return None
    marks = constants(expression.text)
    grids = [points(domain_of(n, metrics), marks) for n in names]
    if math.prod(len(g) for g in grids) > MAX_POINTS:
        return None
    seen = set()
    for values in itertools.product(*grids):
        try:
            result = expression.evaluate(dict(zip(names, values)))
        except (EvalError, ArithmeticError, ValueError):  # a division by zero at one point says nothing either way
            continue
        seen.add(bool(result))
        if len(seen) == 2:
            return None
    return seen.pop() if len(seen) == 1 else None


def domain_text(name: str, domain: Domain) -> str:
    low, high, whole = domain
    if whole:
        return f"{name} is a count (0, 1, 2, ...)"
    if math.isinf(low) and math.isinf(high):
        return f"{name} can be any number"
    hi = "inf)" if math.isinf(high) else f"{high:g}]"
    return f"{name} lies in [{low:g}, {hi}"
