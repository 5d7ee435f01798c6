"""Reading a QDQ model: which tensors are quantized, and with which parameters.

ONNX Runtime's QDQ format inserts, for an activation `X`,

    X -> QuantizeLinear -> X_q -> DequantizeLinear -> consumers

and stores each weight `W` as an integer initializer followed by a
DequantizeLinear. This module maps every such pair back to the float model's
tensor it stands for, with its scale, zero point, type and channel axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from qcheck.model.graph import GraphIndex
from qcheck.quantize.grid import dequantize, qlimits, quant_steps

QUANTIZE_OPS = {"QuantizeLinear"}
DEQUANTIZE_OPS = {"DequantizeLinear"}
# ORT's QDQ quantizer folds these into their producer's grid: the producer's quantized output is read
# through them, with no Q/DQ pair of their own (unless asked to keep them; see build_quantized).
REMOVABLE_ACTIVATIONS = {"Relu", "Clip"}


@dataclass
class QuantizedTensor:
    """One float tensor that the quantized model represents on an integer grid."""

    name: str  # the float model's tensor name
    kind: str  # activation | weight | bias
    dtype: str  # int8, uint8, int16, uint16, int32
    scale: np.ndarray  # scalar, or one per channel
    zero_point: np.ndarray
    axis: int | None = None  # channel axis when per-channel
    q_output: str | None = None  # activations: the integer tensor in the quantized model
    q_initializer: str | None = None  # weights: the integer initializer
    consumers: list[str] = field(default_factory=list)  # node names reading the dequantized tensor

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    @property
    def symmetric_restricted(self) -> bool:
        """int8 symmetric weights use [-127, 127]: 254 steps, not 255."""
        return self.kind == "weight" and self.dtype == "int8" and bool(np.all(self.zero_point == 0))

    def steps(self) -> int:
        return quant_steps(self.dtype, self.symmetric_restricted)

    def scale_for(self, shape: tuple[int, ...]) -> np.ndarray | float:
        """The scale, shaped to broadcast against a tensor of `shape`."""
        if not self.per_channel:
            return float(self.scale.reshape(()))
        bshape = [1] * len(shape)
        bshape[self.axis if self.axis is not None else 0] = self.scale.size
        return self.scale.reshape(bshape).astype(np.float64)

    def zero_point_for(self, shape: tuple[int, ...]) -> np.ndarray | int:
        if not self.per_channel:
            return int(self.zero_point.reshape(()))
        bshape = [1] * len(shape)
        bshape[self.axis if self.axis is not None else 0] = self.zero_point.size
        return self.zero_point.reshape(bshape)

    def real_range(self, shape: tuple[int, ...]) -> tuple:
        """The lowest and highest real value the grid can represent."""
        lo, hi = qlimits(self.dtype)
        if self.symmetric_restricted:
            lo = -hi
        s, z = self.scale_for(shape), self.zero_point_for(shape)
        return (np.asarray(lo - z) * s, np.asarray(hi - z) * s)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return dequantize(q, self.scale_for(q.shape), self.zero_point_for(q.shape))

    def summary_scale(self) -> float:
        """One number for tables: the scale, or the median channel scale when per-channel."""
        return float(np.median(self.scale)) if self.per_channel else float(self.scale.reshape(()))


@dataclass
class QDQMap:
    tensors: dict[str, QuantizedTensor]  # by float tensor name
    quantized_nodes: list[str]  # compute nodes that read at least one dequantized input
    float_nodes: list[str]  # compute nodes left in float (no dequantized input)


def read_qdq(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> QDQMap:
    index, float_index = GraphIndex(qmodel), GraphIndex(float_model)
    inits, float_nodes, consumers = index.initializers, float_index.by_name, index.consumers
    float_outputs = set(float_index.output_names)

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    def params(node: onnx.NodeProto, int_dtype: str) -> tuple[np.ndarray, np.ndarray, int | None]:
        scale = array(node.input[1]).astype(np.float32)
        zp = array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, dtype=int_dtype)
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        return scale, zp, (axis if scale.size > 1 else None)

    def compute_consumers(tensor: str) -> list[onnx.NodeProto]:
        return [c for c in consumers.get(tensor, []) if c.op_type not in QUANTIZE_OPS | DEQUANTIZE_OPS]

    dq_outputs = {n.output[0] for n in qmodel.graph.node if n.op_type in DEQUANTIZE_OPS}
    tensors: dict[str, QuantizedTensor] = {}
    for node in qmodel.graph.node:
        if node.op_type in QUANTIZE_OPS:
            source = node.input[0]
            if source in inits or source in dq_outputs:
                continue  # a weight Q/DQ pair, or a type conversion (mixed precision); not a new grid
            if node.input[1] not in inits:
                continue
            zp_name = node.input[2] if len(node.input) > 2 else ""
            int_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(inits[zp_name].data_type)).name if zp_name else "uint8"
            scale, zp, axis = params(node, int_dtype)
            pair_outputs = [c.output[0] for c in consumers.get(node.output[0], []) if c.op_type in DEQUANTIZE_OPS]
            readers = [c.name for out in pair_outputs for c in compute_consumers(out)]
            original = float_name(source, float_outputs)
            if original in tensors:
                continue  # the first QuantizeLinear of a tensor defines its grid
            tensors[original] = QuantizedTensor(original, "activation", int_dtype, scale, zp, axis,
                                                q_output=node.output[0], consumers=readers)
        elif node.op_type in DEQUANTIZE_OPS and node.input[0] in inits:
            qinit = node.input[0]
            int_dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(inits[qinit].data_type)).name
            scale, zp, axis = params(node, int_dtype)
            for reader in compute_consumers(node.output[0]):
                original = _original_input(reader, node.output[0], float_nodes)
                if original is None or original in tensors:
                    continue
                kind = "bias" if int_dtype == "int32" else "weight"
                tensors[original] = QuantizedTensor(original, kind, int_dtype, scale, zp, axis,
                                                    q_initializer=qinit, consumers=[reader.name])

    # A node runs quantized when it reads dequantized inputs and either its weights are integer
    # or its output is quantized again (the DQ -> op -> Q pattern ORT fuses into integer kernels).
    # An excluded node may still read dequantized inputs, but computes and outputs float.
    weight_dq = {n.output[0] for n in qmodel.graph.node if n.op_type in DEQUANTIZE_OPS and n.input[0] in inits}
    feeds_q = {n.input[0] for n in qmodel.graph.node if n.op_type in QUANTIZE_OPS}
    quantized, kept = [], []
    for node in qmodel.graph.node:
        if node.op_type in QUANTIZE_OPS | DEQUANTIZE_OPS or node.op_type == "Constant":
            continue
        reads_dq = any(i in dq_outputs for i in node.input)
        integer = any(i in weight_dq for i in node.input) or any(o in feeds_q for o in node.output)
        (quantized if reads_dq and integer else kept).append(node.name)
    return QDQMap(tensors, quantized, kept)


def float_name(name: str, float_outputs: set[str]) -> str:
    """ORT renames a quantized graph output X's producer output to X_QuantizeLinear_Input."""
    suffix = "_QuantizeLinear_Input"
    if name.endswith(suffix) and name[: -len(suffix)] in float_outputs:
        return name[: -len(suffix)]
    return name


def _original_input(reader: onnx.NodeProto, dq_output: str, float_nodes: dict) -> str | None:
    """The float model's tensor at the position where `reader` reads `dq_output`."""
    twin = float_nodes.get(reader.name)
    if twin is None:
        return None
    for pos, name in enumerate(reader.input):
        if name == dq_output and pos < len(twin.input):
            return twin.input[pos]
    return None
