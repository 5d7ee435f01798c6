"""Measuring the error quantization put into every tensor, and into the outputs.

Three ONNX Runtime sessions run on each evaluation sample:

- the float model, returning every quantized activation;
- the quantized model as ORT runs it (integer kernels), returning the integer
  tensor behind every QuantizeLinear. Exposing those keeps ORT's QLinear*
  fusions: the numbers are the real int8 ones;
- a *twin* model for per-layer ("local") mode, as in TFLite's debugger (measure/twin.py): a float
  copy of each quantized node, fed with the inputs the quantized node saw in the
  quantized run (its integers, dequantized inside the twin) and with the float weights. Comparing the
  twin's output with the quantized node's output isolates the error that node adds. It runs only when
  something reads a per-layer column (`need`, from run/needs.py; `skipped_statistics`).

Whole-model mode compares the float model's tensor with the quantized run's,
so errors accumulate along the graph. Weights are compared directly:
float initializer vs dequantized integer initializer.

Statistics accumulate per sample (`error_stats.ErrorAccumulator`), so memory holds
one sample's tensors at a time, and no more of them than `memory_mb` allows (measure/sessions.py:
beyond it, the tensors are measured in groups). Per sample, `reduce_tensor` is the one place a
tensor's arrays (float, quantized, per-layer twin) are read: every statistic's sums are taken there in
one compiled pass (measure/kernel.py; numpy chunks without numba: measure/fused.py), on as many threads as
there are cores (tensors are independent; the kernel releases the GIL; the results do not depend on the
threads' order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

from qcheck.data.readers import DataSet
from qcheck.errors import DataError, Problem
from qcheck.measure.error_stats import (
    DistributionAccumulator,
    DistributionStats,
    ErrorAccumulator,
    ErrorStats,
    SquaredErrorAccumulator,
)
from qcheck.measure.fused import Quantized, reduce_sample
from qcheck.measure.layer_metrics import LayerMetrics
from qcheck.measure.outputs import OutputMetrics, compare_outputs
from qcheck.measure.sessions import Sessions, open_sessions
from qcheck.measure.twin import Twin
from qcheck.model.graph import GraphIndex
from qcheck.model.runtime import usable_cores
from qcheck.policy.spec import MetricSpec
from qcheck.quantize.qdq import QDQMap, QuantizedTensor
from qcheck.results.layer_columns import DISTRIBUTION_GROUP, PER_LAYER_ERROR, PER_LAYER_GROUP, PER_LAYER_STATISTICS


def workers() -> int:
    """Threads that reduce tensors: numpy releases the GIL on large arrays, so each core takes tensors."""
    return max(1, min(4, usable_cores()))


# weight_error_share is a share of error energy, estimated well from a few samples; its twin (every quantized node
# again, with dequantized weights) costs about as much as the float and int8 runs together, so it runs on this many
WEIGHT_SHARE_SAMPLES = 8
DISTRIBUTION_STATISTICS = ("skewness", "kurtosis", "bimodality", "channels", "channel_range_ratio", "worst_channel")


@dataclass
class TensorRecord:
    """Everything measured about one quantized tensor (one row of layer_stats.csv)."""

    name: str
    kind: str
    node: str  # producer (activations) or consumer (weights) node
    op_type: str
    order: int  # position of `node` in topological order
    dtype: str
    scale: float
    zero_point: int
    per_channel: bool
    range: float  # scale * number of steps
    calib_min: float | None = None
    calib_max: float | None = None
    local: ErrorStats | None = None
    whole: ErrorStats | None = None
    distribution: DistributionStats | None = None
    layer_index: int | None = None  # rank among quantized layers in graph order (0 = first)
    is_output: bool = False
    input_range_ratio: float | None = None  # widest / narrowest calibrated range among the producer's inputs
    weight_error_share: float | None = None  # share of the per-layer error the weights alone cause
    per_layer_missing: str | None = None  # why the per-layer columns are empty (null), when they are
    layer_metrics: dict[str, float | None] = field(default_factory=dict)  # the policy's `layer_metrics:`

    def row(self) -> dict:
        """Flat dict: plain names for the local (per-layer) statistics, whole_* for whole-model ones.

        A per-layer column holds a per-layer value or null (`per_layer_missing` says why), never a
        whole-model value: rules read them and must not fire on something else."""
        out = {k: getattr(self, k) for k in ("name", "kind", "node", "op_type", "order", "dtype", "scale",
                                              "zero_point", "per_channel", "range", "calib_min", "calib_max")}
        local = asdict(self.local) if self.local else {}
        whole = asdict(self.whole) if self.whole else {}
        for key in PER_LAYER_ERROR:
            out[key] = local.get(key)
        # distribution facts come from the true float model's tensor
        for key in ("clip_fraction", "max_overshoot", "float_min", "float_max", "spread_steps"):
            out[key] = whole.get(key, local.get(key))
        for key in ("mean_error", "max_abs_error", "mean_squared_error", "rmse_scale", "cosine", "sqnr"):
            out["whole_" + key] = whole.get(key)
        dist = asdict(self.distribution) if self.distribution else {}
        for key in ("skewness", "kurtosis", "bimodality", "channels", "channel_range_ratio", "worst_channel"):
            out[key] = dist.get(key)
        for key in ("layer_index", "is_output", "input_range_ratio", "weight_error_share", "per_layer_missing"):
            out[key] = getattr(self, key)
        out.update(self.layer_metrics)
        return out


@dataclass
class Measurement:
    tensors: list[TensorRecord]
    outputs: list[dict]  # per model output: cosine, mse, ... (metrics.OutputComparison.result)
    user_metrics: dict[str, dict] = field(default_factory=dict)  # name -> {value, output, slice, metric}
    samples: int = 0
    notes: list[str] = field(default_factory=list)
    tasks: dict[str, dict] = field(default_factory=dict)  # task metric name -> qcheck.measure.tasks result
    not_computed: dict[str, str] = field(default_factory=dict)  # a group of columns left null -> why
    layer_metric_seconds: dict[str, float] = field(default_factory=dict)  # time each layer metric took


# --------------------------------------------------------------------------- measuring


@dataclass
class _Accumulators:
    """Per quantized activation: whole-model and per-layer errors, the distribution, the weights' share."""

    local: dict[str, ErrorAccumulator]
    whole: dict[str, ErrorAccumulator]
    dist: dict[str, DistributionAccumulator]
    weight_err: dict[str, SquaredErrorAccumulator]  # float twin vs twin with dequantized weights: the weights' part
    rest_err: dict[str, SquaredErrorAccumulator]  # twin with dequantized weights vs the quantized node: the rest
    user: LayerMetrics | None = None  # the policy's layer metrics: the one hook for per-tensor user statistics


