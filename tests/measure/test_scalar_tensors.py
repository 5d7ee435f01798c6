"""A scalar (0-d) activation, as in voice-activity and audio models (silero-vad: a ReduceMean without
keepdims scales the signal): measured like any other tensor, per layer included."""

import json

import numpy as np
import onnx
from helpers import write_arrays, write_policy
from onnx import TensorProto, helper, numpy_helper

from qcheck.cli.main import main


def scalar_gain_model(path):
    """y = Conv(x) * mean(x): the mean is a 0-d tensor that a quantized Mul reads."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(2, 1, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("Mul", ["c", "m"], ["y"], name="gain")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 64])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_a_scalar_activation_is_measured(tmp_path):
    scalar_gain_model(tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    write_arrays(tmp_path / "calib", [rng.uniform(0.5, 1.5, (1, 1, 64)) for _ in range(6)])
    policy = write_policy(tmp_path / "qcheck.yaml", {"model": "model.onnx", "data": {"calibration": "calib"},
                                                     "analyses": False, "report": {"out": "out", "formats": ["html"]}})
    assert main(["run", str(policy), "--quiet"]) == 0
    rows = {t["name"]: t for t in json.loads((tmp_path / "out" / "results.json").read_text())["tensors"]}
    m = rows["m"]
    assert m["num_elements"] == 6 and m["kind"] == "activation"  # one value per sample
    # its per-layer error is the rounding of one value onto its grid: at most half a step
    assert m["max_abs_error"] <= 0.5 * m["scale"] * (1 + 1e-6)
    assert rows["y"]["rmse_scale"] is not None  # the Mul's twin was fed the dequantized scalar


def test_a_scalar_model_input_runs_through_measurement_and_the_analyses(tmp_path):
    """A 0-d graph input (silero-vad's sample rate): it has no batch axis, so the analyses run samples one at
    a time instead of stacking them, and every node still gets its sensitivity."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(2, 1, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1]),
             helper.make_node("Mul", ["c", "g"], ["y"], name="gain")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64]),
                                           helper.make_tensor_value_info("g", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 64])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "model.onnx"))
    (tmp_path / "calib").mkdir()
    for i in range(6):
        np.savez(tmp_path / "calib" / f"{i}.npz", x=rng.uniform(-1, 1, (1, 1, 64)).astype(np.float32),
                 g=np.array(rng.uniform(0.5, 2.0), np.float32))
    policy = write_policy(tmp_path / "qcheck.yaml", {"model": "model.onnx", "data": {"calibration": "calib"},
                                                     "report": {"out": "out", "formats": ["html"]}})
    assert main(["run", str(policy), "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    ranked = {r["node"] for r in results["analyses"]["sensitivity"]["nodes"]}
    assert ranked == {"conv", "gain"}
