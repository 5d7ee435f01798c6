"""Deep analyses on the switchable emulation model, checked against real ONNX Runtime models.

The models are small_cnn with one defect planted, so the right answer is
known before the analysis runs:

- a weight outlier in conv2 with per-tensor weights: the outlier sets the
  scale, every other weight of conv2 rounds to a few steps, and conv2 is
  the node that hurts, through its weights;
- an explicit, far too wide range for the activation r1 (conv2's input):
  r1 gets a few steps, and the damage is in activations.
"""

import numpy as np
import onnx
import pytest
from helpers import small_cnn, write_npy_samples
from onnx import numpy_helper

from qcheck.analyses.curves import channel_boxes, histograms
from qcheck.analyses.run_all import build_emulation, run_analyses
from qcheck.analyses.switchable import SWITCH_INPUT
from qcheck.data.readers import open_data
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.model.runtime import make_session
from qcheck.policy.spec import AnalysesSpec, DataSource, Preprocess, QuantizationSpec
from qcheck.quantize.calibrate import Recipe, build_quantized, calibrate
from qcheck.quantize.qdq import read_qdq


def _setup(tmp, weight_outlier: float | None = None):
    src = small_cnn(tmp / "model.onnx")
    if weight_outlier is not None:
        m = onnx.load(str(src))
        for init in m.graph.initializer:
            if init.name == "w2":
                w = numpy_helper.to_array(init).copy()
                w[5, 0, 1, 1] = weight_outlier
                init.CopyFrom(numpy_helper.from_array(w, "w2"))
        onnx.save(m, str(src))
    write_npy_samples(tmp / "calib", 8, seed=3)
    pm = prepare_model(load_onnx(src), src, {}, tmp)
    data = open_data(DataSource(tmp / "calib"), pm.inputs, Preprocess())
    ranges = calibrate(pm.path, data, QuantizationSpec())
    return pm, data, ranges, onnx.load(str(pm.path))


def _node(float_model, weight: str) -> str:
    return next(n.name for n in float_model.graph.node if weight in n.input)


@pytest.fixture(scope="module")
def weight_defect(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wdefect")
    pm, data, ranges, fm = _setup(tmp, weight_outlier=40.0)
    recipe = Recipe(per_channel=False)
    spec = AnalysesSpec(samples=6, detail=3, top_k=2, focus_nodes=2)
    return pm, data, ranges, fm, recipe, run_analyses(spec, pm.path, fm, ranges, recipe, data, {})


def test_switches_all_off_is_the_float_model_and_all_on_the_quantized_one(tmp_path):
    pm, data, ranges, fm = _setup(tmp_path)
    sw = build_emulation(pm.path, fm, ranges, Recipe())
    emu = sw.session()
    real = make_session(build_quantized(pm.path, ranges, Recipe(), tmp_path / "q.onnx"))
    flt = make_session(fm)
    out = onnx.load(str(tmp_path / "q.onnx"))
    logits = read_qdq(out, fm).tensors["logits"]
    for i in range(len(data)):
        x = data[i]
        f, q = flt.run(None, x)[0], real.run(None, x)[0]
        off = emu.run(None, {**x, SWITCH_INPUT: sw.mask()})[0]
        on = emu.run(None, {**x, SWITCH_INPUT: sw.mask(default=True)})[0]
        # Off: the float graph. Only float rounding may differ (a Gemm whose weight is a switched
        # tensor cannot be pre-packed by ORT, so it sums in another order): ~1 ulp of the logits.
        assert np.max(np.abs(off - f)) <= 1e-6 * np.max(np.abs(f))
        # On: the quantized model; emulation and integer kernels may differ by one output step.
        assert np.max(np.abs(on - q)) <= float(logits.scale) + 1e-7
        assert np.max(np.abs(q - f)) > 10 * np.max(np.abs(off - f))  # and quantization did change something


def test_weight_outlier_node_ranks_first_and_is_weight_dominated(weight_defect):
    _, _, _, fm, _, result = weight_defect
    conv2 = _node(fm, "w2")
    first = result["sensitivity"]["nodes"][0]
    assert first["node"] == conv2
    assert first["dominant"] == "weight"
    views = first["views"]
    assert views["weight"]["cosine"] < views["activation"]["cosine"]
    # quantizing conv2 alone does about as much damage as its weights alone
    assert abs(views["node"]["cosine"] - views["weight"]["cosine"]) < 0.5 * (1 - views["node"]["cosine"])
    # excluding conv2 recovers most of the loss of the fully quantized model
    everything = result["sensitivity"]["all_quantized"]["cosine"]
    assert first["recovered"] > 0.5 * (1 - everything)


def test_activation_range_defect_is_activation_dominated(tmp_path):
    pm, data, ranges, fm = _setup(tmp_path)
    lo, hi = ranges.ranges["r1"]
    recipe = Recipe(overrides={"r1": {"rmin": 0.0, "rmax": 200.0 * hi}})  # ~1 step for the real values
    spec = AnalysesSpec(samples=4, detail=4, curves=False, distributions=False, confirm=False)
    result = run_analyses(spec, pm.path, fm, ranges, recipe, data, {})
    conv2 = _node(fm, "w2")
    top = {row["node"]: row for row in result["sensitivity"]["nodes"][:2]}
    assert conv2 in top  # conv2 reads r1 (relu1 writes it: the other of the two)
    assert top[conv2]["dominant"] == "activation"


def test_reverse_view_matches_the_real_model_with_that_node_excluded(weight_defect):
    _, _, _, fm, _, result = weight_defect
    rows = result["confirm"]["rows"]
    assert [r["label"] for r in rows] == ["all quantized", "top-1 float", "top-2 float"]
    assert rows[1]["keep_float"] == [_node(fm, "w2")]
    for row in rows:
        assert row["agrees"], row
        assert abs(row["difference"]) < 1e-3


def test_curves_tail_equals_the_model_output_metric(weight_defect):
    _, _, _, fm, _, result = weight_defect
    curves = {c["label"]: c for c in result["curves"]["curves"]}
    assert set(curves) == {"all quantized", "weights only", "activations only", "top-1 float", "top-2 float"}
    tail = curves["all quantized"]["points"][-1]
    assert tail["tensor"] == "logits"
    assert tail["cosine"] == pytest.approx(result["sensitivity"]["all_quantized"]["cosine"], abs=1e-9)
    # weights hurt more than activations in this model, at the outputs
    assert curves["weights only"]["points"][-1]["cosine"] < curves["activations only"]["points"][-1]["cosine"]
    # leaving the worst node float brings the tail up
    assert curves["top-1 float"]["points"][-1]["cosine"] > tail["cosine"]


def test_distributions_and_box_plots_of_the_worst_node(weight_defect):
    _, data, _, fm, _, result = weight_defect
    dist = result["distributions"][0]
    assert dist["node"] == _node(fm, "w2")
    assert sum(dist["float_counts"]) == sum(dist["quant_counts"]) == dist["count"] == 6 * 8 * 16 * 16
    assert dist["values_used"] == dist["values_total"] == 6 * 8 * 16 * 16  # small: every value, no subsample
    assert not any("subsample" in n for n in result["notes"])
    weight_box = next(b for b in dist["channels"] if b["role"] == "weight")
    assert weight_box["channels"] == 8 and 5 in weight_box["outliers"]
    assert "per channel" in weight_box["advice"]


def test_histogram_values_beyond_the_cap_are_a_strided_subsample_and_counted():
    from qcheck.analyses.curves import _Values

    kept = _Values()
    for k in range(3):
        kept.add(np.arange(1000, dtype=np.float32) + k, per_sample_cap=100)
    assert kept.seen == 3000 and kept.size == 300
    assert kept.array()[:3].tolist() == [0.0, 10.0, 20.0]  # every 10th value


def test_channel_boxes_find_the_planted_channel():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(6, 1000))
    x[4] *= 30
    box = channel_boxes(x, "t", "weight")
    widths = x.max(axis=1) - x.min(axis=1)
    assert box["outliers"] == [4]
    assert box["range_ratio"] == pytest.approx(widths.max() / np.median(widths))
    assert box["median"] == pytest.approx(list(np.median(x, axis=1)))


