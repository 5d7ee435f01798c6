"""Requirements that hold (or fail) for every value their names can take are found; lines that can go either
way, however close their thresholds, are not."""

import math

import pytest

from qcheck.policy.expr import Expression
from qcheck.policy.spec import MetricSpec
from qcheck.policy.vacuous import always, points

METRICS = {"dets": MetricSpec("dets", "output", task="detection"),
           "err": MetricSpec("err", "y", metric="max_abs"),
           "score": MetricSpec("score", None, task="python", options={"values": ["value"]})}
KNOWN = {"model.cosine", "model.top1", "model.sqnr", "model.max_abs", "findings.error", "findings.warning", "dets",
         "dets.f1", "dets.recall", "err", "score.value"}


def verdict(text):
    return always(Expression(text, known_names=KNOWN, requirement=True), METRICS)


@pytest.mark.parametrize("text", [
    "model.cosine >= -1",            # the lowest cosine there is
    "model.cosine <= 1.5",
    "dets.f1 >= 0", "dets >= 0",     # F1 (and the metric's primary value, F1) is a rate
    "err >= 0",                      # an absolute error
    "abs(model.sqnr) >= 0",          # sqnr may be any number; its size is not
    "model.cosine >= 0.5 or model.cosine < 0.5",
    "not (model.top1 > 1)",
    "findings.warning > -1",         # a count
    "findings.error < 0.5 or findings.error >= 1",  # no count lies between 0.5 and 1
])
def test_lines_that_cannot_fail(text):
    assert verdict(text) is True


@pytest.mark.parametrize("text", ["model.top1 > 1", "dets.recall < 0", "model.cosine < -1 and model.top1 >= 0",
                                  "findings.error == 0.5"])
def test_lines_that_cannot_hold(text):
    assert verdict(text) is False


@pytest.mark.parametrize("text", [
    "model.cosine >= 0.99",
    "model.cosine >= 0.99 or model.cosine < 0.989",  # fails in (0.989, 0.99) only
    "model.cosine >= 0.999999 or model.cosine <= 0.9999985",
    "findings.error <= 0",
    "findings.error < 1",
    "model.sqnr > -1e308",           # -inf is a possible sqnr (a zero output)
    "score.value >= -1e12",           # a python metric's values are any number
    "1 - model.cosine <= 0.01",
    "model.sqnr >= 20 or dets.f1 >= 0.9",
    "err / model.max_abs <= 2",       # a division by zero at some points proves nothing
])
def test_lines_that_can_go_either_way(text):
    assert verdict(text) is None


def test_points_cover_both_sides_of_every_constant_and_stay_in_the_domain():
    ps = points((0.0, 1.0, False), [0.3, -0.3])
    assert min(ps) == 0.0 and max(ps) == 1.0
    below, above = max(p for p in ps if p < 0.3), min(p for p in ps if p > 0.3)
    assert 0.3 - below <= 1e-6 and above - 0.3 <= 1e-6
    assert all(p == math.floor(p) for p in points((0.0, math.inf, True), [0.5, 2.5]))
