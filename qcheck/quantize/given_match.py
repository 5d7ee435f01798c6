"""Matching the tensors of a quantized model made elsewhere to its float original's.

By name first (tools' suffixes such as ORT's `X_quantized` stripped), then by
structure: a node whose already matched inputs are read, at the same positions,
by exactly one float node of the corresponding op type (QLinearConv -> Conv,
...) is that node (several: the weights' names tell them apart), and its
outputs and weights are matched position by position. A Relu a tool folded into
its producer's grid is recognized. `adopt_float_names` then gives a QDQ model
the float names, so everything that pairs nodes and tensors by name works on it.
"""

from __future__ import annotations

import onnx

from qcheck.model.graph import GraphIndex
from qcheck.quantize.given_formats import FUSED_ACTIVATIONS, QOp, qop_spec

# Suffixes tools give a quantized tensor of float tensor X (ORT: X_quantized, X_QuantizeLinear_Output ...).
NAME_SUFFIXES = ("_quantized", "_QuantizeLinear_Output", "_DequantizeLinear_Output", "_QuantizeLinear_Input",
                 "_output_quantized")


class TensorMatch:
    """Given-model tensor name -> float-model tensor name, by name and then by graph structure."""

    def __init__(self, qmodel: onnx.ModelProto, float_model: onnx.ModelProto):
        self.f, self.q = GraphIndex(float_model), GraphIndex(qmodel)
        self.f_tensors = ({o for n in float_model.graph.node for o in n.output} | set(self.f.initializers)
                          | {i.name for i in float_model.graph.input})
        self.to_float: dict[str, str] = {}
        self.how: dict[str, str] = {}
        self.node_twin: dict[str, onnx.NodeProto] = {}  # given node name -> float node
        q_inits = {i.name for i in qmodel.graph.initializer}
        for i in qmodel.graph.input:
            if i.name in self.f_tensors:
                self._set(i.name, i.name, "name")
        used: set[str] = set()
        for node in qmodel.graph.node:
            self._match_node(node, q_inits, used)

    def _set(self, q: str, f: str, how: str) -> None:
        if q and q not in self.to_float:
            self.to_float[q], self.how[q] = f, how

    def by_name(self, q: str) -> str | None:
        if q in self.f_tensors:
            return q
        for suffix in NAME_SUFFIXES:
            if q.endswith(suffix) and q[: -len(suffix)] in self.f_tensors:
                return q[: -len(suffix)]
        return None

    def _match_node(self, node: onnx.NodeProto, q_inits: set[str], used: set[str]) -> None:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            src = self.to_float.get(node.input[0])
            if src is not None:
                self._set(node.output[0], src, self.how[node.input[0]])
            elif (name := self.by_name(node.output[0])) is not None:
                self._set(node.output[0], name, "name")
            return
        spec = qop_spec(node)
        float_op = spec.float_op if spec else node.op_type
        positions = [a[0] for a in spec.activations] if spec else list(range(len(node.input)))
        twin = self._structural_twin(node, float_op, positions, spec, used)
        if twin is not None:
            self.node_twin[node.name] = twin
            used.add(twin.name)  # float nodes are uniquely named (model.prepare.name_nodes)
        for k, out in enumerate(node.output):
            name = self.by_name(out)
            if name is not None:
                self._set(out, self._after_fused_activation(name, node), "name")
            elif twin is not None and k < len(twin.output):
                self._set(out, self._after_fused_activation(twin.output[k], node), "structure")

    def _structural_twin(self, node: onnx.NodeProto, float_op: str, positions: list[int], spec: QOp | None,
                         used: set[str]) -> onnx.NodeProto | None:
        """The one float node of `float_op` that reads this node's matched inputs at the same positions."""
        # QOperator inputs are (tensor, scale, zp) triples; the float op's inputs are the tensors alone
        float_pos = {p: k for k, p in enumerate(positions)} if spec else {p: p for p in positions}
        mapped = {float_pos[p]: self.to_float[node.input[p]] for p in positions
                  if p < len(node.input) and node.input[p] in self.to_float}
        if not mapped:
            return None
        first = next(iter(mapped.values()))
        candidates = [c for c in self.f.consumers.get(first, []) if c.op_type == float_op and c.name not in used
                      and all(k < len(c.input) and c.input[k] == v for k, v in mapped.items())]
        if len(candidates) > 1:  # several float nodes read the same input: the weights' names tell them apart
            named = {float_pos[p]: self.by_name(node.input[p]) for p in positions
                     if p < len(node.input) and node.input[p] in self.q.initializers}
            candidates = [c for c in candidates
                          if all(n is None or (k < len(c.input) and c.input[k] == n) for k, n in named.items())]
        return candidates[0] if len(candidates) == 1 else None

    def _after_fused_activation(self, f_out: str, node: onnx.NodeProto) -> str:
        """Tools fold a Relu/Clip into its producer's output grid (a grid from 0 clips as the Relu would): the
        producer's output then stands for the Relu's, whatever its name (ORT's QOperator format keeps the
        producer's, its QDQ format takes the Relu's). Folded: the float output is read by a Relu/Clip alone and the
        given node's output by none."""
        readers = self.f.consumers.get(f_out, [])
        q_readers = self.q.consumers.get(node.output[0], [])
        if len(readers) == 1 and readers[0].op_type in FUSED_ACTIVATIONS and \
                not any(r.op_type in FUSED_ACTIVATIONS for r in q_readers):
            return readers[0].output[0]
        return f_out

    def float_input(self, node: onnx.NodeProto, position: int) -> str | None:
        """The float model's tensor at a given node's input position (weights: the float initializer)."""
        twin = self.node_twin.get(node.name)
        if twin is None or position >= len(twin.input):
            return None
        return twin.input[position]


def adopt_float_names(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> dict[str, str]:
    """Rename, in place, the compute nodes and the tensors they write to the float model's names they were matched
    to (the model computes the same). Q/DQ outputs keep theirs; a name the graph already uses, or a graph input
    or output, is never taken. Returns {given tensor name: float tensor name}."""
    match = TensorMatch(qmodel, float_model)
    node_names = {n.name for n in qmodel.graph.node}
    used = {o for n in qmodel.graph.node for o in n.output} | {i.name for i in qmodel.graph.input} | \
        {i.name for i in qmodel.graph.initializer}
    outputs = {o.name for o in qmodel.graph.output}
    fixed = {i.name for i in qmodel.graph.input} | outputs
    renames: dict[str, str] = {}
    for node in qmodel.graph.node:
        twin = match.node_twin.get(node.name)
        if twin is not None and twin.name != node.name and twin.name not in node_names:
            node_names.discard(node.name)
            node.name = twin.name
            node_names.add(twin.name)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for out in node.output:
            f = match.to_float.get(out)
            if f in outputs:  # the graph output is the final DequantizeLinear's: ORT's name for its source
                f = f + "_QuantizeLinear_Input"
            if f is not None and f != out and out not in fixed and f not in used:
                renames[out] = f
                used.add(f)
    for node in qmodel.graph.node:
        for seq in (node.input, node.output):
            for k, name in enumerate(seq):
                if name in renames:
                    seq[k] = renames[name]
    return renames
