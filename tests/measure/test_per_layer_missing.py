"""Per-layer columns hold per-layer values or nothing: when a tensor's producer cannot be replayed in
float (here: a float model whose nodes are unnamed, which the per-layer twin cannot match; qcheck's own
preparation names them, see the last test), its per-layer columns are null with a reason, the
whole-model columns are still measured, and no rule fires on the missing values."""

import json

import onnx
from helpers import byte_classifier, write_policy, write_token_samples

from qcheck.cli.main import main
from qcheck.data.readers import open_data
from qcheck.measure.per_tensor import measure
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.policy.spec import DataSource, Preprocess, QuantizationSpec, RulesSpec
from qcheck.quantize.calibrate import Recipe, build_quantized, calibrate
from qcheck.quantize.qdq import read_qdq
from qcheck.rules.engine import evaluate
from qcheck.rules.packs import load_rules


def test_missing_per_layer_values_are_null_with_a_reason_and_fire_no_rule(tmp_path):
    src = byte_classifier(tmp_path / "model.onnx")
    write_token_samples(tmp_path / "calib", 8)
    pm = prepare_model(load_onnx(src), src, {}, tmp_path)
    float_model = onnx.load(str(pm.path))
    for node in float_model.graph.node:
        node.name = ""
    onnx.save(float_model, str(tmp_path / "unnamed.onnx"))
    data = open_data(DataSource(tmp_path / "calib"), pm.inputs, Preprocess())
    ranges = calibrate(tmp_path / "unnamed.onnx", data, QuantizationSpec())
    qmodel = onnx.load(str(build_quantized(tmp_path / "unnamed.onnx", ranges, Recipe(), tmp_path / "q.onnx")))
    m = measure(float_model, qmodel, read_qdq(qmodel, float_model), data, ranges.ranges, {}, ["local", "whole"])
    rows = [t.row() for t in m.tensors]
    missing = [r for r in rows if r["kind"] == "activation" and r["per_layer_missing"]]
    assert missing, "unnamed producers have no per-layer twin"
    for r in missing:
        for key in ("rmse_scale", "rmse", "cosine", "sqnr", "mean_squared_error", "max_abs_error"):
            assert r[key] is None, (r["name"], key)
        assert r["whole_rmse_scale"] is not None and "replayed" in r["per_layer_missing"]
    # the Softmax output's whole-model rmse/scale is far above QC101's 0.7: it used to fire as a per-layer value
    probs = next(r for r in missing if r["name"] == "probs")
    assert probs["whole_rmse_scale"] > 0.7
    rules = [r for r in load_rules(RulesSpec()) if r.code == "QC101"]
    assert rules and not evaluate(rules, rows, scheme="int8")
    assert any("per-layer columns are empty" in n for n in m.notes)


def test_unnamed_nodes_are_named_so_per_layer_statistics_exist(tmp_path):
    byte_classifier(tmp_path / "model.onnx", named=False)
    write_token_samples(tmp_path / "calib", 8)
    policy = write_policy(tmp_path / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib"}, "analyses": False,
        "report": {"out": "out", "formats": ["html"]}})
    assert main(["run", str(policy), "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("unnamed node(s) named" in n for n in results["model"]["notes"])
    acts = [t for t in results["tensors"] if t["kind"] == "activation" and t["node"] != "(input)"]
    assert acts and all(t["node"] and t["rmse_scale"] is not None and not t["per_layer_missing"] for t in acts)
