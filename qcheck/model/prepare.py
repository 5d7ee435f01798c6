"""Loading an ONNX model and preparing it for quantization.

`prepare_model` turns the user's file into the float model every later step
uses as its reference:

1. load it (external data included) and refuse what qcheck cannot work with
   (not ONNX, truncated, already quantized), with a message that says why;
2. fix dynamic input dimensions from the policy or the data;
3. upgrade opsets below 13 (per-channel DequantizeLinear needs `axis`);
4. run ONNX Runtime's quantization pre-processing (shape inference and graph
   optimization); when symbolic shape inference fails, as it does on some
   detectors, fall back to ONNX shape inference, and record what happened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qcheck.errors import ModelError, Problem, first_line

ALREADY_QUANTIZED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "MatMulNBits", "DynamicQuantizeMatMul", "QGemm",
    "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
}
CONTROL_FLOW_OPS = {"If", "Loop", "Scan"}
MIN_OPSET = 13
_PROTO_LIMIT = 2 * 1024**3 - 1024**2  # protobuf cannot serialize 2 GiB; stay below with a margin


@dataclass
class InputInfo:
    name: str
    shape: list  # ints, or strings/None for dynamic dims
    dtype: str  # numpy dtype name

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)


@dataclass
class PreparedModel:
    """The float reference model on disk, and facts about it for the report."""

    path: Path  # the prepared (fixed, upgraded, pre-processed) float model
    source: Path  # the user's file
    sha256: str
    inputs: list[InputInfo]
    outputs: list[str]
    opset: int
    original_opset: int
    node_count: int
    op_counts: dict[str, int]
    preprocess: str  # what pre-processing ran, e.g. "symbolic shape inference + optimization"
    notes: list[str] = field(default_factory=list)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load a model, external data included, turning every failure into a clear message."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelError(Problem("model file not found", file=str(path))) from None
    except OSError as exc:
        raise ModelError(Problem(f"cannot read the model file: {exc.strerror or exc}", file=str(path))) from None
    if stat.S_ISDIR(info.st_mode):
        raise ModelError(Problem("model path is a folder; point `model:` at the .onnx file", file=str(path)))
    if not stat.S_ISREG(info.st_mode):
        raise ModelError(Problem("model path is not a regular file (a pipe, device or socket)", file=str(path),
                                 hint="point `model:` at the .onnx file"))
    if info.st_size == 0:
        raise ModelError(Problem("model file is empty", file=str(path)))
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ModelError(Problem(f"cannot read the model file: {exc.strerror or exc}", file=str(path),
                                 hint="check the file's permissions")) from None
    other = foreign_format(head)
    if other:
        raise ModelError(Problem(f"not an ONNX model: the file looks like {other}", file=str(path),
                                 hint="export the model to ONNX (e.g. torch.onnx.export, tf2onnx) and point "
                                      "`model:` at the .onnx file"))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except PermissionError as exc:
        raise ModelError(Problem(f"cannot read the model file: {exc.strerror or exc}",
                                 file=str(path), hint="check the file's permissions")) from None
    except Exception as exc:  # protobuf DecodeError and friends
        if head[:1] == b"\x08":  # starts like a ModelProto (field 1, ir_version) but does not parse
            raise ModelError(Problem(f"the ONNX file is truncated or corrupt: it starts like an ONNX model but does not "
                                     f"parse ({type(exc).__name__}: {exc})", file=str(path),
                                     hint="copy, download or export the model again; compare its size or sha256")) from None
        raise ModelError(Problem(f"not an ONNX model: the file does not parse as one ({type(exc).__name__}: {exc})",
                                 file=str(path), hint="point `model:` at an .onnx file")) from None
    _load_external_data(model, path)
    if not model.graph.node:
        raise ModelError(Problem("not a readable ONNX model: it has no graph nodes (wrong or truncated file?)",
                                 file=str(path)))
    if not model.graph.output:
        raise ModelError(Problem("the model declares no graph outputs, so there is nothing to run or compare",
                                 file=str(path), hint="export the model with its outputs (graph.output) declared"))
    return model


_MAGIC = [
    (b"PK\x03\x04", "a ZIP archive (a PyTorch .pt/.pth checkpoint, or a zipped model?)"),
    (b"\x80", "a Python pickle (a PyTorch or scikit-learn checkpoint?)"),
    (b"\x89HDF", "an HDF5 file (a Keras .h5 model?)"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x93NUMPY", "a NumPy .npy array"),
]


def foreign_format(head: bytes) -> str | None:
    """What a file that is certainly not ONNX looks like, from its first bytes (None: it may be ONNX)."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[4:8] == b"TFL3":
        return "a TensorFlow Lite model"
    if head[:1] in (b"{", b"<", b"#") or (head and all(32 <= c < 127 or c in (9, 10, 13) for c in head)):
        return "a text file"
    return None


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Bring in weights stored next to the model (models over 2 GB must do that), with clear errors."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    files = sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})
    if not files:
        return
    folder = path.parent.resolve()
    escaping = [f for f in files if Path(f).is_absolute() or not (folder / f).resolve().is_relative_to(folder)]
    if escaping:
        raise ModelError(Problem(f"model refers to external data outside its folder: {', '.join(escaping)}; qcheck "
                                 "reads external data only from the model's own folder", file=str(path),
                                 hint="keep the external data next to the .onnx, recorded by its file name"))
    missing = [f for f in files if not (path.parent / f).is_file()]
    if missing:
        raise ModelError(Problem(f"model refers to external data that is missing: {', '.join(missing)}",
                                 file=str(path), hint="keep the model's external data file(s) next to the .onnx, "
                                                      "with the names the model records"))
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            info = ExternalDataInfo(t)
            size = (path.parent / info.location).stat().st_size
            end = (info.offset or 0) + (info.length or 0)
            if end > size:
                raise ModelError(Problem(
                    f"the model's external data is truncated: tensor '{t.name}' needs bytes up to {end:,} of "
                    f"{info.location}, which holds {size:,}", file=str(path),
                    hint="copy the .onnx and its .data file again, together"))
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except OSError as exc:
        raise ModelError(Problem(f"cannot read the model's external data: {exc.strerror or exc}", file=str(path),
                                 hint="check the .data file's permissions")) from None
    except Exception as exc:
        raise ModelError(Problem(f"the model's external data is truncated or does not match the model "
                                 f"({type(exc).__name__}: {exc})", file=str(path),
                                 hint="copy the .onnx and its .data file again, together")) from exc


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):  # a type numpy has no dtype for (bfloat16, float8, string ...)
        return TensorProto.DataType.Name(elem_type).lower()


