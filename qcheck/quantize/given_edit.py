"""The search's remedies applied to a quantized model made elsewhere (`quantized:`): edits to *that* model.

qcheck's own candidates are rebuilt from the float model by ORT's quantizer (`calibrate.build_quantized`). A
given model is not: its weights and ranges are what the user brings (a QAT export's trained grids), so a
candidate is the given QDQ model with the smallest edits the search's recipe asks for:

- a node kept in float (`Recipe.exclude_nodes`): it reads the float tensors before its inputs' Q/DQ pairs (the
  pairs stay for the nodes that still read them; a pair nothing reads any more goes), and the float model's
  weights and bias instead of the dequantized integer ones, so ONNX Runtime computes it in float as a node
  qcheck's own recipe excludes;
- a tensor given int16 (`overrides[t].quant_type`): its Q/DQ pair on a 16-bit grid over the same real range
  (com.microsoft Q/DQ below opset 21, as ORT's quantizer writes them);
- a tensor given a new range (`overrides[t].rmin/rmax`, or every activation when the recipe's calibration method
  differs from the given model's): its grid recomputed over that range with ORT's own `compute_scale_zp`.

The edits are the difference between the search's recipe and the given model's own (`given_base_recipe`), so
`qcheck apply` rebuilds the same bytes from the user's file, the float model and the lock (`rebuild_given`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qcheck.errors import ModelError, Problem
from qcheck.model.graph import GraphIndex
from qcheck.model.prepare import constants_to_initializers, fix_input_shapes, load_onnx, name_nodes, save_model
from qcheck.quantize.calibrate import Ranges, Recipe
from qcheck.quantize.given import read_given
from qcheck.quantize.given_formats import UNFOLDED, fold_weight_quantizers, unfold_activations
from qcheck.quantize.grid import qlimits
from qcheck.quantize.qdq import float_name

GIVEN_METHOD = "given"  # Recipe.calibration / Ranges.method of the given model's own grids
SIXTEEN = ("int16", "uint16")
# recipe fields an edit to a given model cannot change (they say how ORT quantizes weights from the float model)
FIXED_FIELDS = ("weights", "per_channel", "symmetric_activations", "reduce_range", "exclude_op_types")


@dataclass
class Edits:
    """What a candidate changes in the given model."""

    float_nodes: list[str] = field(default_factory=list)  # float-model node names computed in float
    tensors: dict[str, dict] = field(default_factory=dict)  # float tensor -> {quant_type?, rmin?, rmax?}
    activations: str | None = None  # a scheme switch: every activation's type

    def __bool__(self) -> bool:
        return bool(self.float_nodes or self.tensors or self.activations)


def normalize_given(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """The form of a given model qcheck reads and edits (in place; also returned): Constant parameters as
    initializers, every node named, weights quantized at run time folded, the run's static input shapes."""
    constants_to_initializers(model)
    name_nodes(model)
    fold_weight_quantizers(model)
    fix_input_shapes(model, {k: v for k, v in shapes.items() if k in {i.name for i in model.graph.input}})
    return model


def given_base_recipe(recipe: Recipe, given: onnx.ModelProto, float_model: onnx.ModelProto) -> Recipe:
    """The given model (`GivenModel.model`) as a recipe the search changes: its own grids (`calibration: given`),
    and as excluded every float-model node that reads nothing dequantized there (it computes in float on float
    inputs, or is not there at all: a node it has under another name was not matched, so it cannot be edited);
    keeping one of those float changes nothing and costs nothing. A node the given model computes in float on
    dequantized inputs (a Reshape or Softmax between pairs) still sees the quantized values: it stays editable."""
    base = copy.deepcopy(recipe)
    base.calibration = GIVEN_METHOD
    dequantized = {n.output[0] for n in given.graph.node if n.op_type == "DequantizeLinear"}
    reads = {n.name for n in given.graph.node if any(i in dequantized for i in n.input)}
    base.exclude_nodes = sorted(n.name for n in float_model.graph.node if n.name and n.name not in reads)
    base.overrides = {}
    return base


