"""Reading a quantized model made elsewhere (`quantized:` in the policy) into the form qcheck measures.

A QAT export or another tool's int8 model comes in one of three formats:

- QDQ: QuantizeLinear/DequantizeLinear pairs around float ops (per-tensor or
  per-channel, 8 or 16 bit), read by `qdq.read_qdq` as for qcheck's own models;
- QOperator: integer ops carrying their scales (QLinearConv, QLinearMatMul,
  QGemm, QLinearAdd, ...): every integer tensor such an op (or a
  QuantizeLinear, or an int8 MaxPool/Reshape/... reading one) writes stands for
  a float tensor, on the grid of the op's output scale and zero point;
- dynamic: DynamicQuantizeLinear + MatMulInteger/ConvInteger: activations get
  their scale per run, so there is no fixed grid; measured by tensor name.

For QDQ and QOperator the result is a `QDQMap` keyed by the float model's
tensor names, with `q_output` the integer tensor in the given model: the
form `measure.per_tensor.measure` already consumes. Tensors are matched to
the float model by name first (ORT's `X_quantized` suffixes stripped), then by
structure (`TensorMatch`): a node whose already matched inputs are read, at
the same positions, by exactly one float node of the corresponding op type is
that node, and its outputs and weights are matched position by position.
What cannot be matched is listed with the reason, never dropped silently.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qcheck.model.graph import GraphIndex
from qcheck.quantize.calibrate import Recipe
from qcheck.quantize.qdq import QDQMap, QuantizedTensor, read_qdq
from qcheck.quantize.schemes import BuiltScheme

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


# Ops that run on integer tensors unchanged (ORT's QOperator format): their output keeps the input's grid.
SAME_GRID_OPS = {"MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Split",
                 "Resize", "Identity", "Pad", "SpaceToDepth", "DepthToSpace", "Relu"}
# Suffixes tools give a quantized tensor of float tensor X (ORT: X_quantized, X_QuantizeLinear_Output ...).
NAME_SUFFIXES = ("_quantized", "_QuantizeLinear_Output", "_DequantizeLinear_Output", "_QuantizeLinear_Input",
                 "_output_quantized")
FUSED_ACTIVATIONS = {"Relu", "Clip"}


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


@dataclass
class Unmatched:
    """A quantized tensor of the given model that has no float counterpart qcheck could find."""

    tensor: str  # its name in the given model
    node: str  # the node that writes (or reads) it
    reason: str

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "node": self.node, "reason": self.reason}


@dataclass
class GivenModel:
    """A quantized model made elsewhere, read: its format, what it quantizes and what could not be matched."""

    format: str
    qmap: QDQMap | None  # qdq and qoperator; None for dynamic (no fixed grids)
    unmatched: list[Unmatched] = field(default_factory=list)
    matched_by: dict[str, str] = field(default_factory=dict)  # float tensor -> "name" | "structure"
    notes: list[str] = field(default_factory=list)
    model: onnx.ModelProto | None = None  # the model to measure (see read_given)

    @property
    def activation_bits(self) -> int:
        if self.qmap is None:
            return 8
        acts = [t for t in self.qmap.tensors.values() if t.kind == "activation"]
        return 16 if acts and all(t.dtype in ("int16", "uint16") for t in acts) else 8

    def recipe(self) -> Recipe:
        """The recipe as read from the model (for the report and the results' recipe key); it builds nothing."""
        tensors = list(self.qmap.tensors.values()) if self.qmap else []
        acts = [t for t in tensors if t.kind == "activation"]
        weights = [t for t in tensors if t.kind == "weight"]

        def most(ts: list[QuantizedTensor], default: str) -> str:
            kinds = [t.dtype for t in ts]
            return max(set(kinds), key=kinds.count) if kinds else default

        return Recipe(activations=most(acts, "dynamic uint8" if self.format == "dynamic" else "uint8"),
                      weights=most(weights, "int8"), per_channel=any(t.per_channel for t in weights),
                      calibration=f"given {self.format} model",
                      symmetric_activations=bool(acts) and all(not np.any(t.zero_point) for t in acts))

    def summary(self) -> dict:
        """results.json's `given` section, without the file facts (the pipeline adds those)."""
        counts: dict[str, int] = {}
        for how in self.matched_by.values():
            counts[how] = counts.get(how, 0) + 1
        return {"format": self.format, "matched": len(self.matched_by) if self.qmap else None,
                "matched_by": counts, "unmatched": [u.to_dict() for u in self.unmatched], "notes": self.notes}

    def grid_ranges(self) -> dict[str, tuple[float, float]]:
        """Per matched activation: the real interval its grid covers (what the exported range is)."""
        out = {}
        for t in (self.qmap.tensors.values() if self.qmap else []):
            if t.kind == "activation" and not t.per_channel:
                lo, hi = t.real_range(())
                out[t.name] = (float(lo), float(hi))
        return out


# --------------------------------------------------------------------------- normalizing


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


# --------------------------------------------------------------------------- matching tensors to the float model


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


# --------------------------------------------------------------------------- reading


def read_given(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> GivenModel:
    """Read a given quantized model (normalized by the load stage: Constants as initializers, every node named).

    `GivenModel.model` is the model to measure: for QDQ a copy whose tensors and nodes matched by structure carry
    the float model's names (`adopt_float_names`), so the per-layer twin and the emulation model, which pair
    nodes and tensors by name, work on it as on qcheck's own models; otherwise `qmodel` itself."""
    fmt = given_format(qmodel)
    if fmt is None:
        raise ValueError("not a quantized model")  # the load stage refuses such a model before this
    if fmt == "qdq":
        return _read_qdq(qmodel, float_model)
    if fmt == "qoperator":
        return _read_qoperator(qmodel, float_model, TensorMatch(qmodel, float_model))
    return GivenModel("dynamic", None, model=qmodel, notes=[
        "dynamically quantized model: activations get their scale at run time, so there is no fixed grid; "
        "tensors are compared by name in whole-model mode (per-layer statistics, analyses and grid statistics "
        "such as rmse/scale and the exported-range checks do not apply)"])


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


def _read_qdq(given: onnx.ModelProto, float_model: onnx.ModelProto) -> GivenModel:
    qmodel = onnx.ModelProto()
    qmodel.CopyFrom(given)
    renamed = set(adopt_float_names(qmodel, float_model).values())
    raw = read_qdq(qmodel, float_model)
    f_tensors = {o for n in float_model.graph.node for o in n.output} | {i.name for i in float_model.graph.input}
    f_inits = GraphIndex(float_model).initializers
    tensors, unmatched, how = {}, [], {}
    q_producer = GraphIndex(qmodel).producer
    for name, t in raw.tensors.items():
        if t.kind == "activation" and name not in f_tensors:
            made = q_producer.get(name)
            unmatched.append(Unmatched(name, made.name if made is not None else "(input)",
                                       "no float tensor has this name, and its producer could not be matched to a "
                                       "float node of the same op type reading the same inputs"))
            continue
        if t.kind != "activation" and name not in f_inits:
            continue  # reported below with the other unmatched integer initializers
        by_name = (t.q_initializer or "").startswith(name) if t.kind != "activation" else name not in renamed
        how[name] = "name" if by_name else "structure"
        tensors[name] = t
    unmatched += _unmatched_weights(qmodel, {t.q_initializer for t in tensors.values() if t.q_initializer})
    return GivenModel("qdq", QDQMap(tensors, raw.quantized_nodes, raw.float_nodes), unmatched, how, model=qmodel)


def _unmatched_weights(qmodel: onnx.ModelProto, matched: set[str]) -> list[Unmatched]:
    out = []
    for node in qmodel.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in matched and \
                node.input[0] in {i.name for i in qmodel.graph.initializer}:
            out.append(Unmatched(node.input[0], node.name, "an integer initializer whose reader could not be matched "
                                                           "to a float node, so its float weight is unknown"))
    return out


def _read_qoperator(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, match: TensorMatch) -> GivenModel:
    index = GraphIndex(qmodel)
    inits = index.initializers
    f_inits = GraphIndex(float_model).initializers
    grids: dict[str, QuantizedTensor] = {}  # given integer tensor -> its grid (float name filled when matched)
    tensors: dict[str, QuantizedTensor] = {}
    unmatched: list[Unmatched] = []
    how: dict[str, str] = {}

    def array(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def grid(q_tensor: str, s_name: str, zp_name: str, kind: str, axis: int | None = None) -> QuantizedTensor | None:
        scale, zp = array(s_name), array(zp_name) if zp_name else None
        if scale is None:
            return None
        if zp is None:
            zp = np.zeros_like(scale, dtype=np.uint8)
        return QuantizedTensor(q_tensor, kind, zp.dtype.name, scale.astype(np.float32), zp,
                               axis if scale.size > 1 else None)

    def add(q_tensor: str, t: QuantizedTensor, node: onnx.NodeProto) -> None:
        f_name = match.to_float.get(q_tensor)
        if f_name is None:
            unmatched.append(Unmatched(q_tensor, node.name, "no float tensor has this name (with or without a "
                                                            "`_quantized` suffix), and its node could not be matched "
                                                            "to a float node by structure"))
            return
        if f_name in tensors:
            return
        t.name = f_name
        tensors[f_name], how[f_name] = t, match.how.get(q_tensor, "name")

    for node in qmodel.graph.node:
        spec = qop_spec(node)
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            t = grid(node.output[0], node.input[1], node.input[2] if len(node.input) > 2 else "", "activation")
            if t is not None:
                t.q_output = node.output[0]
                grids[node.output[0]] = t
                add(node.output[0], t, node)
        elif spec is not None and spec.output is not None and len(node.input) > spec.output[1]:
            t = grid(node.output[0], node.input[spec.output[0]], node.input[spec.output[1]], "activation")
            if t is None:
                unmatched.append(Unmatched(node.output[0], node.name, "its output scale is not a constant"))
                continue
            t.q_output = node.output[0]
            grids[node.output[0]] = t
            add(node.output[0], t, node)
            _qoperator_weights(node, spec, match, grid, f_inits, tensors, how, unmatched, inits)
        elif node.op_type in SAME_GRID_OPS and node.input and node.input[0] in grids:
            src = grids[node.input[0]]
            t = QuantizedTensor(node.output[0], "activation", src.dtype, src.scale, src.zero_point, src.axis,
                                q_output=node.output[0])
            grids[node.output[0]] = t
            add(node.output[0], t, node)
        elif node.op_type != "DequantizeLinear" and any(i in grids for i in node.input):
            unmatched.append(Unmatched(node.output[0] if node.output else "", node.name,
                                       f"an op qcheck does not read ({node.domain or 'ai.onnx'} {node.op_type}) "
                                       "takes integer inputs here: its output's grid is unknown"))
    for t in tensors.values():  # activations: the float nodes that read them (weights have theirs already)
        if t.kind == "activation":
            readers = [match.node_twin.get(c.name) for c in index.consumers.get(t.q_output or "", [])]
            t.consumers = [r.name for r in readers if r is not None]
    qnodes = [n.name for n in qmodel.graph.node if qop_spec(n) is not None]
    fnodes = [n.name for n in qmodel.graph.node
              if qop_spec(n) is None and n.op_type not in ("QuantizeLinear", "DequantizeLinear")
              and not any(i in grids for i in n.input)]
    notes = ["QOperator model: statistics are whole-model (float model against the given model's integer tensors, "
             "dequantized with their own scales); per-layer statistics and the switchable analyses need Q/DQ pairs "
             "and are not available for this format"]
    return GivenModel("qoperator", QDQMap(tensors, qnodes, fnodes), unmatched, how, notes, model=qmodel)


def _qoperator_weights(node, spec: QOp, match: TensorMatch, grid, f_inits, tensors, how, unmatched, inits) -> None:
    """A QOperator node's integer weights (and int32 bias) against the float node's initializers."""
    # the float op reads the tensors of the (tensor, scale, zero point) triples in order, then the bias
    triples = list(spec.activations) + list(spec.weights)
    float_pos = {p: k for k, (p, _s, _z) in enumerate(triples)}
    twin = match.node_twin.get(node.name)
    for w, s, z in triples:
        if w >= len(node.input) or node.input[w] not in inits:
            continue
        f_name = match.float_input(node, float_pos[w])
        t = grid(node.input[w], node.input[s], node.input[z], "weight", axis=_weight_axis(spec.float_op, twin))
        if t is None:
            continue
        if f_name is None or f_name not in f_inits:
            unmatched.append(Unmatched(node.input[w], node.name, "its node could not be matched to a float node, so "
                                                                 "its float weight is unknown"))
            continue
        t.name, t.q_initializer, t.consumers = f_name, node.input[w], [twin.name]
        tensors.setdefault(f_name, t)
        how.setdefault(f_name, "name" if node.input[w].startswith(f_name) else "structure")
        if spec.bias is not None and spec.bias < len(node.input) and node.input[spec.bias] in inits:
            _qoperator_bias(node, spec, t, match, f_inits, tensors, how, unmatched, inits, len(triples))


def _qoperator_bias(node, spec: QOp, weight: QuantizedTensor, match: TensorMatch, f_inits, tensors, how, unmatched,
                    inits, float_position: int) -> None:
    """The int32 bias: its scale is the input's scale times the weight's, its zero point 0."""
    name = node.input[spec.bias]
    f_name = match.float_input(node, float_position)
    x_scale = numpy_helper.to_array(inits[node.input[spec.activations[0][1]]]).astype(np.float32)
    if f_name is None or f_name not in f_inits:
        unmatched.append(Unmatched(name, node.name, "the float node's bias could not be found"))
        return
    scale = (x_scale * weight.scale).astype(np.float32)
    tensors.setdefault(f_name, QuantizedTensor(f_name, "bias", "int32", scale, np.zeros(scale.shape, np.int32),
                                               0 if scale.size > 1 else None, q_initializer=name,
                                               consumers=list(weight.consumers)))
    how.setdefault(f_name, how.get(weight.name, "structure"))


def _weight_axis(float_op: str, twin: onnx.NodeProto | None) -> int:
    """The output-channel axis per-channel scales run along: Conv [M, C, kh, kw] 0; MatMul [K, N] 1; Gemm by transB."""
    if float_op == "MatMul":
        return 1
    if float_op == "Gemm" and twin is not None:
        return 0 if next((a.i for a in twin.attribute if a.name == "transB"), 0) else 1
    return 0


# --------------------------------------------------------------------------- the run's "built" model


def given_scheme(given: GivenModel, source: Path, measure_path: Path, out_path: Path) -> BuiltScheme:
    """The given model in the form the rules and results take for a scheme qcheck built: int8 (8-bit activations),
    a16w8 (16-bit) or dynamic, so rules written for a scheme apply to a given model of that scheme. The user's
    file (`source`) is copied to `out_path`: the output folder holds the model its report is about."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out_path)
    scheme = "dynamic" if given.format == "dynamic" else ("a16w8" if given.activation_bits == 16 else "int8")
    notes = [f"quantized model given (`quantized:`), {given.format} format: qcheck measured it as it is"]
    if given.unmatched:
        notes.append(f"{len(given.unmatched)} quantized tensor(s) of the given model could not be matched to the "
                     f"float model and are not measured (e.g. {given.unmatched[0].tensor}: {given.unmatched[0].reason})")
    return BuiltScheme(scheme, out_path, measure_path, recipe=given.recipe(), notes=notes + given.notes)


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
            act.name = f"qcheck_unfolded::{f_node.name}"
            nodes.append(act)
            done.append(out)
    del qmodel.graph.node[:]
    qmodel.graph.node.extend(nodes)
    return done
