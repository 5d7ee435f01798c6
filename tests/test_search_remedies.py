"""The search remedies skip_first and explicit_range, and `search.cost: latency`, on tiny real models.

skip_first: `helpers.outlier_first_mlp`, whose first node `head` writes one column 1000x wider than the others
into `logits`; keeping the first node in float is the fix.
explicit_range: `helpers.gain_conv`, whose output `y` holds one rare huge value in the calibration data;
minmax spends y's uint8 grid on it, the percentile range does not.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from helpers import gain_conv, outlier_first_mlp, write_npy_samples, write_policy
from qcheck.cli import main
from qcheck.model import topological_order
from qcheck.pipeline import run
from qcheck.policy import load_policy
from qcheck.quantize import Recipe
from qcheck.search.space import Graph

LIMIT = 0.05


def _max_error(model, quantized, folder, output, cols=slice(1, None)):
    """Independent check: max |float - quantized| over output[:, cols] on the evaluation samples, with numpy."""
    f = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    worst = 0.0
    for p in sorted((folder / "eval").glob("*.npy")):
        x = np.load(p)
        a, b = f.run([output], {"x": x})[0], q.run([output], {"x": x})[0]
        worst = max(worst, float(np.abs(a[:, cols].astype(np.float64) - b[:, cols]).max()))
    return worst


# --------------------------------------------------------------------------- skip_first


def _skip_policy(folder, target="cpu", budget=4, remedies=("skip_first",), extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    outlier_first_mlp(folder / "model.onnx")
    write_npy_samples(folder / "calib", 8, shape=(1, 16))
    write_npy_samples(folder / "eval", 4, shape=(1, 16), seed=7)
    doc = {"model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"}, "target": target,
           "metrics": {"scores": {"output": "logits", "slice": "[:, 1:]", "metric": "max_abs"}},
           "require": [f"scores <= {LIMIT}"], "report": {"out": "out", "formats": ["html"]},
           "search": {"strategy": "greedy", "remedies": list(remedies),
                      "budget": {"max_float_nodes": budget, "max_int16_tensors": budget}, **(extra or {})}}
    return write_policy(folder / "qcheck.yaml", doc)


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("skip")
    return folder, run(load_policy(_skip_policy(folder)))


def test_skip_first_keeps_the_first_quantizable_node_in_float(skip_run):
    import onnx

    folder, r = skip_run
    s = r["search"]
    assert not s["candidates"][0]["passes"] and s["status"] == "found"
    # N = 1, 2, 4 within max_float_nodes 4 (the model has 4 quantizable nodes: head, m1, relu, m2)
    tried = sorted(int(c["changes"][0]["value"]) for c in s["candidates"] if c["n_changes"] == 1)
    assert tried == [1, 2, 4]
    chosen = s["candidates"][s["chosen"]]
    assert chosen["changes"] == [{"remedy": "skip_first", "subject": "(model)", "value": "1"}]
    assert chosen["label"] == "float first 1 node(s)"
    # `head` is first in topological order (qcheck.model.topological_order), and only it is excluded
    model = onnx.load(str(folder / "model.onnx"))
    order = topological_order(model)
    assert min(order, key=order.get) == "logits"  # head's output
    graph = Graph(model, {"x", "logits", "h", "r", "feat"})
    assert graph.first_quantizable(Recipe(), 3) == ["head", "m1", "relu"]
    assert graph.first_quantizable(Recipe(exclude_op_types=["Gemm"]), 1) == ["m1"]  # head is already float
    assert r["lock"]["recipe"]["exclude_nodes"] == ["head"]
    # it counts as one float node for cost and budget: cpu float_node 1.0 + one island 0.5
    assert chosen["float_nodes"] == 1 and chosen["cost"] == pytest.approx(1.5)
    assert _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "logits") <= LIMIT
    assert chosen["metrics"]["scores"] == pytest.approx(
        _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "logits"), rel=1e-5, abs=1e-7)


def test_skip_first_is_locked_and_applied_byte_for_byte(skip_run, tmp_path):
    folder, _ = skip_run
    out = tmp_path / "again.onnx"
    assert main(["apply", str(folder / "out" / "policy.lock.yaml"), "--out", str(out)]) == 0
    assert out.read_bytes() == (folder / "out" / "model.fixed.onnx").read_bytes()


def test_skip_first_respects_the_float_node_budget_and_integer_only_targets(tmp_path):
    r = run(load_policy(_skip_policy(tmp_path / "b", budget=0)))
    assert r["search"]["status"] == "failed" and r["search"]["trials"] == 1  # N = 1 is already over budget
    r = run(load_policy(_skip_policy(tmp_path / "npu", target="npu")))
    s = r["search"]
    assert s["status"] == "failed" and s["trials"] == 1
    assert any("skip_first is not available on target 'npu'" in n for n in s["notes"])