def edits_of(recipe: Recipe, base: Recipe, ranges: Ranges | None) -> Edits:
    """The search's recipe as edits to the given model (`base`: `given_base_recipe`); `ranges`: the recipe's
    calibration method's ranges, read only when it is not the given model's own."""
    fixed = [f for f in FIXED_FIELDS if getattr(recipe, f) != getattr(base, f)]
    if fixed:
        raise ModelError(Problem(f"{', '.join(fixed)} cannot be changed on a given quantized model (qcheck edits "
                                 "its Q/DQ pairs; it does not quantize its weights again)"))
    tensors: dict[str, dict] = {}
    if recipe.calibration != base.calibration:
        if ranges is None or ranges.method != recipe.calibration:
            raise ValueError(f"edits_of: the {recipe.calibration} ranges are needed")
        tensors = {t: {"rmin": float(lo), "rmax": float(hi)} for t, (lo, hi) in sorted(ranges.ranges.items())}
    for t, o in recipe.overrides.items():
        tensors[t] = {**tensors.get(t, {}), **o}
    return Edits(sorted(set(recipe.exclude_nodes) - set(base.exclude_nodes)), dict(sorted(tensors.items())),
                 recipe.activations if recipe.activations != base.activations else None)


def apply_edits(given: onnx.ModelProto, float_model: onnx.ModelProto, edits: Edits) -> onnx.ModelProto:
    """A copy of the given QDQ model (normalized, float names adopted: `GivenModel.model`) with the edits."""
    model = onnx.ModelProto()
    model.CopyFrom(given)
    if not edits:
        return model
    if edits.float_nodes:
        unfold_activations(model, float_model)  # a Relu folded into a grid must compute again when its pair goes
        _keep_float(model, float_model, edits.float_nodes)
    _regrid(model, edits)
    _drop_unread(model)
    return model


def build_given(given: onnx.ModelProto, float_model: onnx.ModelProto, base: Recipe, ranges: Ranges | None,
                recipe: Recipe, out: Path) -> Path:
    """The search's candidate (or the chosen fix) for a given model: `apply_edits` of the recipe's edits."""
    save_model(apply_edits(given, float_model, edits_of(recipe, base, ranges)), out)
    return out


# --------------------------------------------------------------------------- keep a node float


def _keep_float(model: onnx.ModelProto, float_model: onnx.ModelProto, nodes: list[str]) -> None:
    index, f_index = GraphIndex(model), GraphIndex(float_model)
    inits = index.initializers
    added: dict[str, str] = {}  # float weight -> its name in the model
    # a Relu/Clip the given model folded into its producer's grid is back as UNFOLDED + name
    found = {n: index.by_name.get(n) or index.by_name.get(UNFOLDED + n) for n in nodes}
    missing = [n for n, node in found.items() if node is None]
    if missing:
        raise ModelError(Problem(f"node(s) {', '.join(missing[:3])} are not in the given quantized model"))
    for name, node in found.items():
        twin = f_index.by_name.get(name)
        for k, tensor in enumerate(node.input):
            dq = index.producer.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            source = dq.input[0]
            if source in inits:  # a weight or bias: the float model's, where the float node reads one here
                f_name = twin.input[k] if twin is not None and k < len(twin.input) else None
                if f_name and f_name in f_index.initializers:
                    node.input[k] = added.get(f_name) or _add_float_weight(model, f_index.initializers[f_name], index)
                    added[f_name] = node.input[k]
                continue
            q = index.producer.get(source)
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]  # the float tensor before the pair


def _add_float_weight(model: onnx.ModelProto, weight: onnx.TensorProto, index: GraphIndex) -> str:
    """The float model's weight, under its own name unless the given model uses that name (a tensor matched to
    the float weight by structure carries it)."""
    name = weight.name if weight.name not in index.initializers and weight.name not in index.producer \
        else _unique(f"{weight.name}_float", index)
    init = onnx.TensorProto()
    init.CopyFrom(weight)
    init.name = name
    model.graph.initializer.append(init)
    index.initializers[name] = init
    return name


