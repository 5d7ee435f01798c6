"""The search on a quantized model made elsewhere (`quantized:` with `search:`): its candidates are edits to that
model (quantize/given_edit.py), the fix is written as the run's model and locked so `qcheck apply` rebuilds it."""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from helpers import small_cnn, write_npy_samples, write_policy
from onnx import numpy_helper
from onnxruntime.quantization.shape_inference import quant_pre_process
from test_given_model import _edit_scale, _static

from qcheck.errors import QcheckError
from qcheck.policy.loader import load_policy
from qcheck.quantize.lock import apply_lock
from qcheck.results.next_step import next_step
from qcheck.run.pipeline import run

REQUIRE = "model.cosine >= 0.9999"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """small_cnn quantized by ORT (QDQ, per-tensor), and the same model with r1's scale x30: what a QAT export
    whose range estimate never converged looks like."""
    tmp = tmp_path_factory.mktemp("given_search")
    small_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 8)
    quant_pre_process(str(tmp / "model.onnx"), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
    _edit_scale(_static(tmp, "qdq.onnx", per_channel=False), tmp / "wide.onnx", "r1", 30.0)
    return tmp


def _run(made: Path, name: str, search: dict, **doc) -> dict:
    policy = write_policy(made / f"{name}.yaml", {
        "model": "model.onnx", "quantized": "wide.onnx", "data": {"calibration": "calib"}, "require": [REQUIRE],
        "analyses": False, "search": search, "report": {"out": f"out_{name}", "formats": ["html"]}, **doc})
    return run(load_policy(policy))


def _pair(model: onnx.ModelProto, tensor: str) -> tuple[float, np.ndarray]:
    """(scale, zero point) of the QuantizeLinear that reads `tensor`."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(inits[q.input[1]]), inits[q.input[2]]


def _cosine(made: Path, model: Path) -> float:
    """Output cosine over all samples, float model against `model`, computed here with ORT and numpy."""
    f_sess = ort.InferenceSession(str(made / "model.onnx"), providers=["CPUExecutionProvider"])
    q_sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    f, q = [], []
    for path in sorted((made / "calib").glob("*.npy"), key=lambda p: int(p.stem)):
        x = {"x": np.load(path)}
        f.append(f_sess.run(None, x)[0].ravel())
        q.append(q_sess.run(None, x)[0].ravel())
    a, b = np.concatenate(f).astype(np.float64), np.concatenate(q).astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_the_search_fixes_the_unconverged_range_it_names(made):
    """The range finding names r1; the search's cheapest passing edit touches r1, passes the requirement, is the
    run's model, and `qcheck apply` rebuilds it byte for byte from the given model and the lock."""
    res = _run(made, "default", {})
    assert [f["tensor"] for f in res["findings"] if f["code"] == "QC115"] == ["r1"]
    s = res["search"]
    assert s["status"] == "found" and s["baseline_verdict"]["status"] == "fail"
    chosen = s["candidates"][s["chosen"]]
    assert chosen["passes"] and any(c["subject"].endswith(":r1") or c["subject"] == "r1" for c in chosen["changes"])
    assert res["verdict"]["status"] == "pass"
    out = Path(res["output_folder"])
    fixed = out / "model.fixed.onnx"
    assert res["lock"]["quantized_model"] == "model.fixed.onnx"
    # independently of qcheck's measurement: the given model misses the line, the fix meets it
    assert _cosine(made, made / "wide.onnx") < 0.9999 <= _cosine(made, fixed)
    # the default remedies' cheapest fix on target cpu: r1 on a 16-bit grid over the exported (too wide) range
    assert res["lock"]["recipe"]["overrides"] == {"r1": {"quant_type": "int16"}}
    scale8, zp8 = _pair(onnx.load(str(made / "wide.onnx")), "r1")
    scale16, zp16 = _pair(onnx.load(str(fixed)), "r1")
    assert zp16.dtype == np.int16
    lo8, hi8 = scale8 * (-128 - int(zp8)), scale8 * (127 - int(zp8))
    assert scale16 * (32767 - int(zp16)) - scale16 * (-32768 - int(zp16)) == pytest.approx(hi8 - lo8, rel=1e-4)
    # every other pair is the given model's own
    for t in ("r2", "gap", "flat"):
        assert _pair(onnx.load(str(fixed)), t)[0] == _pair(onnx.load(str(made / "wide.onnx")), t)[0]
    assert next_step(res)["action"].startswith("Use the edit to the given model the search found: int16 group:r1")
    applied = apply_lock(out / "policy.lock.yaml", out=made / "applied.onnx")
    assert applied["identical"], applied
    # the lock holds the given model's hash: another given model is refused, naming it
    lock = (out / "policy.lock.yaml").read_text()
    sha = sha256((made / "wide.onnx").read_bytes()).hexdigest()
    assert sha in lock
    (out / "other.lock.yaml").write_text(lock.replace(sha, "f" * 64))
    with pytest.raises(QcheckError) as err:
        apply_lock(out / "other.lock.yaml", out=made / "applied2.onnx")
    assert f"the quantized model changed since the lock was written: {made / 'wide.onnx'}" in str(err.value)


def test_a_new_range_from_the_calibration_data_restores_the_exported_one(made):
    """explicit_range (greedy: auto does not try it per unit) from minmax on the calibration data: ORT made the unedited model with minmax on the same
    data, so the re-ranged r1 gets back the scale the edit multiplied by 30."""
    res = _run(made, "ranged", {"strategy": "greedy", "remedies": ["explicit_range"],
                                    "explicit_range_from": "minmax"})
    assert res["search"]["status"] == "found" and res["verdict"]["status"] == "pass"
    assert set(res["lock"]["recipe"]["overrides"]) == {"r1"}
    fixed = onnx.load(str(Path(res["output_folder"]) / "model.fixed.onnx"))
    original = _pair(onnx.load(str(made / "qdq.onnx")), "r1")
    assert _pair(fixed, "r1")[0] == pytest.approx(original[0], rel=1e-5)
    assert int(_pair(fixed, "r1")[1]) == int(original[1])


def test_keeping_a_node_float_reads_the_float_tensors_and_weights(made):
    """keep_float only: conv2 kept float reads r1 before its Q/DQ pair and the float model's w2 and b2."""
    res = _run(made, "floated", {"remedies": ["keep_float"]})
    assert res["search"]["status"] == "found"
    fixed = onnx.load(str(Path(res["output_folder"]) / "model.fixed.onnx"))
    # the cheapest passing set: r1's group; of its nodes only its reader conv2 runs quantized in the given model (its
    # producer, relu1, ORT folded into conv1's grid), so that is the one edit
    lock = yaml.safe_load((Path(res["output_folder"]) / "policy.lock.yaml").read_text())
    assert "relu1" in lock["given"]["base_recipe"]["exclude_nodes"]
    assert set(lock["recipe"]["exclude_nodes"]) - set(lock["given"]["base_recipe"]["exclude_nodes"]) == {"conv2"}
    conv2 = next(n for n in fixed.graph.node if n.name == "conv2")
    inits = {i.name: numpy_helper.to_array(i) for i in fixed.graph.initializer}
    float_inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(made / "model.onnx")).graph.initializer}
    assert conv2.input[0] == "r1" and np.array_equal(inits[conv2.input[1]], float_inits["w2"])
    assert np.array_equal(inits[conv2.input[2]], float_inits["b2"])
    assert not [n for n in fixed.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r1"]  # nothing reads it
    # the Relu computes again (it was folded into the pair that went)
    assert [n.op_type for n in fixed.graph.node if "r1" in n.output] == ["Relu"]
    assert _cosine(made, Path(res["output_folder"]) / "model.fixed.onnx") >= 0.9999


def test_search_on_a_dynamic_model_is_refused(made, tmp_path):
    """A dynamically quantized model has no fixed grids and no pairs to edit: the search is refused, saying why."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(made / "pre.onnx"), str(made / "dyn_s.onnx"))
    policy = write_policy(made / "dyn_s.yaml", {
        "model": "model.onnx", "quantized": "dyn_s.onnx", "data": {"calibration": "calib"}, "require": [REQUIRE],
        "analyses": False, "search": {}, "report": {"out": str(tmp_path / "out"), "formats": ["html"]}})
    with pytest.raises(QcheckError) as err:
        run(load_policy(policy))
    text = str(err.value)
    assert "this quantized model is dynamic" in text and "remove `search:`" in text
