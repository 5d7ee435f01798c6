"""The analyses probe a batched run; on a model with a fixed Reshape ORT refuses it. That must not reach
stderr (ORT logs its own errors there) and must be recorded in the analyses' notes."""

import json

from helpers import byte_classifier, write_policy, write_token_samples

from qcheck.cli.main import main


def test_refused_batch_probe_is_quiet_and_noted(tmp_path, capfd):
    byte_classifier(tmp_path / "model.onnx")  # ORT's MatMul+Add fusion reshapes to a fixed [8, 16]: batch 1 only
    write_token_samples(tmp_path / "calib", 8)
    policy = write_policy(tmp_path / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib"},
        "require": ["model.cosine >= 0.9"], "report": {"out": "out", "formats": ["html"]}})
    assert main(["run", str(policy), "--quiet"]) == 0
    err = capfd.readouterr().err
    assert "onnxruntime" not in err and "Non-zero status code" not in err, err
    notes = json.loads((tmp_path / "out" / "results.json").read_text())["analyses"]["notes"]
    assert any("one at a time" in n and "Reshape node" in n for n in notes), notes
