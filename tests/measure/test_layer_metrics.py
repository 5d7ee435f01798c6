"""Layer metrics the policy declares (`layer_metrics:`): their values on real ORT runs against closed forms
and independent numpy, a rule reading one, and what is refused when the policy loads.

The model is `passthrough_model`: x -> MatMul(identity) -> y. Its input x is quantized once to the calibrated
uint8 grid, so on data spread over that grid the error of x is rounding noise, uniform on [-scale/2, scale/2]:
mean |diff| / scale = 1/4 and the 99.9th percentile of |diff| / scale is just below 1/2.
"""

import csv
import json
import math
import textwrap

import numpy as np
import pytest
from helpers import passthrough_model, write_arrays, write_policy

from qcheck.cli.main import main
from qcheck.errors import PolicyError
from qcheck.policy.array_expr import Accumulator, ArrayExpression
from qcheck.policy.expr import ExprError
from qcheck.policy.loader import load_policy

WIDTH = 4096


def _run(tmp, doc: dict, calib: list, evaluation: list | None = None) -> dict:
    passthrough_model(tmp / "model.onnx", [1, WIDTH])
    write_arrays(tmp / "calib", calib)
    data = {"calibration": "calib"}
    if evaluation is not None:
        write_arrays(tmp / "eval", evaluation)
        data["evaluation"] = "eval"
    doc = {"model": "model.onnx", "data": data, "analyses": False, "require": ["model.cosine >= 0.5"],
           "report": {"out": "out", "formats": ["html"]}, **doc}
    code = main(["run", str(write_policy(tmp / "qcheck.yaml", doc)), "--quiet"])
    assert code in (0, 1)
    return json.loads((tmp / "out" / "results.json").read_text())


def _row(results: dict, name: str) -> dict:
    return next(t for t in results["tensors"] if t["name"] == name)


