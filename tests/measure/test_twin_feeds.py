"""The per-layer twin when a model reads one tensor both as it is and through its Q/DQ pair."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from qcheck.measure.twin import build_twin
from qcheck.quantize.qdq import read_qdq


def _models() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Float: x -> Relu -> r; r -> Conv -> c; r -> GlobalAveragePool -> g. Quantized: the Conv reads r through its
    pair, the GlobalAveragePool reads the float r (what ORT's QOperator format does when the Relu is not folded)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((2, 3, 1, 1)) * 0.5).astype(np.float32)
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    f_nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
               helper.make_node("Conv", ["r", "w"], ["c"], name="conv"),
               helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap")]
    f = helper.make_model(helper.make_graph(f_nodes, "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                          [1, 3, 4, 4])],
                                            [vi("c"), vi("g")], initializer=[numpy_helper.from_array(w, "w")]),
                          opset_imports=[helper.make_opsetid("", 13)])
    s = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    z = lambda name: numpy_helper.from_array(np.array(0, np.uint8), name)  # noqa: E731
    wq = np.clip(np.rint(w / 0.01), -127, 127).astype(np.int8)
    q_nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
               helper.make_node("QuantizeLinear", ["r", "rs", "rz"], ["rq"], name="r_q"),
               helper.make_node("DequantizeLinear", ["rq", "rs", "rz"], ["rd"], name="r_dq"),
               helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="w_dq"),
               helper.make_node("Conv", ["rd", "wd"], ["c_QuantizeLinear_Input"], name="conv"),
               helper.make_node("QuantizeLinear", ["c_QuantizeLinear_Input", "cs", "cz"], ["cq"], name="c_q"),
               helper.make_node("DequantizeLinear", ["cq", "cs", "cz"], ["c"], name="c_dq"),
               helper.make_node("GlobalAveragePool", ["r"], ["g_QuantizeLinear_Input"], name="gap"),
               helper.make_node("QuantizeLinear", ["g_QuantizeLinear_Input", "gs", "gz"], ["gq"], name="g_q"),
               helper.make_node("DequantizeLinear", ["gq", "gs", "gz"], ["g"], name="g_dq")]
    inits = [s("rs", 0.02), z("rz"), numpy_helper.from_array(wq, "wq"), s("ws", 0.01),
             numpy_helper.from_array(np.array(0, np.int8), "wz"), s("cs", 0.03), z("cz"), s("gs", 0.01), z("gz")]
    q = helper.make_model(helper.make_graph(q_nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                          [1, 3, 4, 4])],
                                            [vi("c"), vi("g")], initializer=inits),
                          opset_imports=[helper.make_opsetid("", 13)])
    return onnx.shape_inference.infer_shapes(f), q  # the load stage infers the float model's types


def test_a_tensor_read_as_it_is_and_through_its_pair_gets_two_twin_inputs():
    """The GlobalAveragePool's twin is fed the float r, the Conv's twin r's integers dequantized: two names (they
    were one, and ONNX Runtime refused the twin as a duplicate definition), each with its own values."""
    f, q = _models()
    qmap = read_qdq(q, f)
    twin = build_twin(q, f, qmap)
    assert set(twin.outputs) == {"r", "c", "g"}
    sess = ort.InferenceSession(twin.model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    r = np.maximum(x, 0)
    rq = np.clip(np.rint(r / np.float32(0.02)), 0, 255).astype(np.uint8)
    values = {"x": x, "r": r, "rq": rq}
    feeds = {name: values[src] for name, src in twin.inputs.items()}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    w = numpy_helper.to_array(f.graph.initializer[0])
    expect_c = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], rq.astype(np.float32) * np.float32(0.02))
    np.testing.assert_allclose(got[twin.outputs["c"]], expect_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[twin.outputs["g"]], r.mean(axis=(2, 3), keepdims=True), rtol=1e-6)
