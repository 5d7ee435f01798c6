"""The lists `quantize.reuse` keeps beside ORT's quantizer follow the model through every edit ORT makes to it:
after random appends, removals (anywhere), in-place edits and clears, a lookup by name gives what ORT's own scan
(`find_by_name`) gives, and the node mirror holds exactly the graph's nodes, in order."""

from __future__ import annotations

import random

import numpy as np
from onnx import helper, numpy_helper
from onnxruntime.quantization.onnx_model import ONNXModel
from onnxruntime.quantization.quant_utils import find_by_name

from qcheck.quantize.reuse import _InitializerIndex, _Mirror


def _model(n: int) -> ONNXModel:
    inits = [numpy_helper.from_array(np.full(2, i, np.float32), f"t{i}") for i in range(n)]
    nodes = [helper.make_node("Relu", [f"a{i}"], [f"a{i + 1}"], name=f"n{i}") for i in range(n)]
    return ONNXModel(helper.make_model(helper.make_graph(nodes, "g", [], [], inits)))


def test_lookups_by_name_follow_every_edit_of_the_initializer_list():
    rng = random.Random(0)
    model = _model(30)
    index = _InitializerIndex(model)
    inits = model.model.graph.initializer
    made = 30
    for step in range(600):
        for _ in range(rng.randint(1, 3)):  # several edits between two lookups: a removal and an append, say
            op = rng.random()
            if op < 0.45:
                inits.append(numpy_helper.from_array(np.zeros(1, np.float32), f"t{made}"))
                made += 1
            elif op < 0.9 and len(inits):
                inits.remove(inits[rng.randrange(len(inits))])  # anywhere: the end, the middle, the start
            elif op >= 0.9:
                kept = [type(i)() for i in inits]
                for k, i in zip(kept, inits):
                    k.CopyFrom(i)
                model.model.graph.ClearField("initializer")  # cleared and refilled (new objects, same names)
                model.model.graph.initializer.extend(kept[::-1])
                inits = model.model.graph.initializer
        name = f"t{rng.randrange(made + 3)}"  # some never existed
        assert index.find(name) is find_by_name(name, inits), step  # the very object (or None)


def test_the_node_mirror_holds_the_graph_nodes_in_order():
    rng = random.Random(1)
    model = _model(20)
    mirror = _Mirror(lambda: model.model.graph.node)
    nodes = model.model.graph.node
    for step in range(400):
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                nodes.append(helper.make_node("Relu", ["x"], [f"y{step}"], name=f"m{step}"))
            elif len(nodes):
                del nodes[rng.randrange(len(nodes))]
        if rng.random() < 0.3 and len(nodes):
            nodes[rng.randrange(len(nodes))].input[0] = f"z{step}"  # edited in place
        mirror.update()
        assert [n.name for n in mirror.items] == [n.name for n in nodes]
        assert all(a is b for a, b in zip(mirror.items, nodes)), step  # the graph's own node objects (edits reach them)
