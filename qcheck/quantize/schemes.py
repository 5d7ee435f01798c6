"""Post-training quantization schemes (int8, int8-only, 16x8, dynamic range, float16): building each scheme's model from the float model.

- `int8`: full integer with float fallback: ONNX Runtime's QDQ quantizer with the
  policy's recipe; an op ORT has no integer kernel for computes in float
  between a DequantizeLinear and a QuantizeLinear.
- `int8-only`: integer only. Every op that would compute in float is an error
  listing them all. The model's inputs and outputs are integer too (the
  policy's `quantization.io`: int8 or uint8): the input QuantizeLinear and the
  output DequantizeLinear are removed, and their scale and zero point are
  recorded so a caller can quantize inputs and dequantize outputs.
- `a16w8`: int16 activations, int8 weights, int32 bias (what ORT's QDQ
  quantizer writes); the ops that compute in float are listed.
- `dynamic`: ORT's `quantize_dynamic`: int8 weights, activations quantized at
  run time (DynamicQuantizeLinear); no calibration data.
- `float16`: weights and compute in float16 (ORT's float16 converter); inputs
  and outputs stay float32 unless the policy's `quantization.io` is float16.

Computation only: the pipeline measures and reports what is built here.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qcheck.errors import ModelError, PolicyError, Problem, first_line
from qcheck.model.graph import GraphIndex
from qcheck.policy.schemes import CALIBRATED, SCHEMES
from qcheck.quantize.calibrate import (
    QUANT_TYPES,
    Ranges,
    Recipe,
    build_quantized,
    per_tensor_fallbacks,
    quantizable_op_types,
)

# Ops that only read a tensor's shape or produce integers: never "float compute".
_SHAPE_OPS = {"Shape", "Size", "Constant", "ConstantOfShape", "NonZero", "ArgMax", "ArgMin"}
_ELEM = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8, "float16": TensorProto.FLOAT16,
         "float32": TensorProto.FLOAT}


@dataclass
class BuiltScheme:
    """One scheme's model, and what the measurement and report need to know about it."""

    scheme: str
    path: Path  # the model a user deploys
    measure_path: Path  # the model with float inputs and outputs that is measured (== path unless int8-only)
    io: str = "float32"  # element type of the deployed model's inputs and outputs
    recipe: Recipe | None = None
    float_ops: list[dict] = field(default_factory=list)  # {node, op_type}: nodes that compute in float
    io_params: dict[str, dict] = field(default_factory=dict)  # int8-only: tensor -> {scale, zero_point, dtype, role}
    build_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def has_qdq(self) -> bool:
        return self.scheme in CALIBRATED

    def describe(self) -> dict:
        return {"scheme": self.scheme, "model": self.path.name, "io": self.io,
                "recipe": self.recipe.to_dict() if self.recipe else None,
                "float_ops": self.float_ops, "io_params": self.io_params,
                "build_seconds": round(self.build_seconds, 3), "notes": self.notes}


def resolve_io(scheme: str, io: str | None, target_io: str = "float32") -> str:
    """The input/output type a scheme's model gets: the policy's where it fits the scheme."""
    if scheme == "int8-only":
        if io in ("int8", "uint8"):
            return io
        if io is not None:
            raise PolicyError(Problem(f"quantization.io: {io} does not fit scheme int8-only, whose inputs and outputs "
                                      "are integer", hint="set quantization.io to int8 or uint8"))
        return target_io if target_io in ("int8", "uint8") else "int8"
    if scheme == "float16":
        return io if io in ("float32", "float16") else "float32"
    return "float32"


def scheme_recipe(scheme: str, base: Recipe, io: str = "int8") -> Recipe:
    """The QDQ recipe of a calibrated scheme, from the policy's recipe."""
    if scheme == "int8":
        return base
    if scheme == "int8-only":
        # ORT gives every activation one type: the inputs' and outputs' type is the activations' type.
        return replace(base, activations=io)
    if scheme == "a16w8":
        # an 8-bit type set for the int8 scheme would undo the scheme on that tensor; a 16-bit one (int16 weights,
        # an int16 tensor) is what the user asked for on top of it and stays
        overrides = {k: {f: v for f, v in o.items() if f != "quant_type" or v in ("int16", "uint16")}
                     for k, o in base.overrides.items()}
        return replace(base, activations="int16", weights="int8", overrides=overrides)
    raise ValueError(f"scheme {scheme} has no QDQ recipe")


def integer_op_types(recipe: Recipe) -> set[str]:
    """Op types ORT's QDQ quantizer gives integer inputs and outputs of their own (the ones build_quantized asks for)."""
    return set(quantizable_op_types(recipe.exclude_op_types))


