"""The rule expression language (policy/expr.py) over tensors: user-declared layer metrics.

    p999_err: "percentile(abs(diff), 99.9) / scale"
    used_steps: "count_unique(round(quant / scale))"
    sat_hi: "mean(float > (qmax - zero_point) * scale)"

Same parser, same limits (length, nesting, no attribute access, no dunder
names, calls only to listed functions), checked when the policy loads. What
this dialect changes: names are the per-tensor arrays `float`, `quant`
(dequantized), `diff` (float - quant) and the scalars `scale`, `zero_point`,
`qmin`, `qmax` (for a per-channel tensor, `scale` and `zero_point` are each
element's channel's inside a reduction and the median over channels outside); operators work elementwise (numpy); the functions are the
elementwise ones and the reductions below. Text, lists and `in` are refused
(nothing can be repeated), `**` takes a constant exponent of at most
MAX_EXPONENT, and the whole expression must reduce to one number.

Work is bounded: every operation is elementwise or one listed reduction
(at most a sort) over one sample's tensor, and an expression has at most
MAX_LENGTH characters.

Accumulation over samples (`over:`): `samples` evaluates the expression on
each sample's tensor and takes the mean over samples (as TFLite's debugger
does); `elements` accumulates each reduction over every element of every
sample, then evaluates the rest once, so a reduction there must be one that
can be accumulated (not median or percentile), and reductions do not nest.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from qcheck.policy.expr import ExprError, Expression

ARRAYS = ("float", "quant", "diff")
SCALARS = ("scale", "zero_point", "qmin", "qmax")
NAMES = ARRAYS + SCALARS
MAX_EXPONENT = 64
REDUCED = "__reduced__"  # env key for accumulated reductions (users cannot write dunder names)
PER_CHANNEL = ("scale", "zero_point")  # one per channel for per-channel tensors: see summary_key


def summary_key(name: str) -> str:
    """Outside a reduction, `scale` and `zero_point` are one number even for a per-channel tensor (the median
    over channels, as in the `scale` column); inside one, each element's own channel's. The env holds the
    summary under this key, which no expression can write (attribute access is refused)."""
    return f"{name}.summary"

ELEMENTWISE: dict[str, tuple[Callable[..., Any], int]] = {
    "abs": (np.abs, 1), "sqrt": (np.sqrt, 1), "log10": (np.log10, 1), "log": (np.log, 1), "exp": (np.exp, 1),
    "round": (np.round, 1), "floor": (np.floor, 1), "ceil": (np.ceil, 1), "sign": (np.sign, 1),
    "square": (np.square, 1), "minimum": (np.minimum, 2), "maximum": (np.maximum, 2),
}


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _percentile(x: Any, q: float) -> float:
    return float(np.percentile(_f64(x), q))


REDUCTIONS: dict[str, Callable[..., float]] = {
    "mean": lambda x: float(np.mean(_f64(x))),
    "std": lambda x: float(np.std(_f64(x))),
    "var": lambda x: float(np.var(_f64(x))),
    "min": lambda x: float(np.min(x)),
    "max": lambda x: float(np.max(x)),
    "sum": lambda x: float(np.sum(_f64(x))),
    "median": lambda x: float(np.median(_f64(x))),
    "percentile": _percentile,
    "count_unique": lambda x: float(np.unique(x).size),
    "count": lambda x: float(np.count_nonzero(x)),
    "size": lambda x: float(np.size(x)),
}
NOT_ACCUMULABLE = ("median", "percentile")  # need every element at once: `over: samples` only
FUNCTION_NAMES = tuple(ELEMENTWISE) + tuple(REDUCTIONS)

_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
           ast.Mod: np.fmod, ast.Pow: np.power}
_CMPOPS = {ast.Lt: np.less, ast.LtE: np.less_equal, ast.Gt: np.greater, ast.GtE: np.greater_equal,
           ast.Eq: np.equal, ast.NotEq: np.not_equal}
ARRAY, SCALAR = "an array", "a number"


class ArrayExpression(Expression):
    """A layer metric's expression: parsed and checked like a rule condition, evaluated elementwise.

    `over` is "samples" or "elements" (see the module docstring); `reductions` lists the reduction calls in
    the order `accumulate` feeds them."""

    def __init__(self, text: str, over: str = "samples"):
        self.over = over
        self.reductions: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = []  # (function, its array arg)
        self._inside_reduction = False
        super().__init__(text, known_names=NAMES)
        if _kind(ast.parse(self.text, mode="eval").body) != SCALAR:
            raise ExprError(f"'{self.text}' gives one value per element, not one number per tensor: wrap it in a "
                            f"reduction, e.g. mean({self.text})")

    def _compile(self, node: ast.AST) -> Callable[[Mapping[str, Any]], Any]:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ExprError(f"'{self.text}': only numbers are allowed as constants in a layer metric "
                                f"(got {node.value!r})")
            return super()._compile(node)
        if isinstance(node, (ast.List, ast.Tuple)):
            raise ExprError(f"'{self.text}': lists are not allowed in a layer metric")
        if isinstance(node, ast.Attribute):
            raise ExprError(f"'{self.text}': attribute access is not allowed ('{ast.unparse(node)}')")
        if isinstance(node, ast.Name) and node.id in PER_CHANNEL and not self._inside_reduction:
            name = node.id
            super()._compile(node)  # checks and records the name
            return lambda env: env[summary_key(name)]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            if isinstance(node.op, ast.Pow):
                _check_exponent(node.right, self.text)
            op, left, right = _BINOPS[type(node.op)], self._compile(node.left), self._compile(node.right)
            return lambda env: op(left(env), right(env))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            operand = self._compile(node.operand)
            return lambda env: np.logical_not(operand(env))
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            join = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

            def boolop(env):
                out = parts[0](env)
                for p in parts[1:]:
                    out = join(out, p(env))
                return out
            return boolop
        return super()._compile(node)

    def _limit(self, node: ast.AST) -> None:
        return None  # a layer metric is a number, never a threshold

    comparisons = _CMPOPS

    @staticmethod
    def _chain(left: Callable, steps: list) -> Callable[[Mapping[str, Any]], Any]:
        def compare(env):  # a < b < c: elementwise (a < b) and (b < c)
            a, out = left(env), None
            for op, right in steps:
                b = right(env)
                step = op(a, b)
                out = step if out is None else np.logical_and(out, step)
                a = b
            return out
        return compare

    def _compile_call(self, node: ast.Call) -> Callable[[Mapping[str, Any]], Any]:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in ELEMENTWISE and name not in REDUCTIONS:
            shown = ast.unparse(node.func)
            raise ExprError(f"'{self.text}': calling {shown}() is not allowed (allowed: {', '.join(FUNCTION_NAMES)})")
        if node.keywords:
            raise ExprError(f"'{self.text}': keyword arguments are not allowed")
        want = ELEMENTWISE[name][1] if name in ELEMENTWISE else 2 if name == "percentile" else 1
        if len(node.args) != want:
            raise ExprError(f"'{self.text}': {name}() takes {want} argument{'s' if want > 1 else ''}")
        if name in ELEMENTWISE:
            fn, args = ELEMENTWISE[name][0], [self._compile(a) for a in node.args]
            return lambda env: fn(*(a(env) for a in args))
        return self._compile_reduction(name, node)

    def _compile_reduction(self, name: str, node: ast.Call) -> Callable[[Mapping[str, Any]], Any]:
        if name == "percentile":
            q = node.args[1]
            if not (isinstance(q, ast.Constant) and isinstance(q.value, (int, float)) and not isinstance(q.value, bool)
                    and 0 <= q.value <= 100):
                raise ExprError(f"'{self.text}': percentile(x, q) needs q as a number from 0 to 100")
        if self.over == "elements":
            if name in NOT_ACCUMULABLE:
                raise ExprError(f"'{self.text}': {name}() cannot be accumulated over every element of every sample "
                                "without keeping all of them; use `over: samples` (the mean over samples)")
            if self._inside_reduction:
                raise ExprError(f"'{self.text}': with `over: elements`, a reduction cannot hold another one")
        self._inside_reduction, outer = True, self._inside_reduction
        arg = self._compile(node.args[0])
        self._inside_reduction = outer
        fn = REDUCTIONS[name]
        extra = (float(node.args[1].value),) if name == "percentile" else ()
        index = len(self.reductions)
        self.reductions.append((name, arg))

        def reduce(env):
            reduced = env.get(REDUCED)
            if reduced is not None:
                return reduced[index]
            return fn(arg(env), *extra)
        return reduce


def _check_exponent(node: ast.AST, text: str) -> None:
    value = node.operand.value if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
                                   and isinstance(node.operand, ast.Constant)) else getattr(node, "value", None)
    if not isinstance(node, (ast.Constant, ast.UnaryOp)) or not isinstance(value, (int, float)) or \
            isinstance(value, bool) or abs(value) > MAX_EXPONENT:
        raise ExprError(f"'{text}': ** takes a constant exponent between -{MAX_EXPONENT} and {MAX_EXPONENT}")


def _kind(node: ast.AST) -> str:
    """ARRAY when the node gives one value per element, SCALAR when one number (scale counts as one)."""
    if isinstance(node, ast.Name):
        return ARRAY if node.id in ARRAYS else SCALAR
    if isinstance(node, ast.Call):
        if node.func.id in REDUCTIONS:
            return SCALAR
        return ARRAY if any(_kind(a) == ARRAY for a in node.args) else SCALAR
    children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
    return ARRAY if any(_kind(c) == ARRAY for c in children) else SCALAR


class Accumulator:
    """One reduction of an `over: elements` metric, accumulated over samples."""

    def __init__(self, name: str):
        self.name = name
        self.n = 0
        self.s1 = self.s2 = 0.0
        self.shift: float | None = None
        self.low, self.high = math.inf, -math.inf
        self.unique: np.ndarray | None = None

    def update(self, x: Any) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        self.n += x.size
        name = self.name
        if name in ("mean", "sum", "std", "var"):
            v = _f64(x).ravel()
            if self.shift is None:  # sums around the first sample's mean: no catastrophic cancellation in var
                self.shift = float(v.mean()) if name in ("std", "var") else 0.0
            d = v - self.shift
            self.s1 += float(d.sum())
            self.s2 += float(d @ d)
        elif name == "count":
            self.s1 += float(np.count_nonzero(x))
        elif name in ("min", "max"):
            self.low, self.high = min(self.low, float(np.min(x))), max(self.high, float(np.max(x)))
        elif name == "count_unique":
            u = np.unique(x)
            self.unique = u if self.unique is None else np.union1d(self.unique, u)

    def value(self) -> float:
        n = self.n
        if self.name == "size":
            return float(n)
        if n == 0:
            return math.nan
        if self.name == "sum":
            return self.s1
        if self.name == "mean":
            return self.s1 / n
        if self.name in ("std", "var"):
            var = max(self.s2 / n - (self.s1 / n) ** 2, 0.0)
            return var if self.name == "var" else math.sqrt(var)
        if self.name == "count":
            return self.s1
        if self.name == "count_unique":
            return float(self.unique.size)
        return self.low if self.name == "min" else self.high


def as_value(result: Any) -> float:
    """The number an evaluated layer metric gives; ValueError when it is not one number."""
    arr = np.asarray(result)
    if arr.size != 1:
        raise ValueError(f"it gave {arr.size} values (shape {list(arr.shape)}), not one number")
    return float(arr.reshape(()))