def measure(
    float_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    qmap: QDQMap,
    data: DataSet,
    ranges: dict[str, tuple[float, float]],
    metrics: dict[str, MetricSpec],
    modes: list[str],
    include_weights: bool = True,
    progress: Callable[[int, int], None] | None = None,
    tasks: list | None = None,
    need: set[str] | None = None,
    layer_metrics: LayerMetrics | None = None,
    fused: bool = True,
    memory_mb: int | None = None,
    twin_of: onnx.ModelProto | None = None,
) -> Measurement:
    """`tasks`: task metrics (qcheck.measure.tasks), each fed every sample's float and quantized model outputs.
    `need`: every statistic something in the run reads (run/needs.py: the rules, the report's settings, the
    search); optional statistics no one reads are not computed (None = compute everything), and the per-layer twin
    runs only when a per-layer column or a per-layer layer metric is read (`Measurement.not_computed` says what was
    left out and why). `layer_metrics`: the policy's own per-tensor
    statistics, fed the arrays this pass compares (measure.layer_metrics). `fused`: see `reduce_tensor`.
    `memory_mb`: what one sample's measured tensors may take at once (measure.sessions); None: no bound.
    `twin_of`: the QDQ model whose nodes the per-layer twin copies, when `qmodel` has no Q/DQ pairs (a given
    QOperator model's equivalent QDQ model, with the same integer tensor names); default `qmodel`."""
    index = GraphIndex(float_model)
    outputs = index.output_names
    notes: list[str] = []
    activations = [t for t in qmap.tensors.values() if t.kind == "activation"]
    want_dist = need is None or bool(need & set(DISTRIBUTION_STATISTICS))
    not_computed = skipped_statistics(need, modes, layer_metrics)
    if PER_LAYER_GROUP in not_computed:
        modes = [m for m in modes if m != "local"]
    shapes = _shapes(float_model)
    sessions = open_sessions(float_model, qmodel, qmap, activations, shapes, modes,
                             with_weight_twin=need is None or "weight_error_share" in need,
                             budget_bytes=None if memory_mb is None else memory_mb << 20, twin_of=twin_of)
    if len(sessions.groups) > 1:
        notes.append(f"one sample's measured tensors take more than memory_mb ({memory_mb} MB): they were measured "
                     f"in {len(sessions.groups)} groups, each model run once per group")
    if sessions.twin is not None:
        missing = [t.name for t in activations
                   if t.name not in sessions.twin.outputs and index.producer.get(t.name) is not None]
        if missing:
            notes.append(f"per-layer statistics are not available for {len(missing)} tensor(s) whose producer could not "
                         f"be replayed in float (e.g. {missing[0]}); their per-layer columns are empty and no rule "
                         f"reads them; their whole-model columns are measured")
    acc = _accumulators(activations, shapes, index, sessions.twin, want_dist)
    acc.user = layer_metrics
    compared = compare_outputs(outputs, metrics, tasks)  # task metrics come as `tasks`
    weighed = spread(len(data), WEIGHT_SHARE_SAMPLES)
    if any(g.weight_sess is not None for g in sessions.groups) and len(weighed) < len(data):
        notes.append(f"weight_error_share is estimated on {len(weighed)} of the {len(data)} evaluation samples, "
                     f"evenly spread (a share of error energy; its twin with dequantized weights costs as much as "
                     f"the float and int8 runs together); every other statistic reads every sample")
    with ThreadPoolExecutor(max_workers=workers()) as pool:
        for i in range(len(data)):
            _measure_sample(data[i], data.samples[i].label, sessions, index, acc, compared, want_dist, pool, fused,
                            weights=i in weighed)
            if progress:
                progress(i + 1, len(data))
    records = _activation_records(activations, acc, index, ranges, modes, sessions.twin, want_dist,
                                  not_computed.get(PER_LAYER_GROUP))
    if include_weights:
        records += _weight_records(float_model, qmodel, qmap, index, want_dist, layer_metrics)
    if layer_metrics is not None:
        for rec in records:
            rec.layer_metrics = layer_metrics.values(rec.name)
    records.sort(key=lambda r: (r.order, r.kind != "activation", r.name))
    return Measurement(records, compared.output_results(), compared.user_results(), len(data), notes,
                       compared.task_results(), not_computed,
                       dict(layer_metrics.seconds) if layer_metrics else {})