def graph_inputs(model: onnx.ModelProto) -> list[InputInfo]:
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        out.append(InputInfo(vi.name, dims, dtype_name(tt.elem_type)))
    return out


def check_not_quantized(model: onnx.ModelProto, path: Path) -> None:
    found = sorted({n.op_type for n in model.graph.node} & ALREADY_QUANTIZED_OPS)
    if found:
        raise ModelError(Problem(
            f"the model is already quantized (it contains {', '.join(found)}); `model:` must be the float model",
            file=str(path), hint="point `model:` at the float32 ONNX export; to check this quantized model, give it "
                                 "as `quantized:` and its float original as `model:`"))


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    """Set static input shapes and drop stale inferred shapes (they are inferred again)."""
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for v in shapes[vi.name]:
            dims.add().dim_value = int(v)
    del model.graph.value_info[:]


def initializers_as_constants(model: onnx.ModelProto) -> str | None:
    """Weights also listed as graph inputs (what IR version 3 required) become plain initializers, IR 4 or newer.

    As inputs they are values a caller may replace, so ONNX Runtime folds nothing through them, and every model
    qcheck derives would have to list its own new initializers as inputs too (an IR 3 model that lacks one does
    not load). qcheck never feeds them: `graph_inputs` leaves them out already.
    """
    inits = {i.name for i in model.graph.initializer}
    listed = [vi for vi in model.graph.input if vi.name in inits]
    if not listed and model.ir_version >= 4:
        return None
    kept = [vi for vi in model.graph.input if vi.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)
    return (f"{len(listed)} weight(s) were also listed as graph inputs (IR version 3 style); they are read as "
            f"constant weights" if listed else None)


