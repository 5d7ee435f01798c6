"""A small, safe expression language for rule conditions and `require:` lines.

    rmse / scale > 0.7
    op_type == "Concat" and input_range_ratio > 50
    model.cosine >= 0.999

Expressions are parsed with Python's `ast` module and then checked against a
whitelist: numbers, strings, booleans, names (dotted names such as
`model.cosine` are one name, not attribute access), arithmetic, comparisons,
`and`/`or`/`not`, `in`, list literals, and the functions in `FUNCTIONS`.
Everything else (attribute access on values, subscripts, other calls,
comprehensions, lambdas, dunder names) is refused when the expression is
parsed, before anything is evaluated. Evaluation walks the checked tree; it
never calls `eval`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qcheck.policy.expr_types import RequirementTypeError, check_requirement


class ExprError(ValueError):
    """An expression is malformed or uses something that is not allowed."""


class EvalError(ExprError):
    """A checked expression failed on these values (a division by zero in a `require:` line)."""


MAX_LENGTH = 1000  # characters in one expression
MAX_DEPTH = 40  # nesting of operators, calls and brackets


class NotApplicable(Exception):
    """A name the expression needs has no value here (e.g. a weight has no calibrated range)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _safe_div(a: float, b: float) -> float:
    if b == 0:
        if a == 0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * (1 if math.copysign(1, b) > 0 else -1)
    return a / b


def _safe_mod(a: float, b: float) -> float:
    return math.nan if b == 0 else math.fmod(a, b) if isinstance(a, float) or isinstance(b, float) else a % b


def _strict_div(a: float, b: float) -> float:
    if b == 0:
        raise EvalError("division by zero")
    return a / b


def _strict_mod(a: float, b: float) -> float:
    if b == 0:
        raise EvalError("modulo by zero")
    return _safe_mod(a, b)