NOT_READ = ("not computed: nothing in this run reads them (no rule of the loaded packs or `rules.inline`, no {what}); "
            "a rule, layer metric or report setting that names one of them makes qcheck measure them")


def skipped_statistics(need: set[str] | None, modes: list[str], layer_metrics: LayerMetrics | None) -> dict[str, str]:
    """The optional column groups this measurement leaves out, each with the reason the report and CSV give.
    The per-layer twin is left out only when whole-model mode is on (the float tensor's extent and clipping come
    from there) and no per-layer column or per-layer (`mode: local`) layer metric is read."""
    if need is None:
        return {}
    out = {}
    if not need & set(DISTRIBUTION_STATISTICS):
        out[DISTRIBUTION_GROUP] = NOT_READ.format(what="report setting") + f" ({', '.join(DISTRIBUTION_STATISTICS)})"
    user_local = layer_metrics is not None and "local" in layer_metrics.modes()
    if "local" in modes and "whole" in modes and not user_local and not need & set(PER_LAYER_STATISTICS):
        out[PER_LAYER_GROUP] = NOT_READ.format(what="layer metric in `mode: local`, `report.graph.color_by` or "
                                                    "search ranking without node sensitivity") + \
            f" ({', '.join(PER_LAYER_STATISTICS)}); the whole-model columns (whole_*) are measured"
    return out


