"""The safe expression evaluator: conditions evaluate, anything that could run code is refused at parse time."""

import math

import pytest

from qcheck.policy.expr import ExprError, Expression, NotApplicable


@pytest.mark.parametrize("text, env, expected", [
    ("rmse / scale > 0.7", {"rmse": 2.0, "scale": 2.0}, True),
    ("rmse / scale > 0.7", {"rmse": 1.0, "scale": 2.0}, False),
    ('op_type == "Concat" and ratio > 50', {"op_type": "Concat", "ratio": 60}, True),
    ('op_type in ["Conv", "Gemm"]', {"op_type": "MatMul"}, False),
    ("not (a < b)", {"a": 1, "b": 2}, False),
    ("max(a, b) - min(a, b) == 3", {"a": 1, "b": 4}, True),
    ("log10(x) == 2", {"x": 100.0}, True),
    ("abs(x) >= 1 or x > 5", {"x": -1.5}, True),
    ("model.cosine >= 0.999", {"model.cosine": 0.9995}, True),
    ("0.1 < x <= 0.2", {"x": 0.2}, True),
])
def test_evaluates(text, env, expected):
    assert Expression(text).evaluate(env) is expected


def test_division_by_zero_is_infinite_not_an_exception():
    assert Expression("a / b").evaluate({"a": 1.0, "b": 0.0}) == math.inf
    assert math.isnan(Expression("a / b").evaluate({"a": 0.0, "b": 0.0}))


def test_huge_powers_do_not_hang():
    assert Expression("10 ** 10 ** 10").evaluate({}) == math.inf


def test_missing_value_is_not_applicable():
    with pytest.raises(NotApplicable) as info:
        Expression("calib_max > 1").evaluate({"calib_max": None})
    assert info.value.name == "calib_max"


@pytest.mark.parametrize("text, why", [
    ("x.__class__", "dunder"),
    ("().__class__.__bases__", "attribute access"),
    ('__import__("os").system("true")', "calling __import__"),
    ('open("/etc/passwd")', "calling open"),
    ("eval('1')", "calling eval"),
    ("[a for a in b]", "comprehensions"),
    ("lambda: 1", "lambdas"),
    ("x[0]", "subscripts"),
    ("a.b()", "calling a.b"),
    ("(y := 1)", "assignments"),
    ("{1: 2}", "dict literals"),
    ("f'{x}'", "f-strings"),
    ("abs(x=1)", "keyword"),
    ("a if b else c", "if-expressions"),
])
def test_refuses_unsafe_constructs(text, why):
    with pytest.raises(ExprError) as info:
        Expression(text)
    assert why in str(info.value)


def test_unknown_names_are_refused_when_names_are_known():
    with pytest.raises(ExprError) as info:
        Expression("rmse / scael > 0.7", known_names={"rmse", "scale"})
    assert "scael" in str(info.value)


def test_syntax_errors_are_explained():
    with pytest.raises(ExprError, match="cannot parse"):
        Expression("rmse / > 0.7")


def test_limit_is_the_comparison_with_a_number_either_way_round():
    """`require:` lines are parsed once; the search reads their threshold from `Expression.limit`."""
    for text in ("model.cosine >= 0.999", "0.999 <= model.cosine"):
        limit = Expression(text).limit
        assert (limit.op, limit.value, limit.side({"model.cosine": 0.5})) == (">=", 0.999, 0.5)
    limit = Expression("abs(drift) < 2").limit
    assert (limit.op, limit.value, limit.side({"drift": -3.0})) == ("<", 2.0, 3.0)
    for text in ("a <= 1 and b <= 2", "a == 1", "a <= b", "1 < a < 2", "op_type == 'Conv'"):
        assert Expression(text).limit is None, text
