"""Measuring a model without Q/DQ pairs (dynamic, float16) by matching tensor names.

ONNX Runtime's dynamic quantizer and float16 converter keep the names of the
float model's node outputs (a quantized Conv's output is still `c1`, computed
by ConvInteger -> Cast -> Mul -> Add). So both models run on each evaluation
sample with every shared float tensor exposed as an output, and each pair is
compared like a quantized tensor in whole-model mode (errors accumulate along
the graph). There is no integer grid, so grid statistics (scale, rmse/scale,
clipping) are absent and rules that need them do not fire.

The model outputs (and the policy's metrics) come from a second session of
the built model as it is, without the extra outputs: exposing a tensor can
change the numbers. ONNX Runtime's CPU has no float16 kernel for most ops;
it wraps them in Casts to float32 and drops Cast pairs between them, so an
unexposed float16 tensor may never be rounded to float16, while an exposed one
is. Per-tensor statistics therefore show float16 storage of each tensor (as on
float16 hardware); output metrics show the model as ONNX Runtime runs it here.

Weights: float16 initializers keep their names (compared with the float
weight); dynamic int8 weights `W` are stored as `W_quantized`, `W_scale`,
`W_zero_point` and compared dequantized.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from qcheck.data.readers import DataSet
from qcheck.errors import DataError, Problem
from qcheck.measure.error_stats import DistributionAccumulator, ErrorAccumulator
from qcheck.measure.outputs import compare_outputs
from qcheck.measure.per_tensor import Measurement, TensorRecord, workers
from qcheck.model.graph import GraphIndex
from qcheck.model.runtime import make_session, with_outputs
from qcheck.policy.spec import MetricSpec

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def shared_tensors(float_model: onnx.ModelProto, built: onnx.ModelProto) -> list[str]:
    """Float node outputs of the float model that the built model also computes under the same name."""
    f_outputs = {o.name for o in float_model.graph.output}
    types = {vi.name: vi.type.tensor_type.elem_type for vi in float_model.graph.value_info}
    b_produced = {o for n in built.graph.node for o in n.output}
    names = []
    for node in float_model.graph.node:
        for o in node.output:
            if o and o not in f_outputs and o in b_produced and types.get(o, TensorProto.FLOAT) in _FLOATS:
                names.append(o)
    return names


def weight_pairs(float_model: onnx.ModelProto, built: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float weight name -> its value as the built model stores it, back in float64."""
    b_inits = {i.name: i for i in built.graph.initializer}
    out = {}
    for init in float_model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or len(init.dims) < 1:
            continue
        name = init.name
        if name in b_inits and b_inits[name].data_type == TensorProto.FLOAT16:
            out[name] = numpy_helper.to_array(b_inits[name]).astype(np.float64)
        elif f"{name}_quantized" in b_inits and f"{name}_scale" in b_inits:
            q = numpy_helper.to_array(b_inits[f"{name}_quantized"]).astype(np.float64)
            s = numpy_helper.to_array(b_inits[f"{name}_scale"]).astype(np.float64)
            zp_init = b_inits.get(f"{name}_zero_point")
            z = numpy_helper.to_array(zp_init).astype(np.float64) if zp_init is not None else np.zeros_like(s)
            if s.size > 1:  # per channel: one scale along the channel axis
                axis = _channel_axis(built, f"{name}_quantized", q.shape, s.size)
                shape = [1] * q.ndim
                shape[axis] = s.size
                s, z = s.reshape(shape), z.reshape(shape)
            out[name] = (q - z) * s
    return out


def _channel_axis(built: onnx.ModelProto, quantized: str, shape: tuple, channels: int) -> int:
    """The axis a per-channel weight's scales run along.

    A DequantizeLinear that reads the weight says so (`axis`). Dynamic quantization has none: ORT
    scales a Conv weight per output channel (axis 0) and a MatMul weight [K, N] per column (axis 1).
    """
    for node in built.graph.node:
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] == quantized:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            return axis % len(shape)
    matches = [a for a, n in enumerate(shape) if n == channels]
    if len(matches) == 1:
        return matches[0]
    readers = {n.op_type for n in built.graph.node if quantized in n.input}
    return len(shape) - 1 if readers & {"MatMulInteger", "MatMul"} else 0