def test_histograms_share_bins_covering_values_and_calibrated_range():
    f = np.linspace(-1, 3, 4001)  # steps of 0.001: hits the midpoints between grid values
    q = np.round(f * 4) / 4
    h = histograms(f, q, (-2.0, 2.5))
    assert h["edges"][0] == -2.0 and h["edges"][-1] == 3.0
    assert sum(h["float_counts"]) == sum(h["quant_counts"]) == 4001
    assert h["max_abs_error"] == pytest.approx(0.125)  # half a step of 1/4


def test_a_task_metric_ranks_the_nodes_with_its_own_values(tmp_path):
    # a regression task metric (largest |float - quantized| of the logits, lower is better) as the
    # ranking metric: each node's value is what an independent run of the same session gives
    from qcheck.measure.tasks.regression import Regression
    from qcheck.policy.spec import MetricSpec

    pm, data, ranges, fm = _setup(tmp_path, weight_outlier=40.0)
    options = {"task": "regression", "output": "logits"}
    metrics = {"err": MetricSpec("err", "logits", task="regression", options=options)}
    spec = AnalysesSpec(samples=6, metric="err", detail=0, curves=False, distributions=False, confirm=True, top_k=1)
    result = run_analyses(spec, pm.path, fm, ranges, Recipe(per_channel=False), data, metrics,
                          make_tasks=lambda: [Regression("err", options)])
    rows = result["sensitivity"]["nodes"]
    values = [row["views"]["node"]["err"] for row in rows]
    assert values == sorted(values, reverse=True)  # worst (largest error) first
    assert rows[0]["node"] == _node(fm, "w2")  # the planted weight outlier
    sw = build_emulation(pm.path, fm, ranges, Recipe(per_channel=False))
    emu = sw.session()
    scale = max(float(np.abs(emu.run(None, {**data[i], SWITCH_INPUT: sw.mask()})[0]).max()) for i in range(6))
    for row in rows:
        mask = sw.mask(on=next(n.all for n in sw.nodes if n.node == row["node"]))
        expect = max(float(np.abs(emu.run(None, {**data[i], SWITCH_INPUT: mask})[0]
                                  - emu.run(None, {**data[i], SWITCH_INPUT: sw.mask()})[0]).max()) for i in range(6))
        # the runner may batch samples (other kernels): float rounding of the logits, a few ulps, not more
        assert row["views"]["node"]["err"] == pytest.approx(expect, abs=1e-5 * scale)
    # the confirmation scores the real quantized model with the same task metric
    assert result["confirm"]["rows"][0]["metric"] == "err" and result["confirm"]["rows"][0]["real"] > 0
