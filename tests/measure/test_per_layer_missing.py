"""Per-layer columns hold per-layer values or nothing: when a tensor's producer cannot be replayed in
float (here: unnamed nodes, which the per-layer twin cannot match), its per-layer columns are null
with a reason, the whole-model columns are still measured, and no rule fires on the missing values."""

import csv
import json

from helpers import byte_classifier, write_policy, write_token_samples

from qcheck.cli.main import main


def test_missing_per_layer_values_are_null_with_a_reason_and_fire_no_rule(tmp_path):
    byte_classifier(tmp_path / "model.onnx", named=False)
    write_token_samples(tmp_path / "calib", 8)
    policy = write_policy(tmp_path / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib"}, "analyses": False,
        "report": {"out": "out", "formats": ["html"]}})
    assert main(["run", str(policy), "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    missing = [t for t in results["tensors"] if t["kind"] == "activation" and t["per_layer_missing"]]
    assert missing, "the unnamed producers should have no per-layer twin"
    for t in missing:
        for key in ("rmse_scale", "cosine", "sqnr", "mean_squared_error", "max_abs_error"):
            assert t[key] is None, (t["name"], key)
        assert t["whole_rmse_scale"] is not None and "replayed" in t["per_layer_missing"]
    # the Softmax output's whole-model rmse/scale is far above QC101's 0.7; it used to fire as a per-layer value
    probs = next(t for t in missing if t["name"] == "probs")
    assert probs["whole_rmse_scale"] > 0.7
    assert not [f for f in results["findings"] if f["code"] == "QC101" and f["tensor"] in {t["name"] for t in missing}]
    with open(tmp_path / "out" / "layer_stats.csv", newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert rows["probs"]["rmse_scale"] == "" and rows["probs"]["per_layer_missing"]
    assert any("per-layer columns are empty" in n for n in results["measure"]["notes"])