def _accumulators(activations: list[QuantizedTensor], shapes: dict[str, list], index: GraphIndex,
                  twin: Twin | None, want_dist: bool) -> _Accumulators:
    whole = {}
    for t in activations:
        lo, hi = t.real_range(())
        whole[t.name] = ErrorAccumulator(scale=t.summary_scale(), qrange=(float(lo), float(hi)))
    return _Accumulators(
        # the twin's min/max would be the float model's again: read from `whole`
        local={t.name: ErrorAccumulator(scale=t.summary_scale(), extent=False) for t in activations},
        whole=whole,
        dist={t.name: DistributionAccumulator(_activation_channel_axis(t.name, shapes, index.producer))
              for t in activations} if want_dist else {},
        weight_err={name: SquaredErrorAccumulator() for name in (twin.weight_outputs if twin else {})},
        rest_err={name: SquaredErrorAccumulator() for name in (twin.weight_outputs if twin else {})})


@dataclass
class TensorSample:
    """One quantized activation on one evaluation sample: the arrays every per-tensor statistic reads.

    `float` is the float model's tensor, `q` the quantized run's integer tensor and `quant` the same
    dequantized (its grid: `tensor.scale_for(quant.shape)`, `tensor.zero_point_for(quant.shape)`; made when
    first read: the fused reduction dequantizes chunk by chunk instead); `local_float` is the per-layer
    twin's output (the float op fed what the quantized op saw), `weight_only` the twin's output with
    dequantized weights; None when not measured. The arrays are as ONNX Runtime returns them and are
    read-only here: other threads read them too."""

    tensor: QuantizedTensor
    float: np.ndarray
    q: np.ndarray
    local_float: np.ndarray | None = None
    weight_only: np.ndarray | None = None

    @cached_property
    def quant(self) -> np.ndarray:
        return self.tensor.dequantize(self.q)


def reduce_tensor(s: TensorSample, acc: _Accumulators, want_dist: bool, fused: bool = True) -> None:
    """Every per-tensor statistic's update for one sample: the one place the measurement pass reads a
    tensor's arrays, and where a further per-tensor reduction belongs (the error is `s.float - s.quant`).
    It runs on worker threads (one tensor per call, each accumulator updated by one call at a time), so
    what is added here must only touch this tensor's own accumulators. `fused`: all sums in one chunked pass
    (measure.fused) where it applies; False: each accumulator's own passes (the reference it is tested on)."""
    name = s.tensor.name
    local = s.local_float is not None
    with_w = local and s.weight_only is not None and name in acc.weight_err
    if fused and reduce_sample(s.float, _quantized(s), s.local_float, s.weight_only if with_w else None,
                               acc.whole[name], acc.local[name] if local else None,
                               acc.dist[name] if want_dist else None, acc.weight_err[name] if with_w else None,
                               acc.rest_err[name] if with_w else None):
        return
    acc.whole[name].update(s.float, s.quant)
    if want_dist:
        acc.dist[name].update(s.float)
    if s.local_float is not None:
        acc.local[name].update(s.local_float, s.quant)
        if s.weight_only is not None:
            acc.weight_err[name].update(s.local_float, s.weight_only)
            acc.rest_err[name].update(s.weight_only, s.quant)


def _quantized(s: TensorSample) -> Quantized:
    """The quantized tensor as the fused reduction reads it: integers and a scalar grid when the tensor is per
    tensor and 8/16-bit (dequantized chunk by chunk, as quantize.grid.dequantize computes it), else the
    dequantized array."""
    t, q = s.tensor, s.q
    if not t.per_channel and q.dtype.kind in "iu" and q.dtype.itemsize <= 2 and q.ndim > 0:
        return Quantized(q, float(t.scale.reshape(())), int(t.zero_point.reshape(())))
    return Quantized(s.quant)


def spread(n: int, k: int) -> set[int]:
    """`k` sample indices out of `n`, evenly spread, first and last included (all of them when n <= k)."""
    return set(range(n)) if n <= k else {round(i * (n - 1) / (k - 1)) for i in range(k)}