def _no_repeat(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Arithmetic on numbers only: `'a' * 10**10` would build a 10 GB string."""
    def apply(a, b):
        if isinstance(a, (str, list)) or isinstance(b, (str, list)):
            raise TypeError("arithmetic on text or lists is not allowed")
        return op(a, b)
    return apply


def _safe_pow(a: float, b: float) -> float:
    # float power cannot run away the way int ** int can (10 ** 10 ** 10)
    try:
        return float(a) ** float(b)
    except OverflowError:
        return math.inf
    except ZeroDivisionError:
        return math.inf


def _log10(x: float) -> float:
    if x < 0 or x != x:
        return math.nan
    return -math.inf if x == 0 else math.log10(x)


def _sqrt(x: float) -> float:
    return math.nan if x < 0 or x != x else math.sqrt(x)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "min": min,
    "max": max,
    "log10": _log10,
    "sqrt": _sqrt,
}

_BINOPS = {
    ast.Add: _no_repeat(operator.add),
    ast.Sub: _no_repeat(operator.sub),
    ast.Mult: _no_repeat(operator.mul),
    ast.Div: _no_repeat(_safe_div),
    ast.Pow: _no_repeat(_safe_pow),
    ast.Mod: _no_repeat(_safe_mod),
}
# `require:` lines: a division by zero is an error naming the line, not an infinity that passes or fails
_STRICT_BINOPS = {**_BINOPS, ast.Div: _no_repeat(_strict_div), ast.Mod: _no_repeat(_strict_mod)}
_ARITY = {"abs": (1, 1), "log10": (1, 1), "sqrt": (1, 1), "min": (1, None), "max": (1, None)}
_CMPOPS = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}

_DESCRIBE = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Call: "calls",
    ast.NamedExpr: "assignments",
    ast.Starred: "starred arguments",
    ast.Dict: "dict literals",
    ast.Set: "set literals",
    ast.IfExp: "if-expressions",
    ast.JoinedStr: "f-strings",
    ast.Await: "await",
}


def _dotted(node: ast.AST) -> str | None:
    """`model.cosine` -> "model.cosine"; None when the node is not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


# A threshold written either way round: `0.999 <= model.cosine` is `model.cosine >= 0.999`.
_LIMIT_OPS = {ast.GtE: ">=", ast.Gt: ">", ast.LtE: "<=", ast.Lt: "<"}
_MIRROR = {">=": "<=", ">": "<", "<=": ">=", "<": ">"}
_LIMIT_COMPARE = {op: _CMPOPS[node] for node, op in _LIMIT_OPS.items()}


@dataclass(frozen=True)
class Limit:
    """An expression that is one comparison of something with a number: `side op value`."""

    side: Callable[[Mapping[str, Any]], Any]  # evaluates the other side (raises NotApplicable like `evaluate`)
    op: str  # ">=", ">", "<=" or "<"
    value: float

    @property
    def at_least(self) -> bool:
        """Whether the line asks for the side to reach the value from below (`>=`, `>`): higher is better."""
        return self.op in (">=", ">")

    def met_by(self, side: float) -> bool:
        return _LIMIT_COMPARE[self.op](side, self.value)


def _parse(text: str) -> ast.expr:
    if len(text) > MAX_LENGTH:
        raise ExprError(f"the expression is {len(text)} characters long; the limit is {MAX_LENGTH}: split it into "
                        "several lines")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        column = f" (column {exc.offset})" if exc.offset else ""
        raise ExprError(f"cannot parse '{text}': {exc.msg}{column}") from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; nesting beyond the parser's stack
        raise ExprError(f"cannot parse '{text[:80]}': {type(exc).__name__}") from None
    stack = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ExprError(f"'{text[:80]}' nests deeper than {MAX_DEPTH} levels; write it more simply")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree.body


class Expression:
    """A parsed, checked expression. `names` lists the variables it reads; `limit` is set when the whole
    expression compares one side with a number (`model.cosine >= 0.999`), as most `require:` lines do.

    `requirement=True` checks a `require:` line: it must be a comparison, or and/or/not of comparisons, over
    numbers (every name a requirement reads is a number), and a division by zero in it is an `EvalError`.
    """

    def __init__(self, text: str, known_names: Iterable[str] | None = None, requirement: bool = False):
        if not isinstance(text, str) or not text.strip():
            raise ExprError("empty expression")
        self.text = text.strip()
        body = _parse(self.text)
        self.names: set[str] = set()
        self._known = set(known_names) if known_names is not None else None
        self._binops = _STRICT_BINOPS if requirement else _BINOPS
        self._fn = self._compile(body)
        self.limit: Limit | None = self._limit(body)
        if requirement:
            try:
                check_requirement(body, self.text)
            except RequirementTypeError as exc:
                raise ExprError(str(exc)) from None

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """Value of the expression; raises NotApplicable when a name has no value."""
        try:
            return self._fn(env)
        except RecursionError:
            raise EvalError("the expression is nested too deeply to evaluate") from None

    # Each _compile_* returns a closure env -> value, so evaluation is a tree walk
    # over already-checked nodes.
    def _compile(self, node: ast.AST) -> Callable[[Mapping[str, Any]], Any]:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (int, float, str, bool)) or node.value is None:
                raise ExprError(f"'{self.text}': constant {node.value!r} is not allowed")
            value = node.value
            return lambda env: value
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = _dotted(node)
            if name is None:
                raise ExprError(f"'{self.text}': attribute access is not allowed")
            return self._compile_name(name)
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda env: all(p(env) for p in parts)
            return lambda env: any(p(env) for p in parts)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            op, operand = _UNARY[type(node.op)], self._compile(node.operand)
            return lambda env: op(operand(env))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            if isinstance(node.op, ast.Mult) and any(_is_sequence_literal(n) for n in (node.left, node.right)):
                raise ExprError(f"'{self.text}': repeating text or lists with * is not allowed")
            op, left, right = self._binops[type(node.op)], self._compile(node.left), self._compile(node.right)
            return lambda env: op(left(env), right(env))
        if isinstance(node, ast.Compare):
            return self._compile_compare(node)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self._compile(e) for e in node.elts]
            return lambda env: [i(env) for i in items]
        if isinstance(node, ast.Call):
            return self._compile_call(node)
        what = _DESCRIBE.get(type(node), type(node).__name__)
        raise ExprError(f"'{self.text}': {what} are not allowed in conditions")

    def _limit(self, node: ast.AST) -> Limit | None:
        if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _LIMIT_OPS):
            return None
        op, side, number = _LIMIT_OPS[type(node.ops[0])], node.left, node.comparators[0]
        if isinstance(side, ast.Constant):
            side, number, op = number, side, _MIRROR[op]
        if not isinstance(number, ast.Constant) or not isinstance(number.value, (int, float)):
            return None
        return Limit(self._compile(side), op, float(number.value))

    def _compile_name(self, name: str) -> Callable[[Mapping[str, Any]], Any]:
        if "__" in name:
            raise ExprError(f"'{self.text}': dunder names are not allowed ('{name}')")
        if name in ("True", "False"):
            value = name == "True"
            return lambda env: value
        if self._known is not None and name not in self._known:
            raise ExprError(f"'{self.text}': unknown name '{name}'", name)
        self.names.add(name)

        def lookup(env: Mapping[str, Any]) -> Any:
            value = env.get(name)
            if value is None:
                raise NotApplicable(name)
            return value

        return lookup

    comparisons = _CMPOPS  # a dialect (policy.array_expr) brings its own, and its own `_chain`

    def _compile_compare(self, node: ast.Compare) -> Callable[[Mapping[str, Any]], Any]:
        left = self._compile(node.left)
        steps = []
        for op, comparator in zip(node.ops, node.comparators):
            if type(op) not in self.comparisons:
                raise ExprError(f"'{self.text}': operator {type(op).__name__} is not allowed")
            steps.append((self.comparisons[type(op)], self._compile(comparator)))
        return self._chain(left, steps)

    @staticmethod
    def _chain(left: Callable, steps: list) -> Callable[[Mapping[str, Any]], Any]:
        """`a < b <= c`: every comparison holds, each side evaluated once."""
        def compare(env: Mapping[str, Any]) -> bool:
            a = left(env)
            for op, right in steps:
                b = right(env)
                if not op(a, b):
                    return False
                a = b
            return True

        return compare

    def _compile_call(self, node: ast.Call) -> Callable[[Mapping[str, Any]], Any]:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = _dotted(node.func) or ast.unparse(node.func)
            allowed = ", ".join(FUNCTIONS)
            raise ExprError(f"'{self.text}': calling {name}() is not allowed (allowed: {allowed})")
        if node.keywords:
            raise ExprError(f"'{self.text}': keyword arguments are not allowed")
        fn = FUNCTIONS[node.func.id]
        args = [self._compile(a) for a in node.args]
        low, high = _ARITY[node.func.id]
        if not args:
            raise ExprError(f"'{self.text}': {node.func.id}() needs an argument")
        if high is not None and len(args) > high:
            raise ExprError(f"'{self.text}': {node.func.id}() takes one argument")
        if node.func.id in ("min", "max") and len(args) == 1 and (not isinstance(node.args[0], (ast.List, ast.Tuple))
                                                                   or not node.args[0].elts):
            raise ExprError(f"'{self.text}': {node.func.id}() of one value: give two or more, e.g. "
                            f"{node.func.id}(a, b)")
        return lambda env: fn(*(a(env) for a in args))


def _is_sequence_literal(node: ast.AST) -> bool:
    return isinstance(node, (ast.List, ast.Tuple)) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def unknown_name_of(exc: ExprError) -> str | None:
    """The offending name when an ExprError is about an unknown name."""
    return exc.args[1] if len(exc.args) > 1 else None
