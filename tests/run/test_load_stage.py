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


def _names_policy(tmp, quantization: dict):
    small_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 4)
    return write_policy(tmp / "qcheck.yaml", {"model": "model.onnx", "data": {"calibration": "calib"},
                                              "quantization": quantization, "analyses": False,
                                              "report": {"out": "out", "formats": ["html"]}})


def test_names_the_model_lacks_are_refused_by_validate_and_run_with_their_lines(tmp_path, capsys):
    """A typo in exclude.nodes, exclude.op_types or overrides would change nothing and the report would show a
    recipe never applied: every such name is refused at once, each at its own line, before anything runs."""
    policy = _names_policy(tmp_path, {"exclude": {"nodes": ["conv1", "conv9"], "op_types": ["conv", "LSTM"]},
                                      "overrides": {"nosuch": {"quant_type": "int16"}}})
    lines = policy.read_text().splitlines()
    for command in ("validate", "run"):
        assert main([command, str(policy)]) == 2
        err = capsys.readouterr().err
        for text in ("- conv9", "- conv", "nosuch:"):
            line = next(i for i, s in enumerate(lines, 1) if s.strip() == text)
            assert f"qcheck.yaml:{line}:" in err
        assert "no node named 'conv9'" in err and "'conv' is not an ONNX operator type" in err
        assert "conv1," in err  # the hint lists the model's node names
        assert "conv1'" not in err and "LSTM" not in err  # a real node, a valid op type the model lacks: fine
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_node_fused_by_preprocessing_is_named_as_fused(tmp_path, capsys):
    """Conv -> BatchNormalization: ONNX Runtime's pre-processing folds the BatchNormalization into the Conv, so
    excluding it would exclude nothing. `validate` (the user's model) accepts it; `run` says it was fused."""
    import onnx
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w", rng.normal(size=(4, 3, 3, 3))), ("g", np.ones(4)), ("b", np.zeros(4)), ("m", np.zeros(4)),
        ("v", np.ones(4)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "model.onnx"))
    write_npy_samples(tmp_path / "calib", 4)
    policy = write_policy(tmp_path / "qcheck.yaml", {"model": "model.onnx", "data": {"calibration": "calib"},
                                                     "quantization": {"exclude": {"nodes": ["bn"]}}, "analyses": False,
                                                     "report": {"out": "out", "formats": ["html"]}})
    assert main(["validate", str(policy)]) == 0
    capsys.readouterr()
    assert main(["run", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "no node named 'bn'; ONNX Runtime's pre-processing fused it" in err and "qcheck.yaml:" in err
