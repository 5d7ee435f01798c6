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
structure (`given_match.TensorMatch`): a node whose already matched inputs are read, at
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

from qcheck.errors import ModelError
from qcheck.model.graph import GraphIndex
from qcheck.quantize.calibrate import Recipe
from qcheck.quantize.given_formats import SAME_GRID_OPS, QOp, given_format, qop_spec, weight_axis
from qcheck.quantize.given_match import TensorMatch, adopt_float_names
from qcheck.quantize.given_qoperator import qoperator_to_qdq
from qcheck.quantize.qdq import QDQMap, QuantizedTensor, read_qdq
from qcheck.quantize.schemes import BuiltScheme


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
    qdq: onnx.ModelProto | None = None  # a QOperator model as the equivalent QDQ model (`given_qoperator`)

    @property
    def editable(self) -> onnx.ModelProto | None:
        """The QDQ form the per-layer twin, the emulation model and the search's edits work on (None: none)."""
        return self.model if self.format == "qdq" else self.qdq

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
    notes = ["QOperator model: whole-model statistics compare the float model with the given model's integer tensors "
             "dequantized with their own scales; per-layer statistics, the analyses and the search work on the "
             "equivalent QDQ model (each integer op as Q/DQ pairs made from its own scales around its float op)"]
    try:
        qdq = _read_qdq(qoperator_to_qdq(qmodel, float_model), float_model).model
    except ModelError as exc:
        qdq = None
        notes = [f"QOperator model: statistics are whole-model only; per-layer statistics, the analyses and the "
                 f"search need it as Q/DQ pairs, and {exc.problems[0].message}"]
    return GivenModel("qoperator", QDQMap(tensors, qnodes, fnodes), unmatched, how, notes, model=qmodel, qdq=qdq)


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
        t = grid(node.input[w], node.input[s], node.input[z], "weight", axis=weight_axis(spec.float_op, twin))
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
