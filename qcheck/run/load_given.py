"""Loading `quantized:`, a quantized model made elsewhere, and checking it against `model:` (its float original).

Part of the load stage (`load_stage.load`), so `qcheck validate` and `qcheck run` refuse the same files with
the same messages: a missing file, a model with nothing quantized (a float model given as `quantized:`), one
ONNX Runtime cannot load, and inputs or outputs that differ from the float model's (names, element types,
ranks, fixed dimensions): one message naming both files, exit 2.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from qcheck.errors import QcheckError
from qcheck.model.diagnose import check_runtime_loads
from qcheck.model.fetch import fetch_model
from qcheck.model.prepare import (
    constants_to_initializers,
    dtype_name,
    file_sha256,
    load_onnx,
    save_model,
)
from qcheck.policy.spec import Policy
from qcheck.quantize.given_edit import normalize_given
from qcheck.quantize.given_formats import given_format

GIVEN_MODEL_NAME = "given.onnx"


@dataclass
class GivenFile:
    """The policy's `quantized:` model, loaded and checked."""

    path: Path  # the user's file
    sha256: str
    format: str  # qdq | qoperator | dynamic
    model: onnx.ModelProto  # with Constant scales moved to initializers (`constants_to_initializers`)
    measure_path: Path | None = None  # a run's copy with the run's input shapes: the model measured


def load_given(policy: Policy, float_model: onnx.ModelProto, fetch: bool,
               log: Callable[[str], None] = lambda msg: None) -> GivenFile | None:
    spec = policy.quantized
    if spec is None:
        return None
    path = spec.path
    if spec.fetch and not path.exists():
        if not fetch:
            raise QcheckError(policy.problem_at(("quantized",), f"quantized model file not found: {path}",
                                                hint="`qcheck run` fetches it (quantized.fetch); run it once, or "
                                                     "fetch it yourself"))
        fetch_model(spec.fetch, path, log=log)
    model = load_onnx(path)
    fmt = given_format(model)
    if fmt is None:
        raise QcheckError(policy.problem_at(
            ("quantized",), f"the quantized model {path} is not quantized: it has no QuantizeLinear/DequantizeLinear, "
                            "QLinear* or integer (MatMulInteger, ConvInteger) op; it looks like a float model",
            hint="`quantized:` is the quantized model to check, `model:` its float original; to let qcheck "
                 "quantize the float model, remove `quantized:`"))
    check_io_match(policy, float_model, model)
    check_runtime_loads(path, model, path)
    constants_to_initializers(model)
    return GivenFile(path, file_sha256(path), fmt, model)


def prepare_given(given: GivenFile, shapes: dict[str, list[int]], work: Path) -> None:
    """The copy a run measures: the run's static input shapes, stale inferred shapes dropped."""
    model = normalize_given(copy.deepcopy(given.model), shapes)
    given.measure_path = work / GIVEN_MODEL_NAME
    save_model(model, given.measure_path)
    given.model = model


def _io(model: onnx.ModelProto, which: str) -> dict[str, tuple[str, list]]:
    inits = {i.name for i in model.graph.initializer}
    values = model.graph.input if which == "input" else model.graph.output
    out = {}
    for vi in values:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        out[vi.name] = (dtype_name(tt.elem_type), dims if tt.HasField("shape") else None)
    return out


def check_io_match(policy: Policy, float_model: onnx.ModelProto, given: onnx.ModelProto) -> None:
    """The given model must take the float model's inputs and give its outputs: same names, types and shapes."""
    diffs = []
    for which in ("input", "output"):
        f, q = _io(float_model, which), _io(given, which)
        for name in sorted(set(f) - set(q)):
            diffs.append(f"the float model has {which} '{name}', the quantized model has not")
        for name in sorted(set(q) - set(f)):
            diffs.append(f"the quantized model has {which} '{name}', the float model has not")
        for name in sorted(set(f) & set(q)):
            (ft, fs), (qt, qs) = f[name], q[name]
            if ft != qt:
                diffs.append(f"{which} '{name}' is {ft} in the float model, {qt} in the quantized model")
            elif fs is not None and qs is not None and (len(fs) != len(qs) or any(
                    a is not None and b is not None and a != b for a, b in zip(fs, qs))):
                diffs.append(f"{which} '{name}' has shape {_shape(fs)} in the float model, {_shape(qs)} in the "
                             "quantized model")
    if diffs:
        raise QcheckError(policy.problem_at(
            ("quantized",), f"the quantized model {policy.quantized.path} does not match the float model "
                            f"{policy.model.path}:\n    " + "\n    ".join(diffs),
            hint="`model:` must be the float model this quantized model was made from (same inputs and outputs); "
                 "a model with integer inputs or outputs cannot be fed the float data"))


def _shape(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