def _measure_sample(sample: dict, label: str, sessions: Sessions, index: GraphIndex, acc: _Accumulators,
                    compared: OutputMetrics, want_dist: bool, pool: ThreadPoolExecutor, fused: bool = True,
                    weights: bool = True) -> None:
    """One sample, group by group (one group unless memory_mb says otherwise): only a group's tensors are held.
    `weights`: also run the twin with dequantized weights (weight_error_share)."""
    for g, group in enumerate(sessions.groups):
        f_vals, q_vals, t_vals = sessions.run(group, sample, weights)
        if g == 0:
            _check_outputs_finite(f_vals, compared.outputs, index, label)
            compared.update(label, f_vals, q_vals)
        twin = group.twin
        jobs = []
        for t in group.activations:
            ref = f_vals.get(t.name, sample.get(t.name))
            if ref is None:
                continue
            local = t_vals[twin.outputs[t.name]] if t_vals and t.name in twin.outputs else None
            w_only = t_vals.get(twin.weight_outputs[t.name]) if local is not None and t.name in twin.weight_outputs \
                else None
            jobs.append(TensorSample(t, ref, q_vals[t.q_output], local, w_only))
        for _ in pool.map(lambda j: reduce_tensor(j, acc, want_dist, fused),
                          sorted(jobs, key=lambda j: -j.float.size)):
            pass  # largest first: the workers finish together
        if acc.user is not None:
            for j in jobs:
                _user_metrics(acc.user, j, index, label)
        del f_vals, q_vals, t_vals, jobs


def _user_metrics(user: LayerMetrics, s: TensorSample, index: GraphIndex, label: str) -> None:
    """The policy's layer metrics on one tensor's arrays (measure.layer_metrics), in graph order on this thread:
    a user's python function need not be thread-safe, and the first failing tensor is the one named."""
    user.update("whole", s.tensor, s.float, s.quant, label)
    if index.producer.get(s.tensor.name) is None:  # a graph input's per-layer error is its own rounding
        user.update("local", s.tensor, s.float, s.quant, label)
    elif s.local_float is not None:
        user.update("local", s.tensor, s.local_float, s.quant, label)


def _check_outputs_finite(f_vals: dict, outputs: list[str], index: GraphIndex, label: str) -> None:
    for name in outputs:
        if not np.all(np.isfinite(f_vals[name])):
            made = index.producer.get(name)
            made_by = f" (made by {made.op_type} node '{made.name}')" if made is not None else ""
            from qcheck.data.finite import describe_non_finite

            raise DataError(Problem(f"sample {label}: the float model's output '{name}'{made_by} contains "
                                    f"{describe_non_finite(np.asarray(f_vals[name]))}",
                                    hint="the model or this input is broken before quantization; fix or drop the sample"))


def _activation_records(activations: list[QuantizedTensor], acc: _Accumulators, index: GraphIndex,
                        ranges: dict[str, tuple[float, float]], modes: list[str], twin: Twin | None,
                        want_dist: bool, per_layer_skipped: str | None = None) -> list[TensorRecord]:
    records = []
    for t in activations:
        producer = index.producer.get(t.name)
        rec = _record(t, producer.name if producer else "(input)", producer.op_type if producer else "Input",
                      index.order.get(t.name, -1), ranges.get(t.name))
        whole = acc.whole[t.name].result()
        rec.whole = whole if "whole" in modes else None
        rec.distribution = acc.dist[t.name].result() if want_dist else None
        rec.is_output = t.name in index.output_names
        local_has = twin is not None and t.name in twin.outputs
        if "local" in modes:
            # graph inputs have no producer: their local error is their own rounding
            rec.local = acc.local[t.name].result() if local_has else (whole if producer is None else None)
            if rec.local is None:
                rec.per_layer_missing = (f"its producer ({producer.op_type} '{producer.name}') could not be replayed "
                                         "in float with the quantized run's inputs")
            if rec.local is not None and rec.whole is None:
                for key in ("clip_fraction", "max_overshoot", "float_min", "float_max", "spread_steps"):
                    setattr(rec.local, key, getattr(whole, key))
            if t.name in acc.weight_err and rec.local is not None:
                rec.weight_error_share = _share(acc.weight_err[t.name].mean_squared_error(),
                                                acc.rest_err[t.name].mean_squared_error())
        else:
            rec.per_layer_missing = per_layer_skipped or "per-layer mode is off (measure.modes)"
        if producer is not None:
            rec.input_range_ratio = _input_range_ratio(producer, ranges)
        records.append(rec)
    for layer, rec in enumerate(sorted((r for r in records if r.node != "(input)"), key=lambda r: r.order)):
        rec.layer_index = layer
    return records


