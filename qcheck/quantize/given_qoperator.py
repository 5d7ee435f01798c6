"""A QOperator model rewritten as the equivalent QDQ model: what the per-layer twin, the emulation model and the
search's edits of a given QOperator model work on.

Each integer op (QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinearMul, QLinearConcat, the QLinear pools,
QLinearSigmoid, QLinearLeakyRelu, ...: `given_formats.qop_spec`) becomes what ORT's QDQ format writes for it:
a DequantizeLinear on each input made from the op's own (scale, zero point) inputs (weights per channel along
their output axis; the int32 bias with scale input scale x weight scale and zero point 0), the float op with the
op's attributes, and a QuantizeLinear with the op's output scale and zero point writing the op's own integer
tensor. An op that runs on integer tensors unchanged (MaxPool, Reshape, Flatten, ...: `SAME_GRID_OPS`) gets the
same pair on its input's grid. The integer tensors keep their names, so the given model's run feeds the converted
model's twin; the float ops and tensors take the float model's names where they were matched.

Numbers: the QDQ model computes each op in float on the dequantized integers and rounds once to the output grid;
ORT's integer kernels accumulate in integers and requantize with a float multiplier (or a lookup table). Both are
the same real value up to float rounding, so an op's output integer differs only where that value sits within
rounding noise of a half step, or exactly on one (grids whose scales are in simple ratios make exact ties common,
and QLinearAdd breaks them otherwise than QuantizeLinear's half to even): by one step at most, per op. Downstream
ops amplify such a step like any other input difference (on PP-OCR's classifier: 1.5% of the integer values differ,
by up to 60 steps deep in the net, from 1-step differences at QLinearAdds; README).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qcheck.errors import ModelError, Problem
from qcheck.model.graph import GraphIndex
from qcheck.quantize.given_formats import SAME_GRID_OPS, qop_spec, weight_axis
from qcheck.quantize.given_match import TensorMatch

DROPPED_ATTRIBUTES = ("channels_last", "opset")  # com.microsoft QLinear attributes the float ops do not take


class _Converter:
    def __init__(self, qmodel: onnx.ModelProto, float_model: onnx.ModelProto):
        self.q = GraphIndex(qmodel)
        self.match = TensorMatch(qmodel, float_model)
        self.used = ({o for n in qmodel.graph.node for o in n.output} | set(self.q.initializers)
                     | {i.name for i in qmodel.graph.input})
        self.outputs = {o.name for o in qmodel.graph.output}
        self.node_names = {n.name for n in qmodel.graph.node}
        self.grids: dict[str, tuple[str, str]] = {}  # integer tensor -> (scale, zero point) initializer names
        self.dequantized: dict[str, str] = {}  # integer tensor -> its DequantizeLinear's output
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def unique(self, name: str) -> str:
        return _unique(name, self.used)

    def float_output(self, q_tensor: str) -> str:
        """The name the float op's output takes: the float model's, else one derived from the integer tensor's."""
        f = self.match.to_float.get(q_tensor)
        if f is not None and f in self.outputs:
            f += "_QuantizeLinear_Input"  # the graph output is the final DequantizeLinear's (ORT's QDQ name)
        return self.unique(f if f is not None and f not in self.used else f"{q_tensor}_float")

    def dq(self, tensor: str, scale: str, zero_point: str, axis: int | None = None) -> str:
        """A DequantizeLinear of `tensor` (one per tensor and grid)."""
        key = f"{tensor}|{scale}|{zero_point}"
        if key not in self.dequantized:
            out = self.unique(f"{tensor}_DequantizeLinear_Output")
            attrs = {"axis": axis} if axis is not None else {}
            self.nodes.append(onnx.helper.make_node("DequantizeLinear", [tensor, scale, zero_point], [out],
                                                    name=self.unique_node(f"{tensor}_DequantizeLinear"), **attrs))
            self.dequantized[key] = out
        return self.dequantized[key]

    def unique_node(self, name: str) -> str:
        return _unique(name, self.node_names)

    def quantize(self, float_tensor: str, scale: str, zero_point: str, q_tensor: str) -> None:
        self.nodes.append(onnx.helper.make_node("QuantizeLinear", [float_tensor, scale, zero_point], [q_tensor],
                                                name=self.unique_node(f"{q_tensor}_QuantizeLinear")))
        self.grids[q_tensor] = (scale, zero_point)

    def float_node(self, node: onnx.NodeProto, op_type: str, inputs: list[str], outputs: list[str],
                   attributes: list[onnx.AttributeProto]) -> None:
        twin = self.match.node_twin.get(node.name)
        self.node_names.discard(node.name)
        name = twin.name if twin is not None and twin.name not in self.node_names else node.name
        self.node_names.add(name)
        out = onnx.helper.make_node(op_type, inputs, outputs, name=name)
        out.attribute.extend(attributes)
        self.nodes.append(out)

    def qoperator(self, node: onnx.NodeProto) -> None:
        spec = qop_spec(node)
        attrs = [a for a in node.attribute if a.name not in DROPPED_ATTRIBUTES]
        if any(a.name == "channels_last" and a.i for a in node.attribute):
            raise ModelError(Problem(f"node {node.name} ({node.op_type}) computes channels-last; qcheck cannot "
                                     "write it as a float op with Q/DQ pairs"))
        inputs: list[str] = []
        for p, s, z in list(spec.activations) + list(spec.weights):  # the float op reads them in this order
            scale = self.q.initializers.get(node.input[s])
            per_channel = scale is not None and numpy_helper.to_array(scale).size > 1
            axis = weight_axis(spec.float_op, node) if per_channel else None  # QGemm has transB too
            inputs.append(self.dq(node.input[p], node.input[s], node.input[z] if z < len(node.input) else "", axis))
        if spec.bias is not None and spec.bias < len(node.input) and node.input[spec.bias]:
            inputs.append(self.bias(node, spec))
        integer_output = spec.output is not None and len(node.input) > spec.output[1]
        if not integer_output:  # QGemm without an output scale writes float
            self.float_node(node, spec.float_op, inputs, list(node.output), attrs)
            return
        f_out = self.float_output(node.output[0])
        self.float_node(node, spec.float_op, inputs, [f_out], attrs)
        self.quantize(f_out, node.input[spec.output[0]], node.input[spec.output[1]], node.output[0])

    def bias(self, node: onnx.NodeProto, spec) -> str:
        """The int32 bias dequantized: scale = input scale x weight scale, zero point 0 (what the op computes)."""
        name = node.input[spec.bias]
        x_scale = numpy_helper.to_array(self.q.initializers[node.input[spec.activations[0][1]]]).astype(np.float32)
        weight = (list(spec.activations) + list(spec.weights))[-1]  # QLinearConv's W, QGemm's B
        w_scale = numpy_helper.to_array(self.q.initializers[node.input[weight[1]]]).astype(np.float32)
        scale = (x_scale * w_scale).astype(np.float32)
        s_name, z_name = self.unique(f"{name}_scale"), self.unique(f"{name}_zero_point")
        self.inits += [numpy_helper.from_array(scale, s_name),
                       numpy_helper.from_array(np.zeros(scale.shape, np.int32), z_name)]
        return self.dq(name, s_name, z_name, 0 if scale.size > 1 else None)

    def same_grid(self, node: onnx.NodeProto) -> None:
        """An op run on an integer tensor: the same op in float between a pair on the input's grid."""
        scale, zero_point = self.grids[node.input[0]]
        inputs = [self.dq(node.input[0], scale, zero_point), *node.input[1:]]
        outputs = [self.float_output(o) for o in node.output]
        self.float_node(node, node.op_type, inputs, outputs, list(node.attribute))
        for f_out, q_out in zip(outputs, node.output):
            self.quantize(f_out, scale, zero_point, q_out)

    def add(self, node: onnx.NodeProto) -> None:
        if qop_spec(node) is not None:
            self.qoperator(node)
        elif node.op_type in SAME_GRID_OPS and node.input and node.input[0] in self.grids:
            self.same_grid(node)
        else:
            if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[1] in self.q.initializers:
                self.grids[node.output[0]] = (node.input[1], node.input[2])
            kept = onnx.NodeProto()
            kept.CopyFrom(node)  # the caller clears the graph the node belongs to
            self.nodes.append(kept)


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2` ... the first not in `taken` (then added to it)."""
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def _free_float_names(model: onnx.ModelProto) -> None:
    """A DequantizeLinear that gives float readers an integer op's output writes that tensor's float name (ORT's
    QOperator format); the float op of the QDQ form writes it instead (what the twin and the search pair by name),
    so such a DequantizeLinear's output is renamed, in place, to `X_DequantizeLinear_Output` (graph outputs keep
    theirs)."""
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    taken = {o for n in model.graph.node for o in n.output} | inits | {i.name for i in model.graph.input}
    renames: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits and node.output[0] not in outputs:
            renames[node.output[0]] = _unique(f"{node.output[0]}_DequantizeLinear_Output", taken)
            node.output[0] = renames[node.output[0]]
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in renames:
                node.input[k] = renames[name]


def qoperator_to_qdq(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model equivalent to a QOperator model (normalized as `given_edit.normalize_given` leaves it); the
    same bytes for the same input (`qcheck apply` rebuilds a search's edits on it)."""
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    _free_float_names(out)
    c = _Converter(out, float_model)
    for node in list(out.graph.node):
        c.add(node)
    del out.graph.node[:]
    out.graph.node.extend(c.nodes)
    out.graph.initializer.extend(c.inits)
    integer = set(c.grids)
    keep = [vi for vi in out.graph.value_info if vi.name not in integer]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep)
    return out