def measure_by_name(float_model: onnx.ModelProto, built: onnx.ModelProto, data: DataSet, metrics: dict[str, MetricSpec],
                    scheme: str, include_weights: bool = True,
                    progress: Callable[[int, int], None] | None = None, tasks: list | None = None) -> Measurement:
    dtype = "float16" if scheme == "float16" else "float32"  # the type of the compared activations
    f_index = GraphIndex(float_model)
    order, producer_of, outputs = f_index.order, f_index.producer, f_index.output_names
    names = shared_tensors(float_model, built)
    f_sess = make_session(with_outputs(float_model, names), "float model")
    b_sess = make_session(with_outputs(built, names), f"{scheme} model")
    plain = make_session(built, f"{scheme} model")
    plain_out = [o.name for o in plain.get_outputs()]
    f_out = [o.name for o in f_sess.get_outputs()]
    b_out = [o.name for o in b_sess.get_outputs()]
    b_in_types = {i.name: _NP.get(i.type, np.float32) for i in b_sess.get_inputs()}
    whole = {n: ErrorAccumulator() for n in names}
    dist = {n: DistributionAccumulator(1) for n in names}
    compared = compare_outputs(outputs, metrics, tasks)
    with ThreadPoolExecutor(max_workers=workers()) as pool:
        for i in range(len(data)):
            sample = data[i]
            f_vals = dict(zip(f_out, f_sess.run(None, sample)))
            feed = {k: v.astype(b_in_types[k]) if k in b_in_types and v.dtype.kind == "f" else v for k, v in sample.items()}
            # float16 is exact in float32, where the statistics' sums are taken (measure.error_stats.working_pair)
            b_vals = {k: np.asarray(v, dtype=np.float32) if np.asarray(v).dtype in (np.float16, np.float32) else v
                      for k, v in zip(b_out, b_sess.run(None, feed))}
            for name in outputs:
                if not np.all(np.isfinite(f_vals[name])):
                    raise DataError(Problem(f"sample {data.samples[i].label}: the float model's output '{name}' contains "
                                            "NaN or Inf", hint="the model or this input is broken before quantization"))
            _reduce(pool, names, whole, dist, f_vals, b_vals)
            p_vals = {k: np.asarray(v, dtype=np.float64) if np.asarray(v).dtype.kind == "f" else v
                      for k, v in zip(plain_out, plain.run(None, feed))}
            compared.update(data.samples[i].label, f_vals, p_vals)
            if progress:
                progress(i + 1, len(data))

    records = []
    for n in names:
        producer = producer_of[n]
        rec = _record(n, "activation", producer.name, producer.op_type, order.get(n, -1), dtype)
        rec.whole = whole[n].result()
        rec.per_layer_missing = f"the {scheme} model is compared by tensor name: whole-model errors only"
        rec.distribution = dist[n].result()
        records.append(rec)
    for index, rec in enumerate(sorted(records, key=lambda r: r.order)):
        rec.layer_index = index
    if include_weights:
        consumers = {name: readers[0] for name, readers in f_index.consumers.items()}  # the first reader
        f_inits = f_index.initializers
        for name, value in weight_pairs(float_model, built).items():
            w = numpy_helper.to_array(f_inits[name])
            acc = ErrorAccumulator()
            acc.update(w, value)
            node = consumers.get(name)
            kind = "bias" if w.ndim == 1 and node is not None and list(node.input).index(name) == 2 else "weight"
            wdtype = "float16" if scheme == "float16" else "int8"
            rec = _record(name, kind, node.name if node else "", node.op_type if node else "",
                          order.get(node.output[0], -1) if node else -1, wdtype)
            rec.local = rec.whole = acc.result()  # a weight is compared directly: its own error either way
            records.append(rec)
    records.sort(key=lambda r: (r.order, r.kind != "activation", r.name))
    notes = [f"{scheme} model: {len(names)} intermediate tensor(s) matched to the float model by name; whole-model "
             "errors only (no integer grid, so no scale-based statistics)"]
    return Measurement(records, compared.output_results(), compared.user_results(), len(data), notes,
                       compared.task_results())


def _reduce(pool: ThreadPoolExecutor, names: list[str], whole: dict, dist: dict, f_vals: dict, b_vals: dict) -> None:
    """One sample's statistics, one tensor per task: each accumulator is touched by one task (as in per_tensor)."""
    def one(n: str) -> None:
        whole[n].update(f_vals[n], b_vals[n])
        dist[n].update(f_vals[n])

    for _ in pool.map(one, names):
        pass


def _record(name: str, kind: str, node: str, op_type: str, order: int, dtype: str) -> TensorRecord:
    return TensorRecord(name=name, kind=kind, node=node, op_type=op_type, order=order, dtype=dtype, scale=None,
                        zero_point=None, per_channel=False, range=None)
