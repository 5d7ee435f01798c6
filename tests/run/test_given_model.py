"""`quantized:`: a quantized model made elsewhere (here by ONNX Runtime's own quantize_static / quantize_dynamic),
checked against its float original with everything qcheck measures on its own models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import small_cnn, write_npy_samples, write_policy
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from qcheck.policy.loader import load_policy
from qcheck.run.pipeline import run

STATISTICS = ("scale", "zero_point", "range", "mean_error", "stddev", "max_abs_error", "mean_squared_error",
              "rmse_scale", "cosine", "sqnr", "clip_fraction", "max_overshoot", "float_min", "float_max",
              "whole_mean_error", "whole_max_abs_error", "whole_mean_squared_error", "whole_rmse_scale",
              "whole_cosine", "whole_sqnr", "skewness", "kurtosis", "channel_range_ratio")


class _Reader(CalibrationDataReader):
    def __init__(self, folder: Path):
        self.files = iter(sorted(folder.glob("*.npy"), key=lambda p: int(p.stem)))

    def get_next(self):
        f = next(self.files, None)
        return None if f is None else {"x": np.load(f)}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """small_cnn, its data, and the model pre-processed the way ORT's documentation says to before quantizing."""
    tmp = tmp_path_factory.mktemp("given")
    small_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 8)
    quant_pre_process(str(tmp / "model.onnx"), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
    return tmp


def _static(made: Path, name: str, **kw) -> Path:
    out = made / name
    options = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8,
                   "weight_type": QuantType.QInt8, "calibrate_method": CalibrationMethod.MinMax}
    options.update(kw)
    quantize_static(str(made / "pre.onnx"), str(out), _Reader(made / "calib"), **options)
    return out


def _run(made: Path, name: str, **doc) -> dict:
    policy = write_policy(made / f"{name}.yaml", {"model": "model.onnx", "data": {"calibration": "calib"},
                                                  "require": ["model.cosine >= 0.9"],
                                                  "report": {"out": f"out_{name}", "formats": ["html"]}, **doc})
    return run(load_policy(policy))


def _rows(results: dict) -> dict[str, dict]:
    return {r["name"]: r for r in results["tensors"]}


def test_qdq_model_from_quantize_static_measures_as_qchecks_own_run(made):
    """The same recipe (minmax, uint8 activations, int8 per-channel weights, QDQ) on the same calibration data gives
    the same scales; then every per-tensor statistic of the given model equals qcheck's own run's."""
    given_path = _static(made, "qdq.onnx")
    own = _run(made, "own", analyses=False)
    given = _run(made, "qdq", quantized="qdq.onnx", analyses=False)
    assert given["given"]["format"] == "qdq" and given["given"]["unmatched"] == []
    own_rows, given_rows = _rows(own), _rows(given)
    assert set(own_rows) == set(given_rows) and len(own_rows) == 12  # 6 activations, 3 weights, 3 biases
    for name, o in own_rows.items():
        g = given_rows[name]
        assert g["kind"] == o["kind"] and g["dtype"] == o["dtype"]
        for key in STATISTICS:
            if o[key] is None:
                assert g[key] is None, (name, key)
            else:
                assert g[key] == pytest.approx(o[key], rel=1e-5, abs=1e-9), (name, key)
    assert given["model_metrics"]["aggregate"]["cosine"] == pytest.approx(own["model_metrics"]["aggregate"]["cosine"])
    # per-layer statistics are there for the given model too (its QDQ pairs replay like qcheck's own)
    assert given_rows["r1"]["rmse_scale"] is not None
    # the output folder holds the model that was checked, byte for byte
    out = Path(given["output_folder"])
    assert (out / "model.quant.onnx").read_bytes() == onnx.load(str(given_path)).SerializeToString() or \
        onnx.load(str(out / "model.quant.onnx")).graph.node == onnx.load(str(given_path)).graph.node
    saved = json.loads((out / "results.json").read_text())
    assert saved["given"]["file"] == str(given_path) and saved["quantization"]["ranges_file"] is None


