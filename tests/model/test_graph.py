"""The graph index (model/graph.py) on residual_cnn: a skip connection, a constant read twice, an early output."""

import onnx
from helpers import residual_cnn
from onnx import TensorProto

from qcheck.model.graph import GraphIndex, topological_order


def test_producers_readers_initializers_and_order(tmp_path):
    model = onnx.load(str(residual_cnn(tmp_path / "m.onnx")))
    g = GraphIndex(model)
    assert g.producer["r1"].name == "relu1" and "x" not in g.producer and "w1" not in g.producer
    # r1 feeds the early output, the next conv and the skip connection, in graph order
    assert [n.name for n in g.readers("r1")] == ["gap", "conv2", "skip"]
    assert [n.name for n in g.readers("c")] == ["scale", "shift"] and g.readers("y") == []
    assert set(g.initializers) == {"w1", "b1", "w2", "b2", "w3", "b3", "c"}
    assert g.order["c1"] == 0 and g.order["early"] == 2 and g.order["y"] == 8 == len(g.nodes) - 1
    assert topological_order(model) == g.order
    assert g.types["w1"] == TensorProto.FLOAT and g.types["x"] == TensorProto.FLOAT
    assert g.output_names == [o.name for o in model.graph.output] and g.by_name["skip"].op_type == "Add"
