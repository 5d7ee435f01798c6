"""What a `require:` line may be, and the limits of the expression language (rule conditions included)."""

from __future__ import annotations

import math

import pytest

from qcheck.errors import QcheckError
from qcheck.policy.expr import MAX_DEPTH, MAX_LENGTH, EvalError, ExprError, Expression
from qcheck.policy.spec import REQUIRE_NAMES, Requirement
from qcheck.policy.yaml_spans import MAX_BYTES, load_yaml
from qcheck.rules.requirements import judge

KNOWN = set(REQUIRE_NAMES) | {"acc"}
ENV = {**dict.fromkeys(REQUIRE_NAMES, 0.5), "acc": 0.9}


def req(text: str) -> Expression:
    return Expression(text, KNOWN, requirement=True)


@pytest.mark.parametrize("text, verdict", [
    ("model.cosine >= 0.4", True),
    ("model.cosine >= 0.4 and acc > 0.95", False),
    ("not model.cosine < 0.4 or acc < 0", True),
    ("abs(model.cosine - 0.5) < 1e-9", True),
    ("max(model.cosine, acc) == 0.9", True),
    ("min([model.cosine, acc, 0.1]) == 0.1", True),
    ("model.cosine in [0.5, 1]", True),
    ("model.sqnr ** 1000 < 1", True),  # 0.5 ** 1000: a float, no huge integer
])
def test_comparisons_are_judged(text, verdict):
    assert req(text).evaluate(ENV) is verdict


@pytest.mark.parametrize("text, fragment", [
    ("model.cosine >= 2, model.sqnr >= 1000", "2 expressions separated by commas"),
    ("'false'", "the constant 'false'"),
    ("True", "the constant True"),
    ("acc", "a bare name"),
    ("acc + 1", "binop"),
    ("acc > 0 and acc", "joined by and/or is not a comparison"),
    ("acc >= '0.9'", "compares a number with text"),
    ("'a' < 'b'", "compares a number with text"),
    ("acc in 'abc'", "`in` needs a number on the left and a list of numbers"),
    ("-'a' < 1", "a sign in front of text"),
    ("min(acc) > 0", "min() of one value"),
    ("max([]) > 0", "max() of one value"),
    ("abs(acc, 1) > 0", "abs() takes one argument"),
    ("sqrt([acc]) > 0", "sqrt() of a list"),
    ("acc / 0 > 1", "divides by zero"),
    ("acc % 0 > 1", "divides by zero"),
    ("'a' * 10**10 == 'b'", "repeating text or lists"),
    ("[1] * 10**10 == [1]", "repeating text or lists"),
    ("acc.__class__ > 0", "dunder names"),
    ("acc\x00 > 0", "null bytes"),
])
def test_requirements_that_are_not_comparisons_of_numbers_are_refused(text, fragment):
    with pytest.raises(ExprError, match=None) as info:
        req(text)
    assert fragment in str(info.value)


def test_length_and_depth_are_bounded_for_every_expression():
    with pytest.raises(ExprError, match=f"the limit is {MAX_LENGTH}"):
        Expression(" + ".join(["rmse"] * 400) + " > 1", {"rmse"})
    deep = "abs(" * (MAX_DEPTH + 1) + "rmse" + ")" * (MAX_DEPTH + 1) + " > 0"
    with pytest.raises(ExprError, match=f"deeper than {MAX_DEPTH} levels"):
        Expression(deep, {"rmse"})
    Expression("abs(" * 10 + "rmse" + ")" * 10 + " > 0", {"rmse"})  # ordinary nesting is fine


def test_rule_conditions_refuse_repetition_at_evaluation_too():
    """A rule condition's names may hold text (op_type); `*` on text is refused when it happens."""
    e = Expression("op_type * n == 'x'", {"op_type", "n"})
    with pytest.raises(TypeError, match="arithmetic on text or lists"):
        e.evaluate({"op_type": "Conv", "n": 10**10})
    assert Expression("rmse / scale > 0.7", {"rmse", "scale"}).evaluate({"rmse": 1.0, "scale": 0.0}) is True  # inf


def test_division_by_zero_in_a_requirement_is_exit_2_naming_the_line():
    r = Requirement("acc / (model.sqnr - model.sqnr) > 0", req("acc / (model.sqnr - model.sqnr) > 0"), 12, "p.yaml")
    with pytest.raises(EvalError):
        r.expression.evaluate(ENV)
    with pytest.raises(QcheckError, match=r"p.yaml:12: require: .* cannot be evaluated: division by zero "
                                          r"\(with acc = 0.9, model.sqnr = 0.5\)"):
        judge([r], ENV)


def test_nan_value_fails_the_line_with_a_note():
    r = Requirement("acc > 0.5", req("acc > 0.5"), 3, "p.yaml")
    verdict = judge([r], {**ENV, "acc": math.nan})
    assert verdict["status"] == "fail" and verdict["requirements"][0]["note"] == "a value is NaN"


def test_policy_files_over_the_size_limit_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_BYTES + "\nmodel: m.onnx\n")
    with pytest.raises(QcheckError, match=f"is {big.stat().st_size:,} bytes; the limit is {MAX_BYTES:,}"):
        load_yaml(big, what="policy file")
