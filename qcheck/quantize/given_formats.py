"""The formats of a quantized model made elsewhere, and the graph rewrites that put one in the form qcheck reads.

QDQ (QuantizeLinear/DequantizeLinear pairs), QOperator (integer ops carrying their scales: `QOPERATOR_OPS`,
where each keeps them) and dynamic (DynamicQuantizeLinear with MatMulInteger/ConvInteger). The rewrites keep
what the model computes: weights quantized at run time become integer initializers
(`fold_weight_quantizers`), and a Relu folded into its producer's grid is put back for the emulation model
(`unfold_activations`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qcheck.model.graph import GraphIndex

DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}


@dataclass(frozen=True)
class QOp:
    """Where a QOperator op keeps its parameters: input positions."""

    float_op: str
    activations: tuple[tuple[int, int, int], ...]  # (tensor, scale, zero point) of each integer activation input
    output: tuple[int, int] | None  # (scale, zero point) of the integer output; None: the output is float
    weights: tuple[tuple[int, int, int], ...] = ()  # (tensor, scale, zero point) positions that may be initializers
    bias: int | None = None  # int32 bias position (scale = input scale * weight scale)


QOPERATOR_OPS: dict[str, QOp] = {
    "QLinearConv": QOp("Conv", ((0, 1, 2),), (6, 7), ((3, 4, 5),), bias=8),
    "QLinearMatMul": QOp("MatMul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QGemm": QOp("Gemm", ((0, 1, 2), (3, 4, 5)), (7, 8), bias=6),
    "QLinearAdd": QOp("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": QOp("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearAveragePool": QOp("AveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearGlobalAveragePool": QOp("GlobalAveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearSigmoid": QOp("Sigmoid", ((0, 1, 2),), (3, 4)),
    "QLinearLeakyRelu": QOp("LeakyRelu", ((0, 1, 2),), (3, 4)),
    "QLinearSoftmax": QOp("Softmax", ((0, 1, 2),), (3, 4)),
    "QLinearReduceMean": QOp("ReduceMean", ((0, 1, 2),), (3, 4)),
}


def qop_spec(node: onnx.NodeProto) -> QOp | None:
    """Where a QOperator node keeps its parameters; QLinearConcat has (Y scale, Y zero point, then one triple per
    input), so its positions depend on the node."""
    if node.op_type == "QLinearConcat":
        return QOp("Concat", tuple((i, i + 1, i + 2) for i in range(2, len(node.input) - 2, 3)), (0, 1))
    return QOPERATOR_OPS.get(node.op_type)


def weight_axis(float_op: str, twin: onnx.NodeProto | None) -> int:
    """The output-channel axis per-channel scales run along: Conv [M, C, kh, kw] 0; MatMul [K, N] 1; Gemm by transB."""
    if float_op == "MatMul":
        return 1
    if float_op == "Gemm" and twin is not None:
        return 0 if next((a.i for a in twin.attribute if a.name == "transB"), 0) else 1
    return 0


# Ops that run on integer tensors unchanged (ORT's QOperator format): their output keeps the input's grid.
SAME_GRID_OPS = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Split",
                 "Resize", "Identity", "Pad", "SpaceToDepth", "DepthToSpace", "Relu"}
FUSED_ACTIVATIONS = {"Relu", "Clip"}  # a grid from 0 does their work: tools fold them into the producer
UNFOLDED = "qcheck_unfolded::"  # the name prefix of such an activation put back (`unfold_activations`)


def given_format(model: onnx.ModelProto) -> str | None:
    """qdq | qoperator | dynamic, or None for a model with nothing quantized."""
    ops = {n.op_type for n in model.graph.node}
    if ops & DYNAMIC_OPS:
        return "dynamic"
    if ops & (set(QOPERATOR_OPS) | {"QLinearConcat"}):
        return "qoperator"
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    return None


def fold_weight_quantizers(model: onnx.ModelProto) -> list[str]:
    """Quantize, in place, constant weights a model quantizes at run time (QuantizeLinear(initializer) ->
    DequantizeLinear, what ORT's QDQ quantizer writes for weights that were Constant nodes): the DequantizeLinear
    then reads an integer initializer, as for every other weight, and the QuantizeLinear goes. Same numbers:
    QuantizeLinear of a constant is a constant (computed as ONNX Runtime does, in float32, ties to even).
    Returns the weights folded."""
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    folded, drop = [], set()
    for k, node in enumerate(model.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits or node.input[1] not in inits:
            continue
        zp_init = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp_init is None:
            continue  # no zero point: uint8 by default; such exports are rare, left as they are
        w = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zp = numpy_helper.to_array(zp_init)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.size > 1:
            shape = [1] * w.ndim
            shape[axis % w.ndim] = scale.size
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        lo, hi = np.iinfo(zp.dtype).min, np.iinfo(zp.dtype).max
        q = np.clip(np.rint(w / scale) + zp.astype(np.int64), lo, hi).astype(zp.dtype)
        name = node.output[0]
        model.graph.initializer.append(numpy_helper.from_array(q, name))
        drop.add(k)  # by position: protobuf gives no stable identity to the nodes it hands out
        folded.append(node.input[0])
    if drop:
        keep = [n for k, n in enumerate(model.graph.node) if k not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        read = {name for n in keep for name in n.input}
        unused = [i for i in model.graph.initializer if i.name in set(folded) and i.name not in read]
        for init in unused:  # the float copies of the weights now stored as integers
            model.graph.initializer.remove(init)
    return folded


def unfold_activations(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> list[str]:
    """Put back, in place, the Relu/Clip a tool folded into its producer's output grid; returns the tensors.

    ORT's QDQ quantizer (and others) drop a Relu whose output is quantized with a grid starting at 0: the
    grid's clipping does the Relu's work, and the producer writes the Relu's tensor name directly. The
    model computes the same; but the switchable emulation model switches a pair off by reading the tensor
    before its QuantizeLinear, which would then be the producer's raw output, not the float model's. With
    the Relu back (what qcheck's own emulation model gets from `QDQKeepRemovableActivations`), switched
    off is float again, and switched on computes what the given model computes."""
    f_producer, q_producer = GraphIndex(float_model).producer, GraphIndex(qmodel).producer
    f_inits = GraphIndex(float_model).initializers
    q_inits = {i.name for i in qmodel.graph.initializer}
    done, nodes = [], []
    for node in qmodel.graph.node:
        nodes.append(node)
        for k, out in enumerate(node.output):
            f_node = f_producer.get(out)
            if f_node is None or f_node.op_type not in FUSED_ACTIVATIONS or node.op_type == f_node.op_type \
                    or node.op_type in ("QuantizeLinear", "DequantizeLinear") or q_producer.get(out) is not node:
                continue
            raw = f"{out}_qcheck_before_{f_node.op_type.lower()}"
            node.output[k] = raw
            extra = list(f_node.input[1:])  # Clip's min and max
            for name in extra:
                if name and name in f_inits and name not in q_inits:
                    qmodel.graph.initializer.append(f_inits[name])
                    q_inits.add(name)
            act = onnx.NodeProto()
            act.CopyFrom(f_node)
            del act.input[:]
            act.input.extend([raw, *extra])
            act.name = UNFOLDED + f_node.name
            nodes.append(act)
            done.append(out)
    del qmodel.graph.node[:]
    qmodel.graph.node.extend(nodes)
    return done
