"""Measuring the error quantization put into every tensor, and into the outputs.

Three ONNX Runtime sessions run on each evaluation sample:

- the float model, returning every quantized activation;
- the quantized model as ORT runs it (integer kernels), returning the integer
  tensor behind every QuantizeLinear. Exposing those keeps ORT's QLinear*
  fusions: the numbers are the real int8 ones;
- a *twin* model for per-layer ("local") mode, as in TFLite's debugger: a float copy of each
  quantized node, fed with the inputs the quantized node saw in the
  quantized run and with the float weights. Comparing the twin's output with
  the quantized node's output isolates the error that node adds.

Whole-model mode compares the float model's tensor with the quantized run's,
so errors accumulate along the graph. Weights are compared directly:
float initializer vs dequantized integer initializer.

Statistics accumulate per sample (`stats.ErrorAccumulator`), so memory holds
one sample's tensors at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

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
)
from qcheck.measure.outputs import OutputComparison, apply_slice, metric_value
from qcheck.model.prepare import elem_types, topological_order
from qcheck.model.runtime import make_session, with_outputs
from qcheck.policy.slices import SliceError, parse_slice
from qcheck.policy.spec import MetricSpec
from qcheck.quantize.qdq import (
    DEQUANTIZE_OPS,
    QUANTIZE_OPS,
    REMOVABLE_ACTIVATIONS,
    QDQMap,
    QuantizedTensor,
    float_name,
)

TWIN_PREFIX = "qcheck_twin::"
TWIN_W_PREFIX = "qcheck_twin_wq::"
DQ_WEIGHT_PREFIX = "qcheck_dqw::"
INPUT_PREFIX = "qcheck_in::"
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

    def row(self) -> dict:
        """Flat dict: seed-000 names for the local (per-layer) statistics, whole_* for whole-model ones.

        A per-layer column holds a per-layer value or null (`per_layer_missing` says why), never a
        whole-model value: rules read them and must not fire on something else."""
        out = {k: getattr(self, k) for k in ("name", "kind", "node", "op_type", "order", "dtype", "scale",
                                              "zero_point", "per_channel", "range", "calib_min", "calib_max")}
        local = asdict(self.local) if self.local else {}
        whole = asdict(self.whole) if self.whole else {}
        for key in ("num_elements", "mean_error", "stddev", "max_abs_error", "mean_abs_error", "mean_squared_error",
                    "rmse", "rmse_scale", "cosine", "sqnr"):
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
        return out


@dataclass
class Measurement:
    tensors: list[TensorRecord]
    outputs: list[dict]  # per model output: cosine, mse, ... (metrics.OutputComparison.result)
    user_metrics: dict[str, dict] = field(default_factory=dict)  # name -> {value, output, slice, metric}
    samples: int = 0
    notes: list[str] = field(default_factory=list)
    tasks: dict[str, dict] = field(default_factory=dict)  # task metric name -> qcheck.measure.tasks result


# --------------------------------------------------------------------------- the twin model


@dataclass
class _Twin:
    model: onnx.ModelProto
    inputs: dict[str, str]  # twin graph input -> tensor name in the quantized run ("float name" or q_output)
    outputs: dict[str, str]  # float tensor name -> twin output name
    weight_outputs: dict[str, str]  # float tensor name -> output of the twin with dequantized weights


def build_twin(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, qmap: QDQMap,
               with_weight_twin: bool = True) -> _Twin:
    """Float copies of the quantized nodes, fed with what the quantized nodes saw.

    With `with_weight_twin`, a second copy of each node with dequantized weights measures the
    error the weights alone cause (`weight_error_share`)."""
    q_inits = {i.name for i in qmodel.graph.initializer}
    f_inits = {i.name: i for i in float_model.graph.initializer}
    q_init_protos = {i.name: i for i in qmodel.graph.initializer}
    f_nodes = {n.name: n for n in float_model.graph.node if n.name}
    f_outputs = {o.name for o in float_model.graph.output}
    f_consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in float_model.graph.node:
        for i in n.input:
            f_consumers.setdefault(i, []).append(n)
    types = elem_types(float_model)
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    by_qoutput = {t.q_output: t for t in qmap.tensors.values() if t.kind == "activation"}

    nodes, inits, graph_inputs = [], {}, {}
    feeds: dict[str, str] = {}
    outputs: dict[str, str] = {}
    weight_outputs: dict[str, str] = {}

    def twin_input(name: str) -> str | None:
        """The twin's name for input `name` of a quantized node; None when it cannot be fed."""
        if name == "":
            return ""
        producer = producers.get(name)
        if producer is not None and producer.op_type in DEQUANTIZE_OPS:
            src = producer.input[0]
            if src in by_qoutput:  # dequantized activation: feed the quantized run's value
                t = by_qoutput[src]
                feed = INPUT_PREFIX + t.name
                feeds[feed] = src
                graph_inputs[feed] = onnx.TensorProto.FLOAT
                return feed
            return None  # weights are resolved by position (see below)
        if name in q_inits:
            inits[name] = q_init_protos[name]
            return name
        if name not in types:
            return None
        feed = INPUT_PREFIX + name
        feeds[feed] = name
        graph_inputs[feed] = types[name]
        return feed

    def emit(node: onnx.NodeProto, twin_of: onnx.NodeProto, new_inputs: list[str], measured: list[str],
             prefix: str, into: dict[str, str]) -> None:
        """Add a float copy of `twin_of` (outputs renamed with `prefix`) and record its measured outputs."""
        twin = onnx.NodeProto()
        twin.CopyFrom(twin_of)
        twin.name = prefix + node.name
        del twin.input[:]
        twin.input.extend(new_inputs)
        del twin.output[:]
        twin.output.extend(prefix + o for o in twin_of.output)
        nodes.append(twin)
        for out in measured:
            if out in twin_of.output:
                into[out] = prefix + out
                continue
            # ORT removed a Relu/Clip and gave its output name to this node: re-apply it in float.
            for raw in twin_of.output:
                chain = [c for c in f_consumers.get(raw, []) if c.op_type in REMOVABLE_ACTIVATIONS and out in c.output]
                if chain:
                    act = onnx.NodeProto()
                    act.CopyFrom(chain[0])
                    act.name = prefix + chain[0].name
                    act.input[0] = prefix + raw
                    for j in range(1, len(act.input)):
                        if act.input[j] and act.input[j] in f_inits:
                            inits[act.input[j]] = f_inits[act.input[j]]
                    del act.output[:]
                    act.output.append(prefix + out)
                    nodes.append(act)
                    into[out] = prefix + out
                    break

    for node in qmodel.graph.node:
        if node.op_type in QUANTIZE_OPS | DEQUANTIZE_OPS or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        measured = [float_name(o, f_outputs) for o in node.output]
        measured = [o for o in measured if o in qmap.tensors and qmap.tensors[o].kind == "activation"]
        twin_of = f_nodes.get(node.name)
        if not measured or twin_of is None:
            continue
        new_inputs: list[str] | None = []
        dq_weights: dict[int, str] = {}  # input position -> float weight name, for the weights-only twin
        for pos, name in enumerate(node.input):
            producer = producers.get(name)
            if producer is not None and producer.op_type in DEQUANTIZE_OPS and producer.input[0] in q_inits:
                original = twin_of.input[pos] if pos < len(twin_of.input) else None
                if original not in f_inits:
                    new_inputs = None
                    break
                inits[original] = f_inits[original]
                new_inputs.append(original)
                if original in qmap.tensors and qmap.tensors[original].q_initializer in q_init_protos:
                    dq_weights[pos] = original
                continue
            fed = twin_input(name)
            if fed is None:
                new_inputs = None
                break
            new_inputs.append(fed)
        if new_inputs is None:
            continue
        emit(node, twin_of, new_inputs, measured, TWIN_PREFIX, outputs)
        if dq_weights and with_weight_twin:
            # The same float op with dequantized weights: the difference to the float-weight twin is
            # the error the weights alone put into this node's output.
            w_inputs = list(new_inputs)
            for pos, original in dq_weights.items():
                name = DQ_WEIGHT_PREFIX + original
                if name not in inits:
                    t = qmap.tensors[original]
                    value = t.dequantize(numpy_helper.to_array(q_init_protos[t.q_initializer]))
                    inits[name] = numpy_helper.from_array(value.astype(np.float32), name)
                w_inputs[pos] = name
            emit(node, twin_of, w_inputs, measured, TWIN_W_PREFIX, weight_outputs)

    graph = onnx.helper.make_graph(
        nodes, "qcheck_twin",
        [onnx.helper.make_tensor_value_info(n, t, None) for n, t in graph_inputs.items()],
        [onnx.ValueInfoProto(name=o) for o in list(outputs.values()) + list(weight_outputs.values())],
        initializer=list(inits.values()),
    )
    twin_model = onnx.helper.make_model(graph, opset_imports=list(qmodel.opset_import))
    twin_model.ir_version = qmodel.ir_version
    return _Twin(twin_model, feeds, outputs, weight_outputs)


