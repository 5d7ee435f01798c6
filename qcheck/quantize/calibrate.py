"""Calibrate once, then build any quantized variant from a recipe.

ONNX Runtime's `quantize_static` calibrates every time it is called. qcheck
splits the two steps, as `quantize_static` does internally:

- `calibrate()` runs ORT's calibrator over the calibration data once per
  method and keeps the ranges (saved in the output folder as `ranges.json`);
- `build_quantized()` hands those ranges and a `Recipe` (what to exclude,
  per-tensor overrides, types) to ORT's QDQ quantizer, which takes a fraction
  of a second, so later stages can build hundreds of variants.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qcheck.data.readers import DataSet
from qcheck.errors import ModelError, Problem, first_line, raised_by_third_party
from qcheck.policy.spec import AnalysesSpec, QuantizationSpec
from qcheck.quantize.histograms import collect_streamed
from qcheck.quantize.reuse import BuildReuse, reusing_quantizer_class
from qcheck.scratch import temp_folder

QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8", "uint16": "QUInt16", "int16": "QInt16"}
DEFAULT_MEMORY_MB = AnalysesSpec.memory_mb  # the policy's memory_mb when a caller gives none
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


@dataclass
class Recipe:
    """Everything that decides a quantized model, given the float model and the ranges."""

    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    calibration: str = "minmax"
    symmetric_activations: bool = False
    reduce_range: bool = False
    exclude_nodes: list[str] = field(default_factory=list)
    exclude_op_types: list[str] = field(default_factory=list)
    # tensor name -> {quant_type, symmetric, reduce_range, rmin, rmax}
    overrides: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def from_policy(cls, q: QuantizationSpec) -> Recipe:
        return cls(
            activations=q.activations, weights=q.weights, per_channel=q.per_channel, calibration=q.calibration,
            symmetric_activations=q.symmetric_activations, reduce_range=q.reduce_range,
            exclude_nodes=list(q.exclude_nodes), exclude_op_types=list(q.exclude_op_types),
            overrides={k: {f: v for f, v in asdict(o).items() if v is not None} for k, o in q.overrides.items()},
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A short stable hash: equal recipes build equal models."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- calibration


@dataclass
class Ranges:
    """Calibrated [min, max] per activation tensor, for one method."""

    method: str
    ranges: dict[str, tuple[float, float]]
    samples: int
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "samples": self.samples, "options": self.options,
                "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(self.ranges.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> Ranges:
        return cls(d["method"], {k: (float(v[0]), float(v[1])) for k, v in d["ranges"].items()},
                   int(d.get("samples", 0)), dict(d.get("options", {})))

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Ranges:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


class _Reader:
    """ORT CalibrationDataReader over a DataSet (duck-typed: get_next / __len__).

    ORT's calibrator calls it from inside `collect_data`; what it raises (a bad sample, or a bug in the
    progress callback) is kept in `failure`, so `calibrate` does not blame ONNX Runtime for it.
    """

    def __init__(self, data: DataSet, progress=None):
        self.data, self.i, self.progress = data, 0, progress
        self.failure: BaseException | None = None

    def get_next(self):
        if self.i >= len(self.data):
            return None
        self.i += 1
        return self.sample(self.i - 1)

    def sample(self, i: int) -> dict:
        """Sample i (the streamed histogram collection reads samples by index, some twice: the bar runs again)."""
        try:
            sample = self.data[i]
            if self.progress:
                self.progress(i + 1, len(self.data))
            return sample
        except BaseException as exc:
            self.failure = exc
            raise

    def __len__(self) -> int:
        return len(self.data)

    def set_range(self, start_index: int, end_index: int) -> None:  # used by ORT's strided calibration
        self.i = start_index


def calibrate(float_model: Path, data: DataSet, q: QuantizationSpec, method: str | None = None,
              progress=None, source: Path | None = None, memory_mb: int = DEFAULT_MEMORY_MB) -> Ranges:
    """Run ORT's calibrator once over `data` and return the ranges it computes.

    `source`: the user's model file, named when ONNX Runtime fails (`float_model` is qcheck's working copy).
    `memory_mb`: the calibration tensors a histogram calibrator (entropy, percentile) may hold at once; beyond
    it they are collected in chunks (quantize.histograms), with the same ranges. MinMax reduces every tensor
    inside the graph and holds nothing.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    method = method or q.calibration
    options: dict = {"symmetric": q.symmetric_activations}
    if method in ("entropy", "percentile"):
        options["num_bins"] = q.num_bins
    if method == "percentile":
        options["percentile"] = q.percentile
    reader = _Reader(data, progress)
    with temp_folder("calib") as tmp:
        try:
            calibrator = create_calibrator(
                float_model, [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=getattr(CalibrationMethod, METHODS[method]), extra_options=options,
            )
            with contextlib.redirect_stdout(io.StringIO()):  # ORT's histogram calibrators print as they go
                if method in ("entropy", "percentile"):
                    collect_streamed(calibrator, reader.sample, len(data), memory_mb << 20)
                else:
                    calibrator.collect_data(reader)
                tensors = calibrator.compute_data()
        except Exception as exc:
            if reader.failure is not None:  # not ORT's: a bad sample (DataError) or a bug in qcheck, as raised
                if exc is reader.failure:
                    raise
                raise reader.failure from exc  # ORT wrapped it: the reader's own error is the one to show
            if not raised_by_third_party(exc):  # e.g. in collect_streamed's own chunking: a bug of qcheck's
                raise
            text = first_line(exc, {float_model: source or "the model", tmp: "(calibration copy)"})
            raise ModelError(Problem(f"calibration ({method}) failed in ONNX Runtime: {type(exc).__name__}: {text}",
                                     file=str(source) if source else None)) from exc
    ranges = {}
    for name, td in tensors.data.items():
        lo, hi = td.range_value
        ranges[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return Ranges(method, ranges, len(data), options)


# --------------------------------------------------------------------------- building


def quantizable_op_types(exclude_op_types=()) -> list[str]:
    """The op types ONNX Runtime's QDQ quantizer is asked to quantize (all it knows, minus the excluded)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((set(QDQRegistry) | set(QLinearOpsRegistry)) - set(exclude_op_types))


# ONNX Runtime's per-channel bias check (QDQQuantizer._adjust_weight_scale_for_int32_bias) reads the
# bias of a Gemm or Conv as 1-D, one value per output channel; any other bias ends in "The truth value
# of an array with more than one element is ambiguous". model.prepare flattens the [1, N] biases that
# ORT's own MatMul+Add fusion makes; the weight of any other such node is quantized per tensor.
_BIAS_INPUT = {"Gemm": 2, "Conv": 2, "ConvTranspose": 2}


def per_tensor_fallbacks(model: onnx.ModelProto, recipe: Recipe) -> dict[str, str]:
    """Weights ONNX Runtime cannot quantize per channel in this model -> why (they are quantized per tensor)."""
    if not recipe.per_channel:
        return {}
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        b = _BIAS_INPUT.get(node.op_type)
        if b is None or len(node.input) <= b or node.input[b] not in inits or node.input[1] not in inits:
            continue
        dims = list(inits[node.input[b]].dims)
        if len(dims) != 1:
            out[node.input[1]] = (f"weight {node.input[1]} of {node.op_type} {node.name or '(unnamed)'} is quantized "
                                  f"per tensor: its bias is {dims}, and ONNX Runtime quantizes a weight per channel "
                                  f"only with a 1-D bias")
    return out


def build_quantized(float_model: Path, ranges: Ranges, recipe: Recipe, out_path: Path,
                    keep_removable_activations: bool = False, source: Path | None = None,
                    reuse: BuildReuse | None = None) -> Path:
    """Quantize `float_model` with ORT's QDQ quantizer using precomputed ranges.

    `keep_removable_activations` keeps Relu/Clip nodes ORT would fold into the
    producer's grid (same numbers; the emulation model needs their float output).
    `source`: the user's model file, named when ONNX Runtime fails (`float_model` is qcheck's working copy).
    `reuse`: the weights' parameters and quantized copies kept from earlier builds of the same float model
    (`quantize.reuse`: the same model, byte for byte, built faster; a search's candidates).
    """
    if recipe.calibration != ranges.method:
        raise ValueError(f"recipe wants {recipe.calibration} ranges, got {ranges.method}")
    try:
        quantizer = qdq_quantizer(float_model, ranges, recipe, keep_removable_activations, reuse)
        quantizer.quantize_model()
    except ModelError:
        raise
    except Exception as exc:
        if not raised_by_third_party(exc):  # qdq_quantizer's overrides and fallbacks are qcheck's own code
            raise
        raise ModelError(Problem(f"ONNX Runtime could not quantize the model: {type(exc).__name__}: "
                                 f"{first_line(exc, {float_model: source or 'the model'})}",
                                 file=str(source) if source else None,
                                 hint="try quantization.per_channel: false, or exclude the node named in the "
                                      "error (quantization.exclude)" if recipe.per_channel else
                                      "exclude the node named in the error (quantization.exclude)")) from exc
    out_path.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(out_path), quantizer.model.model.ByteSize() > 2**31 - 2**21)
    return out_path


def ort_overrides(recipe: Recipe) -> dict[str, list[dict]]:
    """The recipe's tensor overrides in the form ORT's quantizer reads (QuantType objects, float32 bounds)."""
    from onnxruntime.quantization.quant_utils import QuantType

    overrides = {}
    for tensor, o in recipe.overrides.items():
        entry = dict(o)
        if "quant_type" in entry:
            entry["quant_type"] = getattr(QuantType, QUANT_TYPES[entry["quant_type"]])
        for bound in ("rmin", "rmax"):  # ORT reads .dtype of these
            if bound in entry:
                entry[bound] = np.float32(entry[bound])
        overrides[tensor] = [entry]
    return overrides


def qdq_quantizer(float_model: Path, ranges: Ranges, recipe: Recipe, keep_removable_activations: bool = False,
                  reuse: BuildReuse | None = None):
    """ORT's QDQ quantizer set up for the recipe and ranges, before it quantizes (also what computes a tensor's
    grid: `quantize.grids`); with `reuse`, the one that takes the weights' parameters from earlier builds."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantType, update_opset_version

    model = _shape_inferred(float_model)
    weight_type = getattr(QuantType, QUANT_TYPES[recipe.weights])
    act_type = getattr(QuantType, QUANT_TYPES[recipe.activations])
    overrides = ort_overrides(recipe)
    for weight in per_tensor_fallbacks(model, recipe):  # an override without "axis" makes ORT go per tensor
        overrides.setdefault(weight, [{"symmetric": True}])
    extra = {
        "ActivationSymmetric": recipe.symmetric_activations,
        "WeightSymmetric": True,
        "TensorQuantOverrides": overrides,
        "QDQKeepRemovableActivations": keep_removable_activations,
    }
    if any(t in ("int16", "uint16") for t in [recipe.activations] + [o.get("quant_type") for o in recipe.overrides.values()]):
        extra["UseQDQContribOps"] = True  # 16-bit Q/DQ below opset 21
    model = update_opset_version(model, weight_type, act_type, tensor_quant_overrides=overrides)
    op_types = quantizable_op_types(recipe.exclude_op_types)
    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.ranges.items()},
    )
    unknown = [t for t in overrides if t not in ranges.ranges and t not in {i.name for i in model.graph.initializer}]
    if unknown:
        raise ModelError(Problem(f"quantization overrides name tensor(s) the model does not have: {', '.join(unknown)}"))
    args = (model, recipe.per_channel, recipe.reduce_range, weight_type, act_type, tensors, [],
            list(recipe.exclude_nodes), op_types, extra)
    reusing = reusing_quantizer_class() if reuse is not None else None
    if reusing is None:
        return QDQQuantizer(*args)
    reuse.bind(_model_key(float_model))
    return reusing(*args, reuse=reuse)


_INFERRED: dict[tuple, onnx.ModelProto] = {}  # the last float model shape-inferred, by (path, mtime, size)
# ORT's shape inference writes "<model>-inferred.onnx" beside the model and deletes it: two builds inferring at
# once (evaluate_many's workers) remove each other's file
_INFERRING = threading.Lock()


def _shape_inferred(path: Path) -> onnx.ModelProto:
    """A fresh copy of the float model with ORT's shape inference applied (the quantizer edits it in place).

    A search builds one candidate after another from the same prepared model: its inference (an ONNX
    shape-inference pass through a temporary file) is done once and the result copied, ~6x cheaper."""
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    key = _model_key(path)
    with _INFERRING:
        cached = _INFERRED.get(key)
        if cached is None:
            cached = load_model_with_shape_infer(Path(path))
            _INFERRED.clear()  # one model kept: memory does not grow with the models a process builds
            _INFERRED[key] = cached
    copy = onnx.ModelProto()
    copy.CopyFrom(cached)
    return copy


def _model_key(path: Path) -> tuple:
    """A float model file as it is now: (path, mtime, size)."""
    st = Path(path).stat()
    return str(Path(path).resolve()), st.st_mtime_ns, st.st_size


def load_quantized(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)