def test_analyses_run_on_the_given_models_own_scales(made):
    """The switchable emulation model is built from the given model's Q/DQ pairs (ORT folded its Relus into the
    grids; qcheck puts them back so a pair switched off is float again): every switch off is the float model and
    every switch on computes the given model, so the curve's output cosine is the real model's."""
    _static(made, "qdq_a.onnx")
    res = _run(made, "qdq_a", quantized="qdq_a.onnx", analyses={"confirm": True, "samples": 8})
    a = res["analyses"]
    assert a["switches"] == 12 and a["confirm"] is None
    assert a["batch"] == 8  # the given model's emulation runs its 8 samples in one batch, as qcheck's own
    assert any("confirmation" in n for n in a["notes"])
    assert {n["node"] for n in a["sensitivity"]["nodes"]} == {"conv1", "conv2", "gap", "flatten", "fc"}
    curve = next(c for c in a["curves"]["curves"] if c["label"] == "all quantized")
    assert curve["points"][-1]["tensor"] == "logits"
    assert curve["points"][-1]["cosine"] == pytest.approx(res["model_metrics"]["aggregate"]["cosine"], abs=1e-6)


def test_analyses_of_a_qoperator_model_run_on_its_qdq_form(made):
    """A QOperator model has no pairs to switch: its analyses run on the equivalent QDQ model (given_qoperator), which
    here computes exactly what ORT's integer kernels do, so they equal the QDQ model's from the same calibration."""
    _static(made, "qop_a.onnx", quant_format=QuantFormat.QOperator)
    qop = _run(made, "qop_a", quantized="qop_a.onnx", analyses={"samples": 8})
    qdq = _run(made, "qdq_a2", quantized=str(_static(made, "qdq_a2.onnx")), analyses={"samples": 8})
    a, b = qop["analyses"], qdq["analyses"]
    assert a["switches"] == b["switches"] == 12 and a["batch"] == 8
    assert [(n["node"], round(n["views"]["node"]["cosine"], 6)) for n in a["sensitivity"]["nodes"]] == \
        [(n["node"], round(n["views"]["node"]["cosine"], 6)) for n in b["sensitivity"]["nodes"]]
    curve = next(c for c in a["curves"]["curves"] if c["label"] == "all quantized")
    assert curve["points"][-1]["cosine"] == pytest.approx(qop["model_metrics"]["aggregate"]["cosine"], abs=1e-6)


def _dequantized(model: Path, outputs: list[str], sample: dict) -> dict[str, np.ndarray]:
    m = onnx.load(str(model))
    for name in outputs:
        m.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, sample)))