# --------------------------------------------------------------------------- measuring


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
) -> Measurement:
    """`tasks`: task metrics (qcheck.measure.tasks), each fed every sample's float and quantized model outputs.
    `need`: the statistics the rules read (`rules.needed_statistics`); optional statistics no one
    needs are not computed (None = compute everything)."""
    order = topological_order(float_model)
    f_nodes = {n.name: n for n in float_model.graph.node}
    producer_of = {o: n for n in float_model.graph.node for o in n.output}
    outputs = [o.name for o in float_model.graph.output]
    activations = [t for t in qmap.tensors.values() if t.kind == "activation"]
    notes = []

    float_names = [t.name for t in activations if t.name not in outputs]
    f_sess = make_session(with_outputs(float_model, float_names), "float model")
    want_dist = need is None or bool(need & set(DISTRIBUTION_STATISTICS))
    want_weight_share = need is None or "weight_error_share" in need
    twin = build_twin(qmodel, float_model, qmap, with_weight_twin=want_weight_share) if "local" in modes else None
    q_names = [t.q_output for t in activations] + (sorted(set(twin.inputs.values())) if twin else [])
    q_sess = make_session(with_outputs(qmodel, q_names), "quantized model")
    t_sess = make_session(twin.model, "per-layer twin model") if twin and twin.outputs else None
    if twin is not None:
        missing = [t.name for t in activations if t.name not in twin.outputs and producer_of.get(t.name) is not None]
        if missing:
            notes.append(f"per-layer statistics are not available for {len(missing)} tensor(s) whose producer could not "
                         f"be replayed in float (e.g. {missing[0]}); their per-layer columns are empty and no rule "
                         f"reads them; their whole-model columns are measured")

    by_qoutput = {t.q_output: t.name for t in activations}
    f_out_names = [o.name for o in f_sess.get_outputs()]
    q_out_names = [o.name for o in q_sess.get_outputs()]
    t_out_names = [o.name for o in t_sess.get_outputs()] if t_sess else []

    local_acc = {t.name: ErrorAccumulator(scale=t.summary_scale()) for t in activations}
    whole_acc = {}
    for t in activations:
        lo, hi = t.real_range(())
        whole_acc[t.name] = ErrorAccumulator(scale=t.summary_scale(), qrange=(float(lo), float(hi)))
    shapes = _shapes(float_model)
    dist_acc = {t.name: DistributionAccumulator(_activation_channel_axis(t.name, shapes, producer_of))
                for t in activations} if want_dist else {}
    weight_err = {name: ErrorAccumulator() for name in (twin.weight_outputs if twin else {})}
    out_cmp = {name: OutputComparison(name) for name in outputs}
    metrics = {name: spec for name, spec in metrics.items() if spec.task is None}  # task metrics come as `tasks`
    user = {name: (spec, OutputComparison(f"{spec.output}{spec.slice or ''}")) for name, spec in metrics.items()}
    slices = {name: parse_slice(spec.slice) if spec.slice else () for name, spec in metrics.items()}

    for i in range(len(data)):
        sample = data[i]
        label = data.samples[i].label
        f_vals = dict(zip(f_out_names, f_sess.run(None, sample)))
        q_vals = dict(zip(q_out_names, q_sess.run(None, sample)))
        for name in outputs:
            if not np.all(np.isfinite(f_vals[name])):
                made = producer_of.get(name)
                made_by = f" (made by {made.op_type} node '{made.name}')" if made is not None else ""
                from qcheck.data.finite import describe_non_finite

                raise DataError(Problem(f"sample {label}: the float model's output '{name}'{made_by} contains "
                                        f"{describe_non_finite(np.asarray(f_vals[name]))}",
                                        hint="the model or this input is broken before quantization; fix or drop the sample"))
        deq = {t.name: t.dequantize(q_vals[t.q_output]) for t in activations}
        for t in activations:
            ref = f_vals.get(t.name, sample.get(t.name))
            if ref is None:
                continue
            whole_acc[t.name].update(ref, deq[t.name])
            if want_dist:
                dist_acc[t.name].update(ref)
        if t_sess is not None:
            feed = {twin_in: deq[by_qoutput[src]] if src in by_qoutput else q_vals[src]
                    for twin_in, src in twin.inputs.items()}
            t_vals = dict(zip(t_out_names, t_sess.run(None, feed)))
            for name, twin_out in twin.outputs.items():
                local_acc[name].update(t_vals[twin_out], deq[name])
            for name, twin_out in twin.weight_outputs.items():
                weight_err[name].update(t_vals[twin.outputs[name]], t_vals[twin_out])
        update_output_metrics(label, outputs, f_vals, q_vals, out_cmp, user, slices, tasks)
        if progress:
            progress(i + 1, len(data))

    records = []
    for t in activations:
        producer = producer_of.get(t.name)
        rec = _record(t, producer.name if producer else "(input)", producer.op_type if producer else "Input",
                      order.get(t.name, -1), ranges.get(t.name))
        whole = whole_acc[t.name].result()
        rec.whole = whole if "whole" in modes else None
        rec.distribution = dist_acc[t.name].result() if want_dist else None
        rec.is_output = t.name in outputs
        local_has = twin is not None and t.name in twin.outputs
        if "local" in modes:
            # graph inputs have no producer: their local error is their own rounding
            rec.local = local_acc[t.name].result() if local_has else (whole if producer is None else None)
            if rec.local is None:
                rec.per_layer_missing = (f"its producer ({producer.op_type} '{producer.name}') could not be replayed "
                                         "in float with the quantized run's inputs")
            if rec.local is not None and rec.whole is None:
                for key in ("clip_fraction", "max_overshoot", "float_min", "float_max", "spread_steps"):
                    setattr(rec.local, key, getattr(whole, key))
            if t.name in weight_err and rec.local is not None and rec.local.mean_squared_error > 0:
                rec.weight_error_share = weight_err[t.name].result().mean_squared_error / rec.local.mean_squared_error
        else:
            rec.per_layer_missing = "per-layer mode is off (measure.modes)"
        if producer is not None:
            rec.input_range_ratio = _input_range_ratio(producer, ranges)
        records.append(rec)
    for index, rec in enumerate(sorted((r for r in records if r.node != "(input)"), key=lambda r: r.order)):
        rec.layer_index = index
    if include_weights:
        inits = {i.name: i for i in float_model.graph.initializer}
        q_inits = {i.name: i for i in qmodel.graph.initializer}
        for t in qmap.tensors.values():
            if t.kind == "activation" or t.name not in inits or t.q_initializer not in q_inits:
                continue
            w = numpy_helper.to_array(inits[t.name])
            wq = t.dequantize(numpy_helper.to_array(q_inits[t.q_initializer]))
            acc = ErrorAccumulator(scale=t.scale_for(w.shape), qrange=t.real_range(w.shape))
            acc.update(w, wq)
            consumer = f_nodes.get(t.consumers[0]) if t.consumers else None
            rec = _record(t, consumer.name if consumer else "", consumer.op_type if consumer else "",
                          order.get(consumer.output[0], -1) if consumer else -1, None)
            rec.local = rec.whole = acc.result()
            if want_dist:
                dist = DistributionAccumulator(_weight_channel_axis(t, consumer, w.ndim))
                dist.update(w)
                rec.distribution = dist.result()
            records.append(rec)
    records.sort(key=lambda r: (r.order, r.kind != "activation", r.name))

    task_results = {t.name: t.result() for t in tasks or []}
    return Measurement(records, [out_cmp[o].result() for o in outputs], user_metric_results(user), len(data), notes,
                       task_results)


def user_metric_results(user: dict) -> dict[str, dict]:
    """The policy's generic metrics ({name: (spec, OutputComparison)}) as results.json holds them."""
    out = {}
    for name, (spec, cmp) in user.items():
        r = cmp.result()
        out[name] = {"value": metric_value(r, spec.metric), "output": spec.output, "slice": spec.slice,
                     "metric": spec.metric, "per_sample_cosine": r["per_sample_cosine"]}
    return out


def update_output_metrics(label: str, outputs: list[str], f_vals: dict, q_vals: dict, out_cmp: dict,
                          user: dict, slices: dict, tasks: list | None) -> None:
    """One sample's model outputs into the output comparisons, the policy's metrics and the task metrics."""
    for name in outputs:
        out_cmp[name].update(f_vals[name], q_vals[name])
    for mname, (spec, cmp) in user.items():
        try:
            cmp.update(apply_slice(f_vals[spec.output], slices[mname], f"metric '{mname}'"),
                       apply_slice(q_vals[spec.output], slices[mname], f"metric '{mname}'"))
        except SliceError as exc:
            raise DataError(Problem(str(exc))) from None
    for task in tasks or []:
        task.update(label, {n: f_vals[n] for n in outputs}, {n: q_vals[n] for n in outputs})


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
