"""`qcheck run` and `qcheck validate` share one load stage (qcheck/run/load_stage.py), so they agree."""

import json

import numpy as np
from helpers import small_cnn, write_npy_samples, write_policy

from qcheck.cli.main import main


def dynamic_only_policy(tmp):
    """A `scheme: dynamic` policy with evaluation data and no calibration data (dynamic needs none)."""
    small_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "eval", 4, seed=3)
    return write_policy(tmp / "qcheck.yaml", {"model": "model.onnx", "data": {"evaluation": "eval"},
                                              "quantization": {"scheme": "dynamic"},
                                              "require": ["model.cosine >= 0.9"],
                                              "report": {"out": "out", "formats": ["html"]}})


def test_validate_and_run_agree_on_a_dynamic_only_policy(tmp_path, capsys):
    policy = dynamic_only_policy(tmp_path)
    assert main(["validate", str(policy), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["valid"] and list(summary["data"]) == ["evaluation"]  # no calibration set was invented
    assert summary["data"]["evaluation"]["samples"] == 4
    code = main(["run", str(policy), "--quiet"])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["calibration"] is None and results["data"]["evaluation"]["samples"] == 4
    assert code == (1 if results["verdict"]["status"] == "fail" else 0)


def test_validate_and_run_give_the_same_message_for_a_bad_evaluation_sample(tmp_path, capsys):
    """The evaluation data's first sample has the wrong shape: both commands stop at it with one message."""
    policy = dynamic_only_policy(tmp_path)
    np.save(tmp_path / "eval" / "0.npy", np.zeros((1, 3, 8, 8), np.float32))
    messages = []
    for command in ("validate", "run"):
        assert main([command, str(policy)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        messages.append(err[err.index("qcheck: error:"):])  # run logs its stages before it
    assert messages[0] == messages[1]
    assert "sample 0.npy: input 'x' has shape [1, 3, 8, 8], the model expects [1, 3, 16, 16]" in messages[0]
    assert not (tmp_path / "out").exists()
