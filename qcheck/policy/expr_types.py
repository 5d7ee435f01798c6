"""What a `require:` line must be: a comparison of numbers, or and/or/not of comparisons.

Every name a requirement reads (`model.cosine`, `findings.error`, a metric) is
a number, so the type of every part of the line is known before anything is
evaluated. A line that is not a comparison (a tuple from a stray comma, a
bare string, a bare name) is always true or meaningless; a comparison of a
number with text is always false, and so is one of constants only (`1 < 2`) or
of a value with itself; all are refused when the policy loads.
"""

from __future__ import annotations

import ast

NUM, BOOL, TEXT, LIST = "a number", "true/false", "text", "a list"


class RequirementTypeError(ValueError):
    """Why a parsed `require:` line is not a comparison of numbers (expr.Expression reports it as an ExprError)."""


def check_requirement(body: ast.expr, text: str) -> None:
    if not _is_predicate(body):
        raise RequirementTypeError(f"'{text}' is not a comparison: a requirement must compare numbers, e.g. "
                                   f"`model.cosine >= 0.99`, or join comparisons with and/or/not ({_what(body)})")
    _type(body, text)


def _is_predicate(node: ast.expr) -> bool:
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.BoolOp):
        return all(_is_predicate(v) for v in node.values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _is_predicate(node.operand)
    return False


def _what(node: ast.expr) -> str:
    if isinstance(node, ast.Tuple):
        return f"it is {len(node.elts)} expressions separated by commas; write one per line"
    if isinstance(node, ast.Constant):
        return f"it is the constant {node.value!r}"
    if isinstance(node, (ast.Name, ast.Attribute)):
        return "it is a bare name"
    if isinstance(node, ast.BoolOp):
        return "a part joined by and/or is not a comparison"
    return f"it is {type(node).__name__.lower()}"


def _reads_a_value(node: ast.expr) -> bool:
    """Whether an expression reads a name (a metric, a count), not only constants and function names."""
    functions = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    return any(isinstance(n, (ast.Name, ast.Attribute)) and id(n) not in functions
               and getattr(n, "id", None) not in ("True", "False") for n in ast.walk(node))


def _type(node: ast.expr, text: str) -> str:
    def fail(message: str) -> RequirementTypeError:
        return RequirementTypeError(f"'{text}': {message}")

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return BOOL
        return TEXT if isinstance(node.value, str) else NUM
    if isinstance(node, (ast.Name, ast.Attribute)):
        return BOOL if isinstance(node, ast.Name) and node.id in ("True", "False") else NUM
    if isinstance(node, (ast.List, ast.Tuple)):
        for e in node.elts:
            if _type(e, text) != NUM:
                raise fail("a list may hold only numbers")
        return LIST
    if isinstance(node, ast.BinOp):
        left, right = _type(node.left, text), _type(node.right, text)
        if left != NUM or right != NUM:
            raise fail(f"arithmetic on {left if left != NUM else right}: every name in a requirement is a number")
        if isinstance(node.op, (ast.Div, ast.Mod)) and isinstance(node.right, ast.Constant) and node.right.value == 0:
            raise fail("divides by zero")
        return NUM
    if isinstance(node, ast.UnaryOp):
        inner = _type(node.operand, text)
        if isinstance(node.op, ast.Not):
            return BOOL
        if inner != NUM:
            raise fail(f"a sign in front of {inner}")
        return NUM
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _type(v, text)
        return BOOL
    if isinstance(node, ast.Compare):
        left = _type(node.left, text)
        for op, comparator in zip(node.ops, node.comparators):
            right = _type(comparator, text)
            if isinstance(op, (ast.In, ast.NotIn)):
                if left != NUM or right != LIST:
                    raise fail("`in` needs a number on the left and a list of numbers on the right")
            elif left != NUM or right != NUM:
                other = left if left != NUM else right
                hint = " (remove the quotes)" if other == TEXT else ""
                raise fail(f"compares a number with {other}{hint}: every name in a requirement is a number")
            left = right
        sides = [node.left, *node.comparators]
        if not any(_reads_a_value(side) for side in sides):
            raise fail("compares constants only, so it holds (or fails) whatever the model does: compare a "
                       "measured value, e.g. `model.cosine >= 0.99`")
        for a, b in zip(sides, sides[1:]):
            if ast.dump(a) == ast.dump(b):
                raise fail(f"compares {ast.unparse(a)} with itself, so it holds (or fails) whatever the model does")
        return BOOL
    if isinstance(node, ast.Call):
        name = getattr(node.func, "id", "")
        for a in node.args:
            t = _type(a, text)
            if t != NUM and (t != LIST or name not in ("min", "max")):
                raise fail(f"{name}() of {t}")
        return NUM
    return NUM  # everything else is refused by the Expression compiler, with its own message
