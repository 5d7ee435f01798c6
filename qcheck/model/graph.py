"""One index of an ONNX graph: who produces and who reads each tensor, its initializers, node order and types.

Stages that walk a graph build one `GraphIndex` instead of their own
producer/consumer maps. The index is a snapshot: rebuild it after editing the
graph.
"""

from __future__ import annotations

from functools import cached_property

import onnx


class GraphIndex:
    def __init__(self, graph: onnx.GraphProto | onnx.ModelProto):
        self.graph = graph.graph if isinstance(graph, onnx.ModelProto) else graph
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)

    @cached_property
    def producer(self) -> dict[str, onnx.NodeProto]:
        """Tensor name -> the node that writes it (graph inputs and initializers have none)."""
        return {o: n for n in self.nodes for o in n.output}

    @cached_property
    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        """Tensor name -> the nodes that read it, in graph order (a node reading it twice is listed twice)."""
        out: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                out.setdefault(name, []).append(node)
        return out

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])

    @cached_property
    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {i.name: i for i in self.graph.initializer}

    @cached_property
    def by_name(self) -> dict[str, onnx.NodeProto]:
        """Node name -> node (unnamed nodes are left out)."""
        return {n.name: n for n in self.nodes if n.name}

    @cached_property
    def order(self) -> dict[str, int]:
        """Tensor name -> index of its producer in the node list (ONNX keeps nodes in topological order)."""
        return {o: i for i, n in enumerate(self.nodes) for o in n.output}

    @cached_property
    def types(self) -> dict[str, int]:
        """Element type (onnx.TensorProto.*) of every tensor whose type the graph declares, initializers included."""
        types = {}
        for vi in list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for init in self.graph.initializer:
            types[init.name] = init.data_type
        return types

    @cached_property
    def output_names(self) -> list[str]:
        return [o.name for o in self.graph.output]

    def outline(self) -> list[dict]:
        """The nodes as plain data for the report's graph view: name, op_type, and the activations each reads
        and writes (initializers left out), in graph order."""
        weights = self.initializers
        return [{"name": n.name, "op_type": n.op_type, "inputs": [i for i in n.input if i and i not in weights],
                 "outputs": [o for o in n.output if o]} for n in self.nodes]


def topological_order(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> index of its producer in the node list."""
    return GraphIndex(model).order

