"""The statistics the rules read, measured on tiny real models with ONNX Runtime, against numbers built in
or recomputed independently; and the rules that fire on them end to end (results.json, report).

- outlier_channel_conv: one output channel of a Conv weight holds a weight of 20 where every other channel
  spans [-0.5, 0.5], so channel_range_ratio = 20.5 exactly; quantized per tensor, the weights' rounding
  dominates the Conv's error (weight_error_share, recomputed here with plain ORT sessions).
- mixed_concat: Concat(x, 320 * x), the detector pattern: input_range_ratio = 320.
"""

import html
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import (
    mixed_concat,
    outlier_channel_conv,
    small_cnn,
    write_arrays,
    write_npy_samples,
    write_policy,
)
from onnx import numpy_helper

from qcheck.cli.main import main
from qcheck.cli.summary import text_summary
from qcheck.measure.error_stats import DistributionAccumulator
from qcheck.resources import builtin_pack_path
from qcheck.rules.packs import load_pack


def run(tmp, name: str, doc: dict, analyses: bool = False) -> dict:
    """One `qcheck run` (HTML report only; the sensitivity analyses only when asked, they take the time)."""
    doc = {**doc, "report": {"out": f"out-{name}", "formats": ["html"]}}
    if not analyses:
        doc["analyses"] = False
    policy = write_policy(tmp / f"{name}.yaml", doc)
    code = main(["run", str(policy), "--quiet"])
    assert code in (0, 1)
    return json.loads((tmp / f"out-{name}" / "results.json").read_text())


def row(results: dict, name: str) -> dict:
    return next(t for t in results["tensors"] if t["name"] == name)


def codes_on(results: dict, key: str, value: str) -> set[str]:
    return {f["code"] for f in results["findings"] if f.get(key) == value}


@pytest.fixture(scope="module")
def conv_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outlier")
    outlier_channel_conv(tmp / "model.onnx", outlier=20.0)
    rng = np.random.default_rng(3)
    write_arrays(tmp / "calib", [rng.uniform(0.0, 1.0, (1, 4, 8, 8)) for _ in range(8)])
    base = {"model": "model.onnx", "data": {"calibration": "calib"}}
    # with the analyses once: their report section must render for a one-node model too
    per_tensor = run(tmp, "per_tensor", {**base, "quantization": {"per_channel": False}}, analyses=True)
    per_channel = run(tmp, "per_channel", {**base, "quantization": {"per_channel": True}})
    return tmp, per_tensor, per_channel


def test_outlier_channel_ratio_is_the_one_built_in(conv_runs):
    _, per_tensor, per_channel = conv_runs
    for results in (per_tensor, per_channel):
        w = row(results, "w")
        # channel widths: seven of 1.0 and one of 20 - (-0.5) = 20.5; the median is 1.0
        assert w["channel_range_ratio"] == pytest.approx(20.5, rel=1e-6)
        assert w["worst_channel"] == 5 and w["channels"] == 8
    assert "QC107" in codes_on(per_tensor, "tensor", "w")
    assert "QC107" not in codes_on(per_channel, "tensor", "w")  # each channel has its own scale


@pytest.mark.parametrize("variant", ["per_tensor", "per_channel"])
def test_weight_error_share_matches_plain_onnxruntime(conv_runs, variant):
    """share = W / (W + R), W = |conv(x^, w) - conv(x^, w^)|^2 (the weights' part of the node's error) and
    R = |conv(x^, w^) - y_q|^2 (the rest: the output's rounding), with x^ the dequantized input, w^ the
    dequantized weights and y_q the quantized model's output: the per-layer twin, rebuilt with plain ORT."""
    tmp, *runs = conv_runs
    results = dict(zip(["per_tensor", "per_channel"], runs))[variant]
    share, rmse_scale = plain_share(tmp, tmp / f"out-{variant}", range(8))
    y = row(results, "y")
    assert y["weight_error_share"] == pytest.approx(share, rel=1e-3)
    assert 0.0 <= y["weight_error_share"] <= 1.0
    assert y["rmse_scale"] == pytest.approx(rmse_scale, rel=1e-3)
    if variant == "per_tensor":
        # one step of 20/127 on weights of +-0.5: the weights cause nearly all of the error
        assert y["weight_error_share"] > 0.9
        assert {"QC101", "QC108"} <= codes_on(results, "tensor", "y")