def float_compute_nodes(model: onnx.ModelProto, integer_ops: set[str], exclude_nodes: list[str] = ()) -> list[dict]:
    """Nodes of the float model that compute on float values and that the quantizer leaves in float."""
    index = GraphIndex(model)
    types, inits = index.types, index.initializers
    out = []
    for node in model.graph.node:
        if node.op_type in _SHAPE_OPS:
            continue
        if node.op_type in integer_ops and node.name not in exclude_nodes:
            continue
        known = [types[o] for o in node.output if o in types]
        if known:
            is_float = any(t in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE) for t in known)
        else:
            is_float = any(types.get(i) == TensorProto.FLOAT for i in node.input if i and i not in inits)
        if is_float:
            reason = "excluded by the policy" if node.name in exclude_nodes else "no integer kernel in ONNX Runtime's quantizer"
            out.append({"node": node.name, "op_type": node.op_type, "reason": reason})
    return out


# --------------------------------------------------------------------------- building


def build_scheme(scheme: str, float_model: Path, out_path: Path, recipe: Recipe, ranges: Ranges | None = None,
                 io: str | None = None, target_io: str = "float32", source: Path | None = None) -> BuiltScheme:
    """Build `scheme`'s model at `out_path` from the prepared float model (`source`: the user's file, for messages)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme}")
    io = resolve_io(scheme, io, target_io)
    start = time.perf_counter()
    if scheme in CALIBRATED:
        if ranges is None:
            raise PolicyError(Problem(f"scheme {scheme} needs calibration data (data.calibration)",
                                      hint="add data.calibration, or use scheme dynamic or float16"))
        built = _build_calibrated(scheme, float_model, out_path, scheme_recipe(scheme, recipe, io), ranges, io,
                                  source)
        built.notes += _dropped_overrides(recipe, built.recipe)
    elif scheme == "dynamic":
        built = build_dynamic(float_model, out_path, recipe, source)
    else:
        built = build_float16(float_model, out_path, io, recipe, source)
    built.build_seconds = time.perf_counter() - start
    return built


def _dropped_overrides(asked: Recipe, built: Recipe) -> list[str]:
    """A note naming the tensors whose override type the scheme did not keep (a16w8 drops 8-bit types)."""
    dropped = sorted(k for k, o in asked.overrides.items()
                     if "quant_type" in o and built.overrides.get(k, {}).get("quant_type") != o["quant_type"])
    if not dropped:
        return []
    shown = ", ".join(dropped[:5]) + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else "")
    return [f"quantization.overrides: the quant_type of {shown} is not used under this scheme ({built.activations} "
            f"activations, {built.weights} weights; an 8-bit type would undo it on that tensor)"]


def _build_calibrated(scheme: str, float_model: Path, out_path: Path, recipe: Recipe, ranges: Ranges,
                      io: str, source: Path | None) -> BuiltScheme:
    model = onnx.load(str(float_model))
    float_ops = float_compute_nodes(model, integer_op_types(recipe), recipe.exclude_nodes)
    if scheme == "int8-only" and float_ops:
        raise ModelError(_float_island_problem(float_ops))
    if scheme != "int8-only":
        qpath = build_quantized(float_model, ranges, recipe, out_path, source=source)
        notes = list(per_tensor_fallbacks(model, recipe).values())
        if scheme == "a16w8":
            notes.append("ONNX Runtime's CPU has no int16 kernels: the int16 Q/DQ pairs are run as float ops, so the "
                         "accuracy is that of 16x8 hardware but the latency here is not")
        return BuiltScheme(scheme, qpath, qpath, "float32", recipe, float_ops, notes=notes)
    measure_path = out_path.with_name(out_path.stem + ".float-io.onnx")
    build_quantized(float_model, ranges, recipe, measure_path, source=source)
    qmodel = onnx.load(str(measure_path))
    io_params = integer_io(qmodel, io)
    onnx.save(qmodel, str(out_path))
    return BuiltScheme(scheme, out_path, measure_path, io, recipe, [], io_params,
                       notes=[f"inputs and outputs are {io}; the measured model is the same graph with the input "
                              f"QuantizeLinear and output DequantizeLinear kept ({measure_path.name})"])


def _float_island_problem(float_ops: list[dict]) -> Problem:
    by_type: dict[str, list[str]] = {}
    for f in float_ops:
        by_type.setdefault(f["op_type"], []).append(f["node"] or "(unnamed)")
    parts = [f"{op} ({len(nodes)}: {', '.join(nodes)})" for op, nodes in sorted(by_type.items())]
    return Problem(f"scheme int8-only: {len(float_ops)} node(s) cannot be quantized and would compute in float: "
                   + "; ".join(parts),
                   hint="use scheme int8 (float fallback) or a16w8 for these ops, or replace them in the model "
                        "(e.g. HardSigmoid by Clip-based ops the quantizer supports)")


def integer_io(qmodel: onnx.ModelProto, io: str) -> dict[str, dict]:
    """Make a QDQ model's float inputs and outputs integer, in place; returns their quantization parameters."""
    graph = qmodel.graph
    index = GraphIndex(graph)  # the graph before the edits below
    inits, producers = index.initializers, index.producer
    params: dict[str, dict] = {}
    remove: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}
    problems = []

    def qparams(node: onnx.NodeProto) -> dict:
        scale = numpy_helper.to_array(inits[node.input[1]])
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        return {"scale": float(scale.reshape(-1)[0]), "zero_point": int(zp.reshape(-1)[0]), "dtype": zp.dtype.name}

    for vi in graph.input:
        if vi.name in inits or vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        readers = index.readers(vi.name)
        bad = [n for n in readers if n.op_type != "QuantizeLinear"]
        if bad or len(readers) != 1:
            problems.append(Problem(f"scheme int8-only: input '{vi.name}' is read in float by "
                                    f"{', '.join(f'{n.name} ({n.op_type})' for n in bad) or 'several QuantizeLinear nodes'}"))
            continue
        q = readers[0]
        params[vi.name] = {**qparams(q), "role": "input"}
        remove.append(q)
        rename[q.output[0]] = vi.name
        vi.type.tensor_type.elem_type = _ELEM[io]
    for vi in graph.output:
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        dq = producers.get(vi.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            problems.append(Problem(f"scheme int8-only: output '{vi.name}' is computed in float by "
                                    f"{dq.name if dq is not None else 'no node'} ({dq.op_type if dq is not None else '-'})"))
            continue
        params[vi.name] = {**qparams(dq), "role": "output"}
        remove.append(dq)
        rename[dq.input[0]] = vi.name
        vi.type.tensor_type.elem_type = _ELEM[io]
    if problems:
        raise ModelError(problems)
    wrong = {n: p["dtype"] for n, p in params.items() if p["dtype"] != io}
    if wrong:
        raise ModelError(Problem(f"scheme int8-only: inputs/outputs were quantized to {sorted(set(wrong.values()))}, "
                                 f"not {io}: {', '.join(wrong)}"))
    kept = [n for n in graph.node if not any(n is r for r in remove)]
    for node in kept:
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
        for j, name in enumerate(node.output):
            if name in rename:
                node.output[j] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    keep_vi = [v for v in graph.value_info if v.name not in rename]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
    return params


def build_dynamic(float_model: Path, out_path: Path, recipe: Recipe, source: Path | None = None) -> BuiltScheme:
    """ORT's dynamic quantization: int8 weights of Conv/MatMul, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    weight_type = getattr(QuantType, QUANT_TYPES[recipe.weights])
    op_types = sorted(set(IntegerOpsRegistry) - set(recipe.exclude_op_types))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT's "consider pre-processing"
    try:
        quantize_dynamic(float_model, out_path, op_types_to_quantize=op_types, per_channel=recipe.per_channel,
                         reduce_range=recipe.reduce_range, weight_type=weight_type,
                         nodes_to_exclude=list(recipe.exclude_nodes))
    except Exception as exc:
        raise ModelError(Problem(f"ONNX Runtime could not quantize the model dynamically: {type(exc).__name__}: "
                                 f"{first_line(exc, {float_model: source or 'the model'})}",
                                 file=str(source) if source else None)) from exc
    model = onnx.load(str(float_model))
    kept = float_compute_nodes(model, set(op_types), recipe.exclude_nodes)
    for f in kept:
        if f["reason"] != "excluded by the policy":
            f["reason"] = f"dynamic quantization covers {', '.join(op_types)} only"
    qmodel = onnx.load(str(out_path))
    integer = sum(1 for n in qmodel.graph.node if n.op_type in ("ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"))
    dyn_recipe = replace(recipe, activations="dynamic uint8", calibration="none", overrides={})
    return BuiltScheme("dynamic", out_path, out_path, "float32", dyn_recipe, kept,
                       notes=[f"{integer} node(s) run integer kernels on activations quantized at run time; "
                              "the others compute in float32"])


def build_float16(float_model: Path, out_path: Path, io: str, recipe: Recipe,
                  source: Path | None = None) -> BuiltScheme:
    """ORT's float16 converter; inputs and outputs stay float32 unless io is float16."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(float_model))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(recipe.exclude_op_types))
    try:
        m16 = convert_float_to_float16(copy.deepcopy(model), keep_io_types=(io == "float32"), op_block_list=block,
                                       node_block_list=list(recipe.exclude_nodes))
    except Exception as exc:
        raise ModelError(Problem(f"ONNX Runtime's float16 converter failed: {type(exc).__name__}: "
                                 f"{first_line(exc, {float_model: source or 'the model'})}",
                                 file=str(source) if source else None)) from exc
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m16, str(out_path))
    kept = [{"node": n.name, "op_type": n.op_type, "reason": "kept in float32 by the policy or the converter"}
            for n in model.graph.node if n.op_type in block or n.name in recipe.exclude_nodes]
    f16_recipe = replace(recipe, activations="float16", weights="float16", per_channel=False, calibration="none",
                         overrides={})
    return BuiltScheme("float16", out_path, out_path, io, f16_recipe, kept)


def size_bytes(path: Path) -> int:
    """A model's size on disk, external data files included."""
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    files = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return total + sum((path.parent / f).stat().st_size for f in files if (path.parent / f).exists())