# --------------------------------------------------------------------------- new grids


def _regrid(model: onnx.ModelProto, edits: Edits) -> None:
    """Give each named activation's Q/DQ pair(s) (every one's, for a scheme switch) a new type and/or range."""
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    index = GraphIndex(model)
    inits = index.initializers
    outputs = {o.name for o in model.graph.output}
    new_inits = []
    for q in list(model.graph.node):
        if q.op_type != "QuantizeLinear" or q.input[0] in inits or len(q.input) < 3 or q.input[1] not in inits \
                or q.input[2] not in inits:
            continue
        tensor = float_name(q.input[0], outputs)
        o = edits.tensors.get(tensor)
        if o is None and edits.activations is None:
            continue
        o = {**({"quant_type": edits.activations} if edits.activations else {}), **(o or {})}
        scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32)
        zp = numpy_helper.to_array(inits[q.input[2]])
        if scale.size != 1:
            continue  # per-channel activations: no single range to move
        dtype = zp.dtype.name
        lo, hi = qlimits(dtype)
        z = int(zp.reshape(()))
        rmin, rmax = float(scale.reshape(())) * (lo - z), float(scale.reshape(())) * (hi - z)
        symmetric = lo < 0 and z == 0  # signed with zero point 0: keep it symmetric
        new_type = o.get("quant_type", dtype)
        rmin, rmax = o.get("rmin", rmin), o.get("rmax", rmax)
        qmin, qmax = qlimits(new_type)
        if symmetric and qmin < 0:
            qmin = -qmax  # ORT's symmetric signed grids: [-127, 127], [-32767, 32767]
        new_zp, new_scale = compute_scale_zp(np.float32(rmin), np.float32(rmax), np.array(qmin, new_type),
                                             np.array(qmax, new_type), symmetric=symmetric)
        stem = f"{tensor}_qcheck"
        s_name, z_name = _unique(f"{stem}_scale", index), _unique(f"{stem}_zero_point", index)
        new_inits += [numpy_helper.from_array(np.asarray(new_scale, np.float32).reshape(()), s_name),
                      numpy_helper.from_array(np.asarray(new_zp).astype(new_type).reshape(()), z_name)]
        index.initializers[s_name] = index.initializers[z_name] = new_inits[-1]  # reserve the names
        for node in [q] + [c for c in index.consumers.get(q.output[0], []) if c.op_type == "DequantizeLinear"]:
            node.input[1], node.input[2] = s_name, z_name
            if new_type in SIXTEEN:
                node.domain = "" if _opset(model) >= 21 else "com.microsoft"
    model.graph.initializer.extend(new_inits)
    if any(n.domain == "com.microsoft" for n in model.graph.node) and \
            not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    edited = {n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    keep = [vi for vi in model.graph.value_info if vi.name not in edited]  # integer types that may have changed
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _unique(name: str, index: GraphIndex) -> str:
    out, k = name, 1
    while out in index.initializers or out in index.producer:
        out, k = f"{name}_{k}", k + 1
    return out


def _drop_unread(model: onnx.ModelProto) -> None:
    """Q/DQ nodes nothing reads any more, then initializers nothing reads."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    read = {i for n in model.graph.node for i in n.input}
    unused = [i for i in model.graph.initializer if i.name not in read]
    for init in unused:
        model.graph.initializer.remove(init)


# --------------------------------------------------------------------------- `qcheck apply`


def rebuild_given(given_path: Path, float_model: onnx.ModelProto, shapes: dict[str, list[int]], base: Recipe,
                  ranges: Ranges | None, recipe: Recipe, out: Path) -> Path:
    """What `qcheck apply` does for a lock on a given model: the user's file read as a run reads it, then the
    locked recipe's edits."""
    model = normalize_given(load_onnx(given_path), shapes)
    return build_given(read_given(model, float_model).editable, float_model, base, ranges, recipe, out)