def _numpy_stats(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    f = np.concatenate([a.astype(np.float64).ravel() for a, _ in pairs])
    q = np.concatenate([b.astype(np.float64).ravel() for _, b in pairs])
    d = f - q
    return {"mse": float(np.mean(d * d)), "max_abs": float(np.max(np.abs(d))), "mean": float(np.mean(d)),
            "cosine": float(f @ q / np.sqrt((f @ f) * (q @ q)))}


def test_qoperator_model_statistics_agree_with_numpy(made):
    """QLinearConv/QGemm model: r1 (a Conv output with its Relu folded into the grid) is the float Relu's output
    against the integer tensor `c1_quantized` dequantized with the QLinearConv's own output scale."""
    path = _static(made, "qop.onnx", quant_format=QuantFormat.QOperator)
    res = _run(made, "qop", quantized="qop.onnx")
    assert res["given"]["format"] == "qoperator" and res["given"]["unmatched"] == []
    rows = _rows(res)
    qm = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
    conv2 = next(n for n in qm.graph.node if n.op_type == "QLinearConv" and n.input[3].startswith("w2"))
    int_name = conv2.input[0]  # the integer tensor QLinearConv 2 reads: conv1's output, Relu folded in
    scale, zp = float(inits[conv2.input[1]]), int(inits[conv2.input[2]])
    pairs = []
    for f in sorted((made / "calib").glob("*.npy"), key=lambda p: int(p.stem)):
        sample = {"x": np.load(f)}
        fl = _dequantized(made / "model.onnx", ["r1"], sample)["r1"]
        q = _dequantized(path, [int_name], sample)[int_name]
        pairs.append((fl, (q.astype(np.int32) - zp).astype(np.float32) * np.float32(scale)))  # DequantizeLinear
    ref = _numpy_stats(pairs)
    r1 = rows["r1"]
    assert r1["scale"] == pytest.approx(scale) and r1["zero_point"] == zp
    assert r1["whole_mean_squared_error"] == pytest.approx(ref["mse"], rel=1e-6)
    assert r1["whole_max_abs_error"] == pytest.approx(ref["max_abs"], rel=1e-6)
    assert r1["whole_mean_error"] == pytest.approx(ref["mean"], rel=1e-6, abs=1e-12)
    assert r1["whole_cosine"] == pytest.approx(ref["cosine"], rel=1e-9)
    # the weight: the float initializer against QLinearConv's int8 weight with its per-channel scales
    w = numpy_helper.to_array(next(i for i in onnx.load(str(made / "model.onnx")).graph.initializer if i.name == "w2"))
    wq = (inits[conv2.input[3]].astype(np.float64) - inits[conv2.input[5]].reshape(-1, 1, 1, 1)) \
        * inits[conv2.input[4]].reshape(-1, 1, 1, 1)
    assert rows["w2"]["mean_squared_error"] == pytest.approx(float(np.mean((w - wq) ** 2)), rel=1e-6)
    assert rows["b2"]["kind"] == "bias" and rows["w2"]["per_channel"] is True


def test_qoperator_per_layer_statistics_replay_each_integer_op_in_float(made):
    """Per layer: QLinearConv 2's float twin (Conv, and the Relu its output grid took in) fed its integer input
    dequantized with its own input scale, against its integer output dequantized with its output scale; computed
    here with ORT on a two-node float graph and numpy. Every activation's per-layer statistics are those of the
    QDQ model from the same calibration (ORT fuses its pairs into the same integer kernels)."""
    path = _static(made, "qop_l.onnx", quant_format=QuantFormat.QOperator)
    res = _run(made, "qop_l", quantized="qop_l.onnx", analyses=False)
    assert not any("per-layer statistics are not available" in n for n in res["measure"]["notes"])
    qm = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
    conv2 = next(n for n in qm.graph.node if n.op_type == "QLinearConv" and n.input[3].startswith("w2"))
    f_inits = [i for i in onnx.load(str(made / "model.onnx")).graph.initializer if i.name in ("w2", "b2")]
    twin = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["in", "w2", "b2"], ["c"], pads=[1, 1, 1, 1]),
         onnx.helper.make_node("Relu", ["c"], ["out"])], "twin",
        [onnx.helper.make_tensor_value_info("in", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], initializer=f_inits),
        opset_imports=[onnx.helper.make_opsetid("", 13)])
    twin_sess = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"])

    def deq(q: np.ndarray, s: str, z: str) -> np.ndarray:
        return (q.astype(np.int32) - inits[z].astype(np.int32)).astype(np.float32) * inits[s].astype(np.float32)

    err = []
    for f in sorted((made / "calib").glob("*.npy"), key=lambda p: int(p.stem)):
        q = _dequantized(path, [conv2.input[0], conv2.output[0]], {"x": np.load(f)})
        local = twin_sess.run(None, {"in": deq(q[conv2.input[0]], conv2.input[1], conv2.input[2])})[0]
        err.append((local.astype(np.float64) - deq(q[conv2.output[0]], conv2.input[6], conv2.input[7])).ravel())
    mse = float(np.mean(np.concatenate(err) ** 2))
    r2 = _rows(res)["r2"]
    assert r2["mean_squared_error"] == pytest.approx(mse, rel=1e-5)
    assert r2["rmse_scale"] == pytest.approx(np.sqrt(mse) / float(inits[conv2.input[6]]), rel=1e-5)
    _static(made, "qdq_l.onnx")
    qdq = _rows(_run(made, "qdq_l", quantized="qdq_l.onnx", analyses=False))
    rows = _rows(res)
    assert {n for n, r in rows.items() if r["kind"] == "activation"} == {n for n, r in qdq.items()
                                                                        if r["kind"] == "activation"}
    for name, row in rows.items():
        for key in ("mean_squared_error", "rmse_scale", "weight_error_share"):
            if row["kind"] == "activation" and qdq[name][key] is not None:
                assert row[key] == pytest.approx(qdq[name][key], rel=1e-5), (name, key)


