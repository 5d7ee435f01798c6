"""A given QOperator model (QLinearConv, QLinearAdd, ... carrying their scales) as its equivalent QDQ model
(quantize/given_qoperator.py): the same numbers as ORT's integer kernels, and the search's edits run on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import write_policy
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from test_given_model import _static
from test_given_search import REQUIRE, _cosine
from test_given_search import made as made  # noqa: F401  (the fixture: small_cnn, its data, ORT's QDQ model)

from qcheck.errors import ModelError
from qcheck.policy.loader import load_policy
from qcheck.quantize.given import read_given
from qcheck.quantize.given_edit import normalize_given
from qcheck.quantize.given_qoperator import qoperator_to_qdq
from qcheck.quantize.lock import apply_lock
from qcheck.run.pipeline import run

INTEGER_OPS = {"QLinearConv", "QLinearLeakyRelu", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearConcat",
               "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearMatMul"}


def _mixed_model(path: Path) -> onnx.ModelProto:
    """Conv -> LeakyRelu -> Conv -> Add(skip) -> Mul -> Sigmoid -> Concat -> MaxPool -> AveragePool ->
    GlobalAveragePool -> Flatten -> MatMul: one of each op ORT's QOperator format writes an integer op for."""
    rng = np.random.default_rng(0)
    arrays = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
              "w2": rng.standard_normal((8, 8, 3, 3)) * 0.2, "b2": rng.standard_normal(8) * 0.1,
              "wm": rng.standard_normal((16, 5)) * 0.5}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["c1"], ["l1"], name="lrelu", alpha=0.1),
             helper.make_node("Conv", ["l1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "l1"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "l1"], ["m"], name="mul"),
             helper.make_node("Sigmoid", ["m"], ["s"], name="sig"),
             helper.make_node("Concat", ["s", "a"], ["cat"], name="cat", axis=1),
             helper.make_node("MaxPool", ["cat"], ["mp"], name="mp", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["mp"], ["ap"], name="ap", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["ap"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "wm"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return model


class _Samples(CalibrationDataReader):
    def __init__(self, xs: list[np.ndarray]):
        self.it = iter(xs)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {"x": x}


def _with_outputs(model: onnx.ModelProto, names: list[str], options: ort.SessionOptions | None = None):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_the_qdq_form_computes_what_the_integer_ops_compute(tmp_path):
    """ORT runs the QOperator model with its integer kernels and the converted model with every optimization off (so
    its float ops run in float between the pairs, not fused back into integer kernels). Every integer tensor, the
    output's included, agrees within one step of its grid: both compute the same real value and round it once to the
    same grid; the integer kernels accumulate exactly in int32 and requantize with a float multiplier, the float ops
    accumulate in float32, so the two can round to neighbouring integers only where the value sits within float32
    noise of a half step or exactly on one (ties broken differently); here not once in 64 samples, and a one-step
    difference would grow downstream, so the bound holds on this small net and not in general (README: PP-OCR).
    A wrong scale, zero point, axis or bias scale in the conversion moves values by many steps."""
    float_model = _mixed_model(tmp_path / "mixed.onnx")
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(16)]
    quantize_static(str(tmp_path / "mixed.onnx"), str(tmp_path / "qop.onnx"), _Samples(xs),
                    quant_format=QuantFormat.QOperator, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    qop = normalize_given(onnx.load(str(tmp_path / "qop.onnx")), {})
    assert {n.op_type for n in qop.graph.node} >= INTEGER_OPS
    qdq = qoperator_to_qdq(qop, float_model)
    onnx.checker.check_model(qdq)
    assert not {n.op_type for n in qdq.graph.node} & INTEGER_OPS
    assert [n.name for n in qdq.graph.node if n.op_type == "Conv"] == ["conv1", "conv2"]  # the float model's names
    assert qoperator_to_qdq(qop, float_model).SerializeToString() == qdq.SerializeToString()  # apply rebuilds it
    integer = [n.output[0] for n in qop.graph.node if n.op_type != "DequantizeLinear"]
    off = ort.SessionOptions()
    off.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    a, b = _with_outputs(qop, integer), _with_outputs(qdq, integer, off)
    y_scale = float(numpy_helper.to_array(next(i for i in qop.graph.initializer if i.name == "y_scale")))
    for x in [(rng.standard_normal((1, 3, 8, 8)) * 1.5).astype(np.float32) for _ in range(64)]:
        for name, va, vb in zip(integer, a.run(integer, {"x": x}), b.run(integer, {"x": x})):
            assert va.dtype == vb.dtype and np.abs(va.astype(np.int32) - vb.astype(np.int32)).max() <= 1, name
        ya, yb = a.run(["y"], {"x": x})[0], b.run(["y"], {"x": x})[0]
        assert np.abs(ya - yb).max() <= y_scale * 1.0001


def test_the_search_on_a_qoperator_model_fixes_an_edited_scale(made):  # noqa: F811
    """ORT's QOperator model of small_cnn with r1's grid (QLinearConv 1's output scale, which QLinearConv 2 reads)
    x30, and conv2's int32 bias divided by 30 (its scale is QLinearConv 2's input scale times the weight's, so a
    consistent export re-quantizes it): the range finding names r1, the search's cheapest fix (r1 on a 16-bit grid,
    an edit of the QDQ form) passes, and `qcheck apply` rebuilds it byte for byte from the QOperator file."""
    path = _static(made, "qop_w.onnx", quant_format=QuantFormat.QOperator, per_channel=False)
    m = onnx.load(str(path))
    conv1 = next(n for n in m.graph.node if n.op_type == "QLinearConv" and n.input[3].startswith("w1"))
    init = next(i for i in m.graph.initializer if i.name == conv1.input[6])
    init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * np.float32(30)).astype(np.float32), init.name))
    conv2 = next(n for n in m.graph.node if n.op_type == "QLinearConv" and n.input[3].startswith("w2"))
    bias = next(i for i in m.graph.initializer if i.name == conv2.input[8])
    bias.CopyFrom(numpy_helper.from_array(np.rint(numpy_helper.to_array(bias) / 30).astype(np.int32), bias.name))
    onnx.save(m, str(made / "qop_wide.onnx"))
    policy = write_policy(made / "qop_wide.yaml", {
        "model": "model.onnx", "quantized": "qop_wide.onnx", "data": {"calibration": "calib"}, "require": [REQUIRE],
        "analyses": False, "search": {}, "report": {"out": "out_qop_wide", "formats": ["html"]}})
    res = run(load_policy(policy))
    assert res["given"]["format"] == "qoperator"
    assert [f["tensor"] for f in res["findings"] if f["code"] == "QC115"] == ["r1"]
    s = res["search"]
    assert s["status"] == "found" and s["baseline_verdict"]["status"] == "fail" and res["verdict"]["status"] == "pass"
    assert res["lock"]["recipe"]["overrides"] == {"r1": {"quant_type": "int16"}}
    out = Path(res["output_folder"])
    assert _cosine(made, made / "qop_wide.onnx") < 0.9999 <= _cosine(made, out / "model.fixed.onnx")
    applied = apply_lock(out / "policy.lock.yaml", out=made / "qop_applied.onnx")
    assert applied["identical"], applied


def test_a_channels_last_op_leaves_a_qoperator_model_whole_model_only(made):  # noqa: F811
    """An integer op computing channels-last has no float op between Q/DQ pairs: the model is read for whole-model
    statistics, with a note naming the node, and nothing to edit (the search is refused with that note)."""
    path = _static(made, "qop_cl.onnx", quant_format=QuantFormat.QOperator)
    m = normalize_given(onnx.load(str(path)), {})
    gap = next(n for n in m.graph.node if n.op_type == "QLinearGlobalAveragePool")
    gap.attribute.append(helper.make_attribute("channels_last", 1))
    with pytest.raises(ModelError, match=f"node {gap.name} .*channels-last"):
        qoperator_to_qdq(m, onnx.load(str(made / "model.onnx")))
    given = read_given(m, onnx.load(str(made / "model.onnx")))
    assert given.format == "qoperator" and given.editable is None and given.qmap.tensors
    assert f"node {gap.name}" in given.notes[0] and "whole-model only" in given.notes[0]


def test_an_integer_output_that_float_ops_also_read_is_replayed_per_layer(tmp_path):
    """Conv -> c read by a QLinearConv and by an Exp ORT leaves float: the QOperator model gives the Exp c through a
    DequantizeLinear that writes the name c. The QDQ form's Conv writes c itself (that DequantizeLinear renamed), so
    conv1's per-layer twin is found and c has per-layer statistics, as in the QDQ model from the same calibration."""
    rng = np.random.default_rng(2)
    arrays = {"w1": rng.standard_normal((4, 3, 3, 3)) * 0.3, "w2": rng.standard_normal((4, 4, 3, 3)) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Exp", ["c"], ["e"], name="exp"),
             helper.make_node("Conv", ["c", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [vi("e"), vi("y")],
                              initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "model.onnx"))
    xs = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(8)]
    (tmp_path / "calib").mkdir()
    for i, x in enumerate(xs):
        np.save(tmp_path / "calib" / f"{i}.npy", x)
    rows = {}
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        quantize_static(str(tmp_path / "model.onnx"), str(tmp_path / f"{fmt}.onnx"), _Samples(xs), quant_format=fmt,
                        per_channel=False)
        policy = write_policy(tmp_path / f"{fmt}.yaml", {
            "model": "model.onnx", "quantized": f"{fmt}.onnx", "data": {"calibration": "calib"},
            "require": ["model.cosine >= 0.9"], "analyses": False, "report": {"out": f"out{fmt}", "formats": ["html"]}})
        rows[fmt] = {r["name"]: r for r in run(load_policy(policy))["tensors"]}
    qop = onnx.load(str(tmp_path / f"{QuantFormat.QOperator}.onnx"))
    assert any(n.op_type == "DequantizeLinear" and n.output[0] == "c" for n in qop.graph.node)
    assert rows[QuantFormat.QOperator]["c"]["rmse_scale"] is not None
    assert rows[QuantFormat.QOperator]["c"]["rmse_scale"] == pytest.approx(rows[QuantFormat.QDQ]["c"]["rmse_scale"],
                                                                            rel=1e-5)