@pytest.fixture(scope="module")
def rounding(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rounding")
    rng = np.random.default_rng(0)
    samples = [rng.uniform(-3.0, 5.0, (1, WIDTH)) for _ in range(4)]
    (tmp / "mymetric.py").write_text("import numpy as np\n\n"
                                     "def ms_steps(diff, scale):\n"
                                     "    return float(np.mean(np.square(diff.astype(np.float64) / scale)))\n")
    results = _run(tmp, {"layer_metrics": {
        "mae_steps": "mean(abs(diff)) / scale",
        "mae_elements": {"expr": "mean(abs(diff)) / scale", "over": "elements", "chart": True},
        "p999_err": "percentile(abs(diff), 99.9) / scale",
        "used_steps": {"expr": "count_unique(round(quant / scale))", "over": "elements"},
        "ms_py": {"function": "mymetric:ms_steps"},
    }}, samples)
    return tmp, results, samples


def test_rounding_noise_matches_its_closed_form_and_numpy(rounding):
    tmp, results, samples = rounding
    x = _row(results, "x")
    # closed form: uniform rounding noise on [-s/2, s/2] has mean |e| = s/4 (4 x 4096 values: +-0.01)
    assert x["mae_steps"] == pytest.approx(0.25, abs=0.01)
    assert 0.49 < x["p999_err"] <= 0.5
    # independently: quantize with the scale and zero point results.json reports, as ONNX's QuantizeLinear does
    s, z = x["scale"], x["zero_point"]
    per_sample = []
    for a in samples:
        q = (np.clip(np.rint(a.astype(np.float32) / np.float32(s)) + z, 0, 255) - z) * np.float32(s)
        per_sample.append(np.mean(np.abs(a.astype(np.float32) - q)) / s)
    assert x["mae_steps"] == pytest.approx(np.mean(per_sample), rel=1e-4)
    # every sample has the same size, so the mean over samples equals the mean over all elements
    assert x["mae_elements"] == pytest.approx(x["mae_steps"], rel=1e-9)
    assert x["used_steps"] == 256  # data spread over the whole calibrated range use every uint8 step
    # the python form: mean squared error in steps, equal-sized samples, so its mean over samples is rmse_scale^2
    assert x["ms_py"] == pytest.approx(x["rmse_scale"] ** 2, rel=1e-6)


def test_layer_metrics_are_columns_and_described(rounding):
    tmp, results, _ = rounding
    with open(tmp / "out" / "layer_stats.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["x"]["mae_steps"]) == pytest.approx(_row(results, "x")["mae_steps"])
    described = {m["name"]: m for m in results["layer_metrics"]}
    assert described["mae_elements"]["over"] == "elements" and described["mae_elements"]["chart"] is True
    assert described["ms_py"]["function"] == "mymetric:ms_steps"


def test_rule_on_a_layer_metric_fires_where_values_overshoot_the_grid(tmp_path):
    """Calibrated on [-1, 1], evaluated on [-2, 2]: half of x lies beyond its grid and saturates (errors of
    more than one step), while y's per-layer twin is fed the saturated x and rounds only: the rule fires on x
    alone."""
    rng = np.random.default_rng(1)
    calib = [rng.uniform(-1, 1, (1, WIDTH)) for _ in range(4)]
    evaluation = [rng.uniform(-2, 2, (1, WIDTH)) for _ in range(2)]
    results = _run(tmp_path, {
        "layer_metrics": {"beyond_step": "mean(abs(diff) > scale)"},
        "rules": {"inline": [{
            "code": "QC901", "name": "user.saturates", "scope": "tensor", "severity": "error",
            "when": "beyond_step > limit", "params": {"limit": 0.05},
            "message": "{beyond_step:.2f} of the values are more than a step off", "summary": "saturation",
            "why": "values beyond the grid saturate", "fix": "widen the range"}]},
    }, calib, evaluation)
    x, y = _row(results, "x"), _row(results, "y")
    assert x["beyond_step"] == pytest.approx(0.5, abs=0.03)  # |v| > 1 + a step for half of U(-2, 2)
    assert y["beyond_step"] == 0.0
    fired = [f["tensor"] for f in results["findings"] if f["code"] == "QC901"]
    assert fired == ["x"]


def _messages(tmp, layer_metrics_yaml: str, extra: str = "") -> list[str]:
    passthrough_model(tmp / "model.onnx", [1, 8])
    write_arrays(tmp / "calib", [np.zeros((1, 8))])
    (tmp / "qcheck.yaml").write_text(textwrap.dedent("""\
        model: model.onnx
        data: {calibration: calib}
        layer_metrics:
        """) + textwrap.indent(textwrap.dedent(layer_metrics_yaml), "  ") + extra, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(tmp / "qcheck.yaml")
    return [str(p) for p in info.value.problems]


def test_hostile_layer_metrics_are_refused_at_load_with_their_line(tmp_path):
    messages = _messages(tmp_path, """\
        ok: "mean(abs(diff))"
        unknown: "mean(abs(dif))"
        attribute: "mean(float.__class__)"
        escape: "mean(diff.real)"
        call: "mean(open(diff))"
        repeat: "mean('a' * 1000000000)"
        power: "mean(diff ** 1000000)"
        per_element: "abs(diff)"
        lists: "max([diff, 1])"
        nested: {expr: "mean(diff - mean(diff))", over: elements}
        """)
    text = "\n".join(messages)
    assert len(messages) == 9, text
    expect = {5: "unknown name 'dif'", 6: "attribute access", 7: "attribute access", 8: "calling open() is not allowed",
              9: "only numbers are allowed", 10: "constant exponent", 11: "one value per element",
              12: "lists are not allowed", 13: "cannot hold another"}
    for line, what in expect.items():
        assert any(m.startswith(f"{tmp_path / 'qcheck.yaml'}:{line}:") and what in m for m in messages), (line, text)
    assert "did you mean 'diff'" in text


def test_rules_know_layer_metric_names_at_load(tmp_path):
    rule = """\
        rules:
          inline:
            - {code: QC902, name: user.p999, scope: tensor, severity: warning, when: "p999_eror > 4",
               message: "m", summary: s, why: w, fix: f}
        """
    passthrough_model(tmp_path / "model.onnx", [1, 8])
    write_arrays(tmp_path / "calib", [np.zeros((1, 8))])
    policy = tmp_path / "qcheck.yaml"
    policy.write_text("model: model.onnx\ndata: {calibration: calib}\nlayer_metrics:\n"
                      "  p999_err: 'percentile(abs(diff), 99.9) / scale'\n" + textwrap.dedent(rule))
    code = main(["validate", str(policy)])
    assert code == 2  # the typo is an error, with a did-you-mean to the declared name
    policy.write_text(policy.read_text().replace("p999_eror", "p999_err"))
    assert main(["validate", str(policy)]) == 0


def test_expression_over_elements_equals_numpy_on_all_samples():
    """`over: elements`: each reduction accumulated sample by sample equals numpy on the concatenation."""
    rng = np.random.default_rng(2)
    chunks = [rng.normal(3.0, 2.0, 1000) for _ in range(5)]
    expr = ArrayExpression("std(float) + mean(float > 3) - max(abs(float)) + count_unique(round(float))",
                           over="elements")
    accs = [Accumulator(name) for name, _ in expr.reductions]
    for c in chunks:
        for (_n, arg), acc in zip(expr.reductions, accs):
            acc.update(arg({"float": c}))
    got = expr.evaluate({"__reduced__": [a.value() for a in accs]})
    every = np.concatenate(chunks)
    want = every.std() + np.mean(every > 3) - np.abs(every).max() + np.unique(np.round(every)).size
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("text", ["median(diff)", "percentile(diff, 50)"])
def test_sorting_reductions_cannot_be_accumulated_over_elements(text):
    with pytest.raises(ExprError, match="over: samples"):
        ArrayExpression(text, over="elements")
    assert math.isfinite(ArrayExpression(text).evaluate({"diff": np.arange(5.0)}))