def test_weight_error_share_reads_eight_evenly_spread_samples_of_more(tmp_path):
    """With 12 evaluation samples the twin with dequantized weights runs on 8 of them, evenly spread (0, 2, 3, 5,
    6, 8, 9, 11: round(i * 11 / 7)); the share is theirs exactly, every other statistic reads all 12, and the
    results say so."""
    outlier_channel_conv(tmp_path / "model.onnx", outlier=20.0)
    rng = np.random.default_rng(5)
    # the four samples left out are wide (the weights' error grows with the input, the output's rounding does
    # not), the eight read narrow: the share over the eight differs from the share over all twelve
    skipped = {1, 4, 7, 10}
    write_arrays(tmp_path / "calib", [rng.uniform(0.0, 1.0 if i in skipped else 0.05, (1, 4, 8, 8))
                                      for i in range(12)])
    results = run(tmp_path, "twelve", {"model": "model.onnx", "data": {"calibration": "calib"},
                                       "quantization": {"per_channel": False}})
    y = row(results, "y")
    share_8, _ = plain_share(tmp_path, tmp_path / "out-twelve", [0, 2, 3, 5, 6, 8, 9, 11])
    share_12, rmse_scale_12 = plain_share(tmp_path, tmp_path / "out-twelve", range(12))
    assert abs(share_8 - share_12) > 1e-2  # the subset is told apart
    assert y["weight_error_share"] == pytest.approx(share_8, rel=1e-4)
    assert y["rmse_scale"] == pytest.approx(rmse_scale_12, rel=1e-3)
    assert any("weight_error_share is estimated on 8 of the 12" in n for n in results["measure"]["notes"])