def _share(weights: float, rest: float) -> float | None:
    """The weights' part of a node's error, in 0..1. The node's error is the weights' part plus the rest (its
    output's rounding); the two can partly cancel, so a ratio to the node's whole error could pass 100 %."""
    total = weights + rest
    return weights / total if total > 0 else None


def _weight_records(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, qmap: QDQMap, index: GraphIndex,
                    want_dist: bool, layer_metrics: LayerMetrics | None = None) -> list[TensorRecord]:
    """Weights and biases: the float initializer against the dequantized integer one."""
    f_nodes = {n.name: n for n in index.nodes}  # unnamed nodes too, as the QDQ map names consumers
    q_inits = GraphIndex(qmodel).initializers
    records = []
    for t in qmap.tensors.values():
        if t.kind == "activation" or t.name not in index.initializers or t.q_initializer not in q_inits:
            continue
        w = numpy_helper.to_array(index.initializers[t.name])
        wq = t.dequantize(numpy_helper.to_array(q_inits[t.q_initializer]))
        acc = ErrorAccumulator(scale=t.scale_for(w.shape), qrange=t.real_range(w.shape))
        acc.update(w, wq)
        if layer_metrics is not None:  # a weight is its own float reference in both modes
            for mode in ("local", "whole"):
                layer_metrics.update(mode, t, w, wq, "(weights)")
        consumer = f_nodes.get(t.consumers[0]) if t.consumers else None
        rec = _record(t, consumer.name if consumer else "", consumer.op_type if consumer else "",
                      index.order.get(consumer.output[0], -1) if consumer else -1, None)
        rec.local = rec.whole = acc.result()
        if want_dist:
            dist = DistributionAccumulator(_weight_channel_axis(t, consumer, w.ndim))
            dist.update(w)
            rec.distribution = dist.result()
        records.append(rec)
    return records


def _activation_channel_axis(name: str, shapes: dict[str, list], producer_of: dict) -> int | None:
    """Channels of an activation: axis 1 for NCHW-style tensors, the last axis for [N, T, C] sequences."""
    shape = shapes.get(name)
    if shape is None or len(shape) < 2:
        return None
    if len(shape) == 3:
        producer = producer_of.get(name)
        return 1 if producer is not None and producer.op_type in ("Conv", "ConvTranspose") else 2
    return 1


def _weight_channel_axis(t: QuantizedTensor, consumer: onnx.NodeProto | None, rank: int) -> int | None:
    """The output-channel axis of a weight: where per-channel quantization would split it."""
    if t.kind != "weight" or rank < 2:
        return None
    if t.per_channel and t.axis is not None:
        return t.axis
    op = consumer.op_type if consumer is not None else ""
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if op == "MatMul":
        return rank - 1
    return 0


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Inferred shapes of the model's tensors (pre-processing ran shape inference)."""
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return shapes


def _input_range_ratio(node: onnx.NodeProto, ranges: dict[str, tuple[float, float]]) -> float | None:
    """For ops joining several activations (Concat, Add ...): widest over narrowest calibrated range."""
    widths = [ranges[i][1] - ranges[i][0] for i in node.input if i in ranges]
    if len(widths) < 2:
        return None
    narrow = min(widths)
    return max(widths) / narrow if narrow > 0 else math.inf


def _record(t: QuantizedTensor, node: str, op_type: str, order: int, calib: tuple | None) -> TensorRecord:
    return TensorRecord(
        name=t.name, kind=t.kind, node=node, op_type=op_type, order=order, dtype=t.dtype,
        scale=t.summary_scale(), zero_point=int(np.median(t.zero_point)), per_channel=t.per_channel,
        range=t.summary_scale() * t.steps(),
        calib_min=calib[0] if calib else None, calib_max=calib[1] if calib else None,
    )