def test_dynamic_model_statistics_agree_with_numpy(made):
    path = made / "dyn.onnx"
    quantize_dynamic(str(made / "pre.onnx"), str(path))
    res = _run(made, "dyn", quantized="dyn.onnx", data={"evaluation": "calib"})
    assert res["given"]["format"] == "dynamic" and res["quantization"]["scheme"] == "dynamic"
    rows = _rows(res)
    pairs = []
    for f in sorted((made / "calib").glob("*.npy"), key=lambda p: int(p.stem)):
        sample = {"x": np.load(f)}
        pairs.append((_dequantized(made / "model.onnx", ["c2"], sample)["c2"], _dequantized(path, ["c2"], sample)["c2"]))
    ref = _numpy_stats(pairs)
    assert rows["c2"]["whole_mean_squared_error"] == pytest.approx(ref["mse"], rel=1e-6)
    assert rows["c2"]["whole_max_abs_error"] == pytest.approx(ref["max_abs"], rel=1e-6)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    w = numpy_helper.to_array(next(i for i in onnx.load(str(made / "model.onnx")).graph.initializer if i.name == "w1"))
    wq = (inits["w1_quantized"].astype(np.float64) - inits["w1_zero_point"].astype(np.float64)) * inits["w1_scale"]
    assert rows["w1"]["mean_squared_error"] == pytest.approx(float(np.mean((w - wq) ** 2)), rel=1e-6)


def _edit_scale(src: Path, dst: Path, tensor: str, factor: float) -> float:
    """Multiply the scale of `tensor`'s QuantizeLinear/DequantizeLinear pair (what an unconverged QAT range looks
    like); returns the new scale."""
    m = onnx.load(str(src))
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    init = next(i for i in m.graph.initializer if i.name == q.input[1])
    value = numpy_helper.to_array(init) * np.float32(factor)
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
    onnx.save(m, str(dst))
    return float(value)


def test_an_unconverged_range_is_a_finding_naming_the_tensor(made):
    base = _static(made, "qdq_r.onnx", per_channel=False)
    scale = _edit_scale(base, made / "wide.onnx", "r1", 10.0)
    res = _run(made, "wide", quantized="wide.onnx", analyses=False)
    wide = [f for f in res["findings"] if f["code"] == "QC115"]
    assert [f["tensor"] for f in wide] == ["r1"]
    row = _rows(res)["r1"]
    assert row["scale"] == pytest.approx(scale)
    assert row["range_max"] - row["range_min"] == pytest.approx(255 * scale, rel=1e-6)
    assert row["range_over_data"] == pytest.approx(255 * scale / (row["float_max"] - row["float_min"]), rel=1e-9)
    assert row["range_over_data"] > 8  # the calibration data set the original range: ~10x after the edit
    # the unedited model has no such finding
    plain = _run(made, "plain", quantized="qdq_r.onnx", analyses=False)
    assert not [f for f in plain["findings"] if f["code"] in ("QC115", "QC116")]


def test_a_range_narrower_than_the_data_is_a_clipping_finding(made):
    base = _static(made, "qdq_n.onnx", per_channel=False)
    _edit_scale(base, made / "narrow.onnx", "r2", 0.25)
    res = _run(made, "narrow", quantized="narrow.onnx", analyses=False)
    narrow = {f["tensor"]: f for f in res["findings"] if f["code"] == "QC116"}
    assert "r2" in narrow
    row = _rows(res)["r2"]
    assert row["range_over_data"] < 0.5 and row["clip_fraction"] > 0


def _rename_everything(src: Path, dst: Path) -> None:
    """Every node, intermediate tensor and initializer renamed, as another exporter would name them: only the
    graph's inputs and outputs keep their names."""
    m = onnx.load(str(src))
    keep = {i.name for i in m.graph.input} | {o.name for o in m.graph.output}
    names: dict[str, str] = {}
    for init in m.graph.initializer:
        names[init.name] = f"param_{len(names)}"
        init.name = names[init.name]
    for k, node in enumerate(m.graph.node):
        node.name = f"/block{k}/op"
        for j, out in enumerate(node.output):
            if out not in keep:
                names[out] = f"/block{k}/out{j}"
                node.output[j] = names[out]
    for node in m.graph.node:
        for j, name in enumerate(node.input):
            node.input[j] = names.get(name, name)
    onnx.save(m, str(dst))