def upgrade_opset(model: onnx.ModelProto, path: Path) -> tuple[onnx.ModelProto, str | None]:
    version = default_opset(model)
    if version >= MIN_OPSET:
        return model, None
    try:
        upgraded = onnx.version_converter.convert_version(model, MIN_OPSET)
        return upgraded, f"opset upgraded from {version} to {MIN_OPSET} (per-channel quantization needs it)"
    except Exception as exc:
        raise ModelError(Problem(
            f"the model uses opset {version}; upgrading it to {MIN_OPSET} failed: {exc}", file=str(path),
            hint="export the model with opset 13 or newer")) from exc


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Save a model, with external data when it is too large for one protobuf."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > _PROTO_LIMIT:
        data_name = path.name + ".data"
        if (path.parent / data_name).exists():
            (path.parent / data_name).unlink()
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def run_preprocess(src: Path, dst: Path, source: Path, optimize: bool = True) -> str:
    """ORT's quant_pre_process, falling back when symbolic shape inference fails (`source`: the user's file).

    `optimize=False` keeps the graph as given (a quantized model made elsewhere names the float model's
    tensors as they were; ORT's fusions would rename some)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    large = src.stat().st_size > _PROTO_LIMIT or (src.parent / (src.name + ".data")).exists()
    attempts = [
        ("symbolic shape inference + optimization", {}),
        ("ONNX shape inference + optimization (symbolic shape inference failed)", {"skip_symbolic_shape": True}),
        ("ONNX shape inference only (optimization failed)", {"skip_symbolic_shape": True, "skip_optimization": True}),
    ] if optimize else [
        ("symbolic shape inference (no optimization: a given quantized model names the float graph as it is)",
         {"skip_optimization": True}),
        ("ONNX shape inference only (symbolic shape inference failed)",
         {"skip_symbolic_shape": True, "skip_optimization": True}),
    ]
    errors = []
    for label, kwargs in attempts:
        try:
            _quiet_ort_logs()
            quant_pre_process(str(src), str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                              external_data_location=dst.name + ".data" if large else None, **kwargs)
            onnx.checker.check_model(str(dst))
            return label
        except Exception as exc:  # ORT raises many kinds here; try the next, safer variant
            errors.append(f"{label.split(' (')[0]}: {type(exc).__name__}: {first_line(exc, {src: source, dst: source})}")
            cause = exc
    raise ModelError(Problem("ONNX Runtime's quantization pre-processing failed:\n    " + "\n    ".join(errors),
                             file=str(source), hint="check that ONNX Runtime can run the model")) from cause


def _quiet_ort_logs() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    # its failures are expected (we fall back) and reported by us; keep its tracebacks off the terminal
    logging.getLogger("onnxruntime.quantization.shape_inference").setLevel(logging.CRITICAL)
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")


def prepare_model(model: onnx.ModelProto, source: Path, shapes: dict[str, list[int]], workdir: Path,
                  optimize: bool = True) -> PreparedModel:
    """Check, fix shapes, upgrade opset and pre-process a loaded model; returns the float reference model.
    `optimize=False`: no graph optimization and no bias reshaping (see run_preprocess)."""
    check_not_quantized(model, source)
    original_opset = default_opset(model)
    inputs = graph_inputs(model)
    names = {i.name for i in inputs}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise ModelError(Problem(f"the policy names input(s) the model does not have: {', '.join(unknown)}; "
                                 f"the model's inputs are: {', '.join(sorted(names))}", file=str(source)))
    fix_input_shapes(model, shapes)
    notes = []
    model, note = upgrade_opset(model, source)
    if note:
        notes.append(note)
    note = initializers_as_constants(model)
    if note:
        notes.append(note)
    flow = sorted({n.op_type for n in model.graph.node} & CONTROL_FLOW_OPS)
    if flow:
        notes.append(f"the model has control flow ({', '.join(flow)}); their subgraphs stay in float")
    fixed = workdir / "fixed.onnx"
    save_model(model, fixed)
    from qcheck.model.diagnose import check_runtime_loads

    check_runtime_loads(fixed, model, source)
    prepared = workdir / "float.onnx"
    label = run_preprocess(fixed, prepared, source, optimize)
    final = onnx.load(str(prepared), load_external_data=False)
    external = any(i.data_location == TensorProto.EXTERNAL for i in final.graph.initializer)
    named = name_nodes(final)
    flat = [] if external or not optimize else flatten_row_biases(final)  # external data stay where they are
    # without optimization Constant nodes stay: as initializers, weights are found as ORT's fold makes them
    constants = 0 if external or optimize else constants_to_initializers(final)
    if named or flat or constants:  # with external data, only the graph is written again
        if external:
            onnx.save_model(final, str(prepared))
        else:
            save_model(final, prepared)
    if named:
        notes.append(f"{len(named)} unnamed node(s) named after their op type and the tensor they write (e.g. "
                     f"{named[0]}), so that findings, per-layer statistics and exclusions can name them")
    if flat:
        notes.append(f"{len(flat)} Gemm bias(es) of shape [1, N] made [N] (same numbers), so that ONNX Runtime "
                     f"can quantize their weights per channel: {', '.join(flat)}")
    op_counts: dict[str, int] = {}
    for n in final.graph.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    return PreparedModel(
        path=prepared,
        source=source,
        sha256=file_sha256(source),
        inputs=graph_inputs(final),
        outputs=[o.name for o in final.graph.output],
        opset=default_opset(final),
        original_opset=original_opset,
        node_count=len(final.graph.node),
        op_counts=dict(sorted(op_counts.items(), key=lambda kv: -kv[1])),
        preprocess=label,
        notes=notes,
    )


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Make Constant nodes initializers, in place (same numbers): exporters (Paddle, PyTorch, NNCF) write weights,
    scales and zero points as Constant nodes, and readers look for parameters one way. Returns how many."""
    keep, moved = [], 0
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and value.HasField("t"):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


