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
from onnxruntime.quantization import QuantFormat, quantize_static
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
    """explicit_range (greedy) from minmax on the calibration data: ORT made the unedited model with minmax on the same
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


def test_auto_tries_explicit_range_per_unit(made):
    """auto with explicit_range alone (ranges from minmax on the calibration data ORT made the model from): it tries
    it on the ranked units, finds r1 re-ranged, and gives r1 back the scale the edit multiplied by 30."""
    res = _run(made, "auto_ranged", {"remedies": ["explicit_range"], "explicit_range_from": "minmax"})
    assert res["search"]["strategy"] == "auto" and res["search"]["status"] == "found"
    chosen = res["search"]["candidates"][res["search"]["chosen"]]
    assert [c["remedy"] for c in chosen["changes"]] == ["explicit_range"]
    assert set(res["lock"]["recipe"]["overrides"]) == {"r1"}
    fixed = onnx.load(str(Path(res["output_folder"]) / "model.fixed.onnx"))
    assert _pair(fixed, "r1")[0] == pytest.approx(_pair(onnx.load(str(made / "qdq.onnx")), "r1")[0], rel=1e-5)


def test_a_calibration_switch_on_a_given_model_costs_a_range_edit_per_tensor(made):
    """Re-calibrating a given model moves every activation's grid (6 here): 6 x GIVEN_RANGE_EDIT_COST = 0.6 on target
    cpu, where ranges are otherwise free; int16 on r1 alone costs 0.5. Both pass; the smaller edit is chosen (with a
    calibration switch at cost 0 the switch won)."""
    from qcheck.policy.targets import GIVEN_RANGE_EDIT_COST

    res = _run(made, "recal", {"strategy": "greedy", "remedies": ["calibration_method", "int16_activations"]})
    cands = res["search"]["candidates"]
    switch = [c for c in cands if [x["remedy"] for x in c["changes"]] == ["calibration_method"] and c["passes"]]
    assert switch and switch[0]["cost"] == pytest.approx(6 * GIVEN_RANGE_EDIT_COST)
    chosen = cands[res["search"]["chosen"]]
    assert [c["remedy"] for c in chosen["changes"]] == ["int16_activations"] and chosen["cost"] == pytest.approx(0.5)
    assert res["lock"]["recipe"]["overrides"] == {"r1": {"quant_type": "int16"}}


def _div_model(path: Path) -> None:
    """x -> Conv -> Mul(k) -> Div(d) -> Conv -> y: ORT quantizes the Mul's output and not the Div, which then reads
    the dequantized Mul output (as PP-OCR's hard-swish Divs do)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    arrays = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "k": np.array(1.5), "d": np.array(6.0),
              "w2": rng.standard_normal((4, 8, 3, 3)) * 0.2}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c1", "k"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "d"], ["v"], name="div"),
             helper.make_node("Conv", ["v", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "div", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
                              initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_auto_keeps_a_node_float_that_only_reads_dequantized_values(made, tmp_path):
    """The Mul's grid x0.1 clips m. Keeping the Mul float is not enough: the Div (an op ORT does not quantize) still
    reads m through its pair, and int16 over the same clipped range clips too. auto makes the Div float with the Mul
    (the Div is editable on a given model whatever its op type), which reads m unclipped; the fix passes."""
    from test_given_model import _Reader

    _div_model(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 8)
    quantize_static(str(tmp_path / "model.onnx"), str(tmp_path / "qdq.onnx"), _Reader(tmp_path / "calib"),
                    quant_format=QuantFormat.QDQ, per_channel=False)
    given = onnx.load(str(tmp_path / "qdq.onnx"))
    assert any(n.op_type == "Div" and n.input[0] != "m" for n in given.graph.node)  # it reads DequantizeLinear(m)
    _edit_scale(tmp_path / "qdq.onnx", tmp_path / "narrow.onnx", "m", 0.1)
    policy = write_policy(tmp_path / "p.yaml", {
        "model": "model.onnx", "quantized": "narrow.onnx", "data": {"calibration": "calib"},
        "require": ["model.cosine >= 0.999"], "analyses": False, "search": {},
        "report": {"out": "out", "formats": ["html"]}})
    res = run(load_policy(policy))
    assert res["search"]["baseline_verdict"]["status"] == "fail"
    assert res["search"]["status"] == "found" and res["verdict"]["status"] == "pass"
    lock = yaml.safe_load((Path(res["output_folder"]) / "policy.lock.yaml").read_text())
    added = set(lock["recipe"]["exclude_nodes"]) - set(lock["given"]["base_recipe"]["exclude_nodes"])
    assert "div" in added
    fixed = onnx.load(str(Path(res["output_folder"]) / "model.fixed.onnx"))
    assert next(n for n in fixed.graph.node if n.op_type == "Div").input[0] == "m"


def test_auto_gives_a_clipping_range_the_wider_calibrated_one(made, tmp_path):
    """r1's grid x0.1 clips it (what a QAT range estimate that stopped too early looks like). explicit_range on a given
    model takes the range explicit_range_from calibrates even where it is wider than the model's own: auto finds r1,
    and minmax on the data ORT calibrated the model with gives r1 back its original scale."""
    _edit_scale(made / "qdq.onnx", made / "narrow_r1.onnx", "r1", 0.1)
    res = _run(made, "widened_by_range", {"remedies": ["explicit_range"], "explicit_range_from": "minmax"},
               quantized="narrow_r1.onnx")
    assert res["search"]["status"] == "found" and res["verdict"]["status"] == "pass"
    assert set(res["lock"]["recipe"]["overrides"]) == {"r1"}
    fixed = onnx.load(str(Path(res["output_folder"]) / "model.fixed.onnx"))
    assert _pair(fixed, "r1")[0] == pytest.approx(_pair(onnx.load(str(made / "qdq.onnx")), "r1")[0], rel=1e-5)