def test_tensors_are_matched_by_structure_when_names_differ(made):
    """The same QDQ model with every name changed: matched by graph structure, every statistic (per-layer ones
    included) and the node sensitivity equal those of the model whose names match."""
    _rename_everything(_static(made, "qdq_s.onnx"), made / "renamed.onnx")
    by_name = _run(made, "qdq_s", quantized="qdq_s.onnx", analyses={"curves": False, "confirm": False})
    by_structure = _run(made, "renamed", quantized="renamed.onnx", analyses={"curves": False, "confirm": False})
    assert by_structure["given"]["unmatched"] == [] and by_structure["given"]["matched"] == 12
    assert by_structure["given"]["matched_by"]["structure"] == 10  # all but the graph's input and output
    assert by_structure["tensors"] == by_name["tensors"]


def test_what_cannot_be_matched_is_listed_with_the_reason(made):
    """A node the float model does not have (an extra quantized Mul by 1 after conv1): its tensor is listed as not
    matched, in results.json and the report; the rest is measured."""
    m = onnx.load(str(_static(made, "qdq_u.onnx", per_channel=False)))
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "r1_QuantizeLinear_Output")
    reader = next(n for n in m.graph.node if dq.output[0] in n.input and n.op_type == "Conv")
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r1")
    m.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    extra = [onnx.helper.make_node("Mul", [dq.output[0], "one"], ["extra"], name="extra_mul"),
             onnx.helper.make_node("QuantizeLinear", ["extra", q.input[1], q.input[2]], ["extra_q"], name="extra_q"),
             onnx.helper.make_node("DequantizeLinear", ["extra_q", q.input[1], q.input[2]], ["extra_dq"],
                                   name="extra_dq")]
    reader.input[0] = "extra_dq"
    at = list(m.graph.node).index(reader)
    for k, node in enumerate(extra):
        m.graph.node.insert(at + k, node)
    onnx.save(m, str(made / "extra.onnx"))
    res = _run(made, "extra", quantized="extra.onnx", analyses=False)
    assert [u["tensor"] for u in res["given"]["unmatched"]] == ["extra"]
    assert res["given"]["unmatched"][0]["node"] == "extra_mul" and "no float tensor" in res["given"]["unmatched"][0]["reason"]
    assert "r2" in _rows(res) and "extra" not in _rows(res)
    html = (Path(res["output_folder"]) / "report.html").read_text()
    assert "not matched to the float model" in html and "extra_mul" in html


def test_a_16_bit_qdq_model_measures_as_qchecks_own_a16w8_run(made):
    """int16 activations, int8 per-channel weights: the given model is judged as scheme a16w8, and its statistics
    equal qcheck's own a16w8 run's (same minmax ranges, same recipe)."""
    _static(made, "a16.onnx", activation_type=QuantType.QInt16)
    own = _run(made, "own16", quantization={"scheme": "a16w8"}, analyses=False)
    given = _run(made, "a16", quantized="a16.onnx", analyses=False)
    assert given["quantization"]["scheme"] == "a16w8"
    own_rows, given_rows = _rows(own), _rows(given)
    assert set(own_rows) == set(given_rows)
    assert {r["dtype"] for r in given_rows.values() if r["kind"] == "activation"} == {"int16"}
    for name, o in own_rows.items():
        for key in ("scale", "zero_point", "whole_mean_squared_error", "whole_max_abs_error", "rmse_scale"):
            assert given_rows[name][key] == pytest.approx(o[key], rel=1e-5, abs=1e-12), (name, key)