def name_nodes(model: onnx.ModelProto) -> list[str]:
    """Give every node a stable, unique, printable name: a node without one (exporters leave them empty; ORT's
    pre-processing adds some, e.g. a Flatten) or sharing one is named after what it writes, `op:first_output`.
    Returns the names given."""
    seen: set[str] = set()
    given = []
    for n in model.graph.node:
        name = n.name
        if not name or name in seen:
            base = f"{n.op_type}:{n.output[0] if n.output else 'node'}"
            name, k = base, 1
            while name in seen:
                k += 1
                name = f"{base}#{k}"
            n.name = name
            given.append(name)
        seen.add(name)
    return given


def flatten_row_biases(model: onnx.ModelProto) -> list[str]:
    """Reshape [1, N] Gemm biases that feed nothing else to [N], in place; returns their names.

    ORT's MatMul+Add fusion keeps the Add's [1, N] shape; ORT's per-channel quantizer then fails on it
    (see quantize.calibrate.per_tensor_fallbacks). [1, N] and [N] broadcast alike in Gemm.
    """
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    done = []
    for node in model.graph.node:
        bias = inits.get(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 else None
        if bias is None or len(bias.dims) != 2 or bias.dims[0] != 1 or uses[bias.name] != 1:
            continue
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias).reshape(-1), bias.name))
        done.append(bias.name)
    return done


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