def plain_share(tmp, out, indices) -> tuple[float, float]:
    """The Conv's weight_error_share and rmse/scale over the samples `indices`, with plain ORT sessions."""
    qmodel = onnx.load(str(out / "model.quant.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    sx, zx = float(init["x_scale"]), int(init["x_zero_point"])
    shape = (-1, 1, 1, 1) if init["w_scale"].size > 1 else ()  # per channel: one scale per output channel
    w_hat = ((init["w_quantized"].astype(np.int32) - init["w_zero_point"].reshape(shape).astype(np.int32)) *
             init["w_scale"].reshape(shape)).astype(np.float32)
    float_model = onnx.load(str(tmp / "model.onnx"))
    twin_w = onnx.load(str(tmp / "model.onnx"))
    twin_w.graph.initializer[0].CopyFrom(numpy_helper.from_array(w_hat, "w"))
    f_sess = ort.InferenceSession(float_model.SerializeToString())
    w_sess = ort.InferenceSession(twin_w.SerializeToString())
    q_sess = ort.InferenceSession(qmodel.SerializeToString())
    sum_w = sum_rest = sum_all = n = 0.0
    for i in indices:
        x = np.load(tmp / "calib" / f"{i}.npy")
        x_hat = ((np.clip(np.rint(x / sx) + zx, 0, 255) - zx) * sx).astype(np.float32)
        y_f = f_sess.run(None, {"x": x_hat})[0].astype(np.float64)
        y_w = w_sess.run(None, {"x": x_hat})[0].astype(np.float64)
        y_q = q_sess.run(None, {"x": x})[0].astype(np.float64)
        sum_w += float(((y_f - y_w) ** 2).sum())
        sum_rest += float(((y_w - y_q) ** 2).sum())
        sum_all += float(((y_f - y_q) ** 2).sum())
        n += y_f.size
    return sum_w / (sum_w + sum_rest), math.sqrt(sum_all / n) / float(init["y_scale"])


def test_per_channel_weights_take_the_weight_share_down(conv_runs):
    """Per channel, seven channels get steps of 0.5/127 instead of 20/127: their weight error vanishes and
    only the outlier channel's remains. The rest (the output's rounding, on a scale the outlier channel sets
    either way) stays, so the odds W/R = share / (1 - share) must fall, by well over half."""
    _, per_tensor, per_channel = conv_runs

    def odds(results):
        share = row(results, "y")["weight_error_share"]
        return share / (1.0 - share)

    assert odds(per_channel) < 0.5 * odds(per_tensor)


def test_graph_position_of_a_single_conv(conv_runs):
    _, per_tensor, _ = conv_runs
    assert row(per_tensor, "y")["layer_index"] == 0 and row(per_tensor, "y")["is_output"] is True
    assert row(per_tensor, "x")["layer_index"] is None and row(per_tensor, "x")["is_output"] is False
    assert "QC102" in codes_on(per_tensor, "tensor", "y")  # the first layer, well above rounding noise


@pytest.fixture(scope="module")
def concat_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concat")
    mixed_concat(tmp / "model.onnx", factor=320.0)
    rng = np.random.default_rng(5)
    # two modes: every value near 0 or near 1
    samples = [np.where(rng.random((1, 2, 8, 8)) < 0.5, rng.uniform(0.0, 0.1, (1, 2, 8, 8)),
                        rng.uniform(0.9, 1.0, (1, 2, 8, 8))) for _ in range(8)]
    write_arrays(tmp / "calib", samples)
    results = run(tmp, "concat", {"model": "model.onnx", "data": {"calibration": "calib"}, "target": "npu",
                                  "require": ["model.cosine >= 0.99999999"]})
    return tmp, results


def test_concat_of_ranges_0_1_and_0_320_has_input_range_ratio_320(concat_run):
    _, results = concat_run
    out = row(results, "out")
    assert out["input_range_ratio"] == pytest.approx(320.0, rel=1e-4)  # calibrated widths w and fl(320 w)
    assert out["is_output"] is True and out["layer_index"] == 1 and row(results, "big")["layer_index"] == 0
    f = next(f for f in results["findings"] if f["code"] == "QC106")
    assert (f["tensor"], f["node"], f["op_type"]) == ("out", "concat", "Concat")
    assert f["evidence"]["input_range_ratio"] == out["input_range_ratio"] and f["params"] == {"max_ratio": 50}
    assert f["remedies"] == ["int16_activations"]  # an NPU runs no float fallback: keep_float is not proposed


def test_distribution_statistics_match_numpy(concat_run):
    tmp, results = concat_run
    x = np.concatenate([np.load(tmp / "calib" / f"{i}.npy").ravel() for i in range(8)]).astype(np.float64)
    d = x - x.mean()
    m2, m3, m4 = (d ** 2).mean(), (d ** 3).mean(), (d ** 4).mean()
    skew, kurt = m3 / m2 ** 1.5, m4 / m2 ** 2 - 3.0
    r = row(results, "x")
    assert r["skewness"] == pytest.approx(skew, rel=1e-6, abs=1e-9)
    assert r["kurtosis"] == pytest.approx(kurt, rel=1e-6)
    assert r["bimodality"] == pytest.approx((skew ** 2 + 1) / (kurt + 3), rel=1e-6)
    assert r["bimodality"] > 0.9 and r["channels"] == 2
    assert "QC109" in codes_on(results, "tensor", "x")


def test_model_scope_rules_run_on_the_model_row(concat_run):
    _, results = concat_run
    stats = results["model_statistics"]
    assert stats["target"] == "npu" and stats["requirements_met"] is False
    assert stats["quantized_nodes"] == 2 and stats["float_nodes"] == 0
    assert stats["flagged_nodes"] == 1 and stats["flagged_fraction"] == 0.5  # the Concat (QC106)
    qat = next(f for f in results["findings"] if f["code"] == "QC112")
    assert qat["scope"] == "model" and qat["tensor"] is None and qat["remedies"] == ["qat"]
    assert results["verdict"]["status"] == "fail"


def test_report_groups_findings_by_rule_with_the_rules_text(concat_run):
    tmp, results = concat_run
    page = html.unescape((tmp / "out-concat" / "report.html").read_text())
    rules = {r.code: r for r in load_pack(builtin_pack_path())}
    findings = page[page.index('<section id="findings">'):page.index('<section id="rules-appendix">')]
    appendix = page[page.index('<section id="rules-appendix">'):]
    # warnings before info; each group carries its rule's explanation
    assert findings.index('id="finding-QC106"') < findings.index('id="finding-QC109"')
    assert rules["QC106"].why in findings and "<code>input_range_ratio</code> 320" in findings
    for rule in results["rules"]:
        assert f'id="rule-{rule["code"]}"' in appendix and rules[rule["code"]].fix in appendix


def test_statistics_no_rule_needs_are_not_computed(tmp_path):
    outlier_channel_conv(tmp_path / "model.onnx")
    write_arrays(tmp_path / "calib", [np.full((1, 4, 8, 8), 0.5) + 0.1 * i for i in range(3)])
    results = run(tmp_path, "lean", {"model": "model.onnx", "data": {"calibration": "calib"},
                                     "rules": {"disable": ["QC107", "QC108", "QC109"]}})
    y = row(results, "y")
    assert y["weight_error_share"] is None and y["kurtosis"] is None and y["channel_range_ratio"] is None
    assert y["rmse_scale"] is not None and y["cosine"] is not None


# --------------------------------------------------------------------------- the accumulator, against closed forms


def test_two_equal_spikes_have_bimodality_one_and_samples_accumulate():
    # values -1 and +1, equally often: skewness 0, kurtosis 1 (excess -2), coefficient (0 + 1) / (-2 + 3) = 1
    acc = DistributionAccumulator(channel_axis=1)
    for sign in (1.0, -1.0, 1.0, -1.0):  # four samples; the shift is the first sample's mean (+1)
        acc.update(np.full((1, 2, 4), sign) * np.array([1.0, -1.0])[None, :, None])
    d = acc.result()
    assert d.skewness == pytest.approx(0.0, abs=1e-12)
    assert d.kurtosis == pytest.approx(-2.0, rel=1e-12)
    assert d.bimodality == pytest.approx(1.0, rel=1e-12)
    assert d.channels == 2 and d.channel_range_ratio == pytest.approx(1.0)


def test_channel_ratio_ignores_constant_channels():
    # widths: 1, 1, 1, 4 and four dead channels (constant 0): the median of the varying ones is 1
    x = np.zeros((3, 8, 5))
    x[:, :3, :] = np.linspace(0.0, 1.0, 5)
    x[:, 3, :] = np.linspace(-2.0, 2.0, 5)
    acc = DistributionAccumulator(channel_axis=1)
    acc.update(x)
    d = acc.result()
    assert d.channel_range_ratio == pytest.approx(4.0) and d.worst_channel == 3 and d.channels == 8
    acc = DistributionAccumulator(channel_axis=1)
    acc.update(np.zeros((2, 4, 3)))
    assert acc.result().channel_range_ratio == 1.0  # nothing varies: no outlier


def test_float_fallback_on_an_integer_only_target_is_a_model_finding(tmp_path):
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 4)
    results = run(tmp_path, "mcu", {"model": "model.onnx", "data": {"calibration": "calib"}, "target": "mcu",
                                    "quantization": {"exclude": {"nodes": ["fc"]}}})
    stats = results["model_statistics"]
    assert "fc" in results["quantization"]["float_nodes"]
    assert stats["float_nodes"] == len(results["quantization"]["float_nodes"]) >= 1
    f = next(f for f in results["findings"] if f["code"] == "QC111")
    assert f["evidence"]["float_nodes"] == stats["float_nodes"] and f["evidence"]["target"] == "mcu"
    assert f["remedies"] == ["qat"]  # an MCU runs neither float nor int16
    assert "which runs integer only (int16 activations allowed there: no)" in f["message"]


def test_terminal_summary_shows_one_line_per_rule_worst_first(concat_run):
    _, results = concat_run
    text = text_summary(results)
    lines = [line.strip() for line in text.splitlines() if line.startswith("  QC")]
    assert [line.split()[0] for line in lines] == list(dict.fromkeys(f["code"] for f in results["findings"]))
    qc109 = next(line for line in lines if line.startswith("QC109"))
    n = sum(1 for f in results["findings"] if f["code"] == "QC109")
    worst = next(f for f in results["findings"] if f["code"] == "QC109")
    assert f"{worst['tensor']}: {worst['message']} (+{n - 1} more)" in qc109
    assert "QC112 warning model.qat_recommended: model: requirements fail" in text