def test_qoperator_concat_and_matmul_heads_are_matched_like_their_qdq_twin(tmp_path):
    """two_head_concat in both formats from the same calibration: QLinearConcat, QLinearMatMul (four MatMuls
    reading one input, told apart by their weights), QLinearSigmoid, QLinearMul and an int8 Reshape are read;
    both formats name the same float tensors with the same scales, nothing unmatched."""
    from helpers import two_head_concat

    two_head_concat(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 6, shape=(1, 4))
    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(tmp_path / "model.onnx"), str(pre), skip_symbolic_shape=True)
    results = {}
    for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
        quantize_static(str(pre), str(tmp_path / f"{fmt}.onnx"), _Reader(tmp_path / "calib"), quant_format=fmt)
        results[fmt] = _run(tmp_path, str(fmt).split(".")[-1], quantized=f"{fmt}.onnx", analyses=False)
    qdq, qop = results[QuantFormat.QDQ], results[QuantFormat.QOperator]
    assert qop["given"]["format"] == "qoperator" and qop["given"]["unmatched"] == [] and qdq["given"]["unmatched"] == []
    ops = {n.op_type for n in onnx.load(str(tmp_path / f"{QuantFormat.QOperator}.onnx")).graph.node}
    assert {"QLinearConcat", "QLinearMatMul", "QLinearSigmoid"} <= ops
    a, b = _rows(qdq), _rows(qop)
    assert set(a) == set(b) and {"cat", "cat1", "cat2", "out", "w_s1", "w_b2"} <= set(a)
    # the Mul's constant k (300): ORT gives it a uint8 grid [0, 300] in QDQ and a symmetric int8 one [-300, 300]
    # as QLinearMul's B, so its grid differs between the formats; every other tensor's is the same
    assert b["k"]["range"] == pytest.approx(2 * a["k"]["range"], rel=1e-5)
    for name in set(a) - {"k"}:
        assert b[name]["scale"] == pytest.approx(a[name]["scale"], rel=1e-6), name


def _as_constant_nodes(src: Path, dst: Path) -> None:
    """Every initializer written as a Constant node instead (how PyTorch and Paddle exports keep weights and
    scales): ORT's QDQ quantizer then quantizes those weights at run time, QuantizeLinear(constant)."""
    m = onnx.load(str(src))
    constants = [onnx.helper.make_node("Constant", [], [i.name], name=f"const_{i.name}", value=i)
                 for i in m.graph.initializer]
    del m.graph.initializer[:]
    nodes = constants + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, str(dst))


def test_constant_node_weights_and_scales_read_like_initializers(made):
    """A float model whose weights are Constant nodes, quantized by ORT: its weights come as
    QuantizeLinear(Constant) -> DequantizeLinear and its scales as initializers; with the scales also turned into
    Constant nodes, qcheck reads the same tensors and activation grids as in the initializer version, and measures
    the weights with the scales this model has."""
    _as_constant_nodes(made / "pre.onnx", made / "const_float.onnx")
    quantize_static(str(made / "const_float.onnx"), str(made / "const_q.onnx"), _Reader(made / "calib"),
                    quant_format=QuantFormat.QDQ, per_channel=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    _as_constant_nodes(made / "const_q.onnx", made / "const_q_nodes.onnx")
    ops = [n.op_type for n in onnx.load(str(made / "const_q_nodes.onnx")).graph.node]
    assert ops.count("QuantizeLinear") > 6 and "Constant" in ops  # weights quantized at run time
    _static(made, "plain_q.onnx", per_channel=False)
    plain = _run(made, "plain_q", quantized="plain_q.onnx", analyses=False)
    const = _run(made, "const_q", quantized="const_q_nodes.onnx", analyses=False)
    assert const["given"]["unmatched"] == []
    a, b = _rows(plain), _rows(const)
    # ORT quantizes a bias only when it is an initializer ("Expected bias ... to be an initializer"): here they
    # stay float, so they are not quantized tensors of this model
    assert set(a) - set(b) == {"b1", "b2", "bf"} and {"w1", "w2", "wf"} <= set(b)
    for name in (n for n in b if b[n]["kind"] == "activation"):  # same calibration: same activation grids
        for key in ("scale", "zero_point"):
            assert b[name][key] == pytest.approx(a[name][key], rel=1e-5, abs=1e-12), (name, key)
    # weights: ORT chose other scales for run-time quantized weights; qcheck's error is that of those scales
    q = onnx.load(str(made / "const_q_nodes.onnx"))
    values = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in q.graph.node if n.op_type == "Constant"}
    for name in ("w1", "w2", "wf"):
        node = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name)
        w, scale, zp = values[name], values[node.input[1]], values[node.input[2]]
        info = np.iinfo(zp.dtype)  # ORT gives run-time weights the activations' type here
        deq = (np.clip(np.rint(w / scale) + zp.astype(np.int64), info.min, info.max) - zp).astype(np.float32) * scale
        assert b[name]["scale"] == pytest.approx(float(scale))
        assert b[name]["mean_squared_error"] == pytest.approx(float(np.mean((w - deq) ** 2)), rel=1e-6)
