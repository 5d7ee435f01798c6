"""Cumulative error curves and the distributions of the most sensitive nodes (as in Horizon's PTQ debugger).

One pass over the samples on the switchable model with every compute node's
output exposed. Per sample: the reference run (all switches off) and one run
per configuration -- all quantized, weights only, activations only, and the
top-1 ... top-k sensitive nodes left float. Along the graph, the cosine
similarity of each node's output to the reference accumulates over samples;
the tail of each curve is the model output.

The same pass collects, for the chosen nodes, the float and quantized values
of their output (histograms) and the float values of their inputs (per-channel
box plots).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from qcheck.analyses.sensitivity import Config
from qcheck.analyses.switchable import SWITCH_INPUT, SwitchableModel
from qcheck.data.readers import DataSet
from qcheck.model.graph import GraphIndex

HIST_BINS = 64
MAX_VALUES = 2_000_000  # per tensor kept for histograms and quartiles; a strided subsample beyond that
OUTLIER_FACTOR = 5.0  # a channel whose range exceeds this many times the median channel range


@dataclass
class _Dot:
    """Running sums for the cosine of two tensors over samples."""

    fq: float = 0.0
    ff: float = 0.0
    qq: float = 0.0

    def update(self, f: np.ndarray, ff: float, q: np.ndarray) -> None:
        """`f`: the reference; `ff`: its squared norm (computed once per sample)."""
        f64, q64 = f.astype(np.float64).ravel(), q.astype(np.float64).ravel()
        self.fq += float(f64 @ q64)
        self.ff += ff
        self.qq += float(q64 @ q64)

    def cosine(self) -> float | None:
        if self.ff == 0 and self.qq == 0:
            return 1.0
        if self.ff == 0 or self.qq == 0:
            return 0.0
        return self.fq / math.sqrt(self.ff * self.qq)


@dataclass
class _Values:
    """Values of one tensor over samples, subsampled to a cap."""

    chunks: list[np.ndarray] = field(default_factory=list)
    size: int = 0
    seen: int = 0  # values the samples had; `size` of them are kept

    def add(self, values: np.ndarray, per_sample_cap: int) -> None:
        flat = values.ravel()
        step = max(1, flat.size // per_sample_cap)
        self.chunks.append(flat[::step].astype(np.float32))
        self.size += self.chunks[-1].size
        self.seen += flat.size

    def array(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)


def node_outputs(sw: SwitchableModel, float_model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(node, op_type, output tensor) for every float-model node whose output the emulation model also computes."""
    present = GraphIndex(sw.model).producer
    return [(n.name, n.op_type, n.output[0]) for n in float_model.graph.node
            if n.output and n.output[0] in present and n.op_type != "Constant"]


def error_curves(sw: SwitchableModel, float_model: onnx.ModelProto, data: DataSet, samples: list[int],
                 configs: list[Config], focus: list[str], ranges: dict[str, tuple[float, float]],
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Curves for `configs`, and distributions for the nodes named in `focus` (quantized: configs[0])."""
    along = node_outputs(sw, float_model)
    f_index = GraphIndex(float_model)
    f_nodes = {n.name: n for n in f_index.nodes}
    present = set(GraphIndex(sw.model).producer) | {i.name for i in sw.model.graph.input}
    # a node whose output the emulation model lacks (a Relu folded into its producer's grid by the tool that made
    # a given quantized model) has no quantized values to show
    focus_nodes = [f_nodes[n] for n in focus if n in f_nodes and f_nodes[n].output[0] in present]
    focus_out = {n.name: n.output[0] for n in focus_nodes}
    focus_quant = {n.name: sw.dq_outputs.get(n.output[0], n.output[0]) for n in focus_nodes}
    focus_in = {n.name: [i for i in n.input if i in present and i not in f_index.initializers][:1]
                for n in focus_nodes}
    extra = sorted({t for _, _, t in along} | set(focus_quant.values()) | {i for v in focus_in.values() for i in v})
    session = sw.session(extra_outputs=extra)
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in sw.model.graph.input}

    dots = [{t: _Dot() for _, _, t in along} for _ in configs]
    f_vals = {n: _Values() for n in focus_out}
    q_vals = {n: _Values() for n in focus_out}
    in_vals: dict[str, list[np.ndarray]] = {n: [] for n in focus_out}
    cap = max(1, MAX_VALUES // max(1, len(samples)))
    off = sw.mask()
    for s, i in enumerate(samples):
        sample = data[i]
        ref = dict(zip(names, session.run(None, {**sample, SWITCH_INPUT: off})))
        # float64 copies are made per tensor as it is used: copies of every tensor at once would double the
        # memory of a run that already returns every intermediate tensor
        norms = {}
        for _, _, t in along:
            v = ref[t].astype(np.float64).ravel()
            norms[t] = float(v @ v)
        for c, config in enumerate(configs):
            got = dict(zip(names, session.run(None, {**sample, SWITCH_INPUT: config.mask})))
            for _, _, t in along:
                dots[c][t].update(ref[t], norms[t], got[t])
            if c == 0:
                for n in focus_out:
                    f_vals[n].add(ref[focus_out[n]], cap)
                    q_vals[n].add(got[focus_quant[n]], cap)
        for n, ins in focus_in.items():
            for name in ins:
                value = sample[name] if name in inputs else ref[name]
                if value.ndim >= 2:  # [N, C, ...]: keep a strided subsample of each channel's values
                    flat = value.reshape(value.shape[0], value.shape[1], -1)
                    step = max(1, flat.shape[0] * flat.shape[2] // max(1, cap // max(1, flat.shape[1])))
                    in_vals[n].append(flat[:, :, ::step])
        if progress:
            progress(s + 1, len(samples))

    curves = [{"label": c.label, "points": [{"node": node, "op_type": op, "tensor": t, "cosine": dots[k][t].cosine()}
                                            for node, op, t in along]}
              for k, c in enumerate(configs)]
    outputs = set(f_index.output_names)
    inits = f_index.initializers
    distributions = []
    for n in focus_nodes:
        t = focus_out[n.name]
        dist = histograms(f_vals[n.name].array(), q_vals[n.name].array(), ranges.get(t))
        # histograms and quartiles are distribution estimates: drawn from a strided subsample when large
        dist.update({"node": n.name, "op_type": n.op_type, "tensor": t, "values_used": f_vals[n.name].size,
                     "values_total": f_vals[n.name].seen})
        boxes = []
        for name in focus_in[n.name]:
            if in_vals[n.name]:
                per_channel = np.concatenate([v.transpose(1, 0, 2).reshape(v.shape[1], -1) for v in in_vals[n.name]], axis=1)
                boxes.append(channel_boxes(per_channel, name, "activation input"))
        for name in n.input:
            if name in inits and len(inits[name].dims) >= 2:
                w = numpy_helper.to_array(inits[name])
                axis = 1 if n.op_type == "ConvTranspose" else 0
                boxes.append(channel_boxes(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1), name, "weight"))
                break
        dist["channels"] = boxes
        distributions.append(dist)
    return {"curves": curves, "outputs": sorted(outputs), "distributions": distributions}


def histograms(f: np.ndarray, q: np.ndarray, calib: tuple[float, float] | None) -> dict:
    """Float and quantized histograms on shared bins covering values and the calibrated range, and the error's."""
    lo = float(min(f.min(initial=0.0), q.min(initial=0.0), calib[0] if calib else 0.0))
    hi = float(max(f.max(initial=0.0), q.max(initial=0.0), calib[1] if calib else 0.0))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    err = (q.astype(np.float64) - f.astype(np.float64)) if q.size == f.size else np.zeros(0)
    e_lim = float(np.abs(err).max(initial=0.0)) or 1.0
    e_edges = np.linspace(-e_lim, e_lim, HIST_BINS + 1)
    # bins=int with a range takes numpy's uniform-bin path (no sort): much faster on millions of values
    return {
        "edges": edges.tolist(),
        "float_counts": np.histogram(f, HIST_BINS, (lo, hi))[0].tolist(),
        "quant_counts": np.histogram(q, HIST_BINS, (lo, hi))[0].tolist(),
        "error_edges": e_edges.tolist(),
        "error_counts": np.histogram(err, HIST_BINS, (-e_lim, e_lim))[0].tolist(),
        "max_abs": float(np.abs(f).max(initial=0.0)),
        "max_abs_error": float(np.abs(err).max(initial=0.0)),
        "calib_min": calib[0] if calib else None,
        "calib_max": calib[1] if calib else None,
        "count": int(f.size),
    }


def channel_boxes(per_channel: np.ndarray, tensor: str, role: str) -> dict:
    """Five-number summary per channel (rows of `per_channel`), with outlier channels marked."""
    x = per_channel.astype(np.float64)
    q = np.percentile(x, [0, 25, 50, 75, 100], axis=1)
    widths = q[4] - q[0]
    median = float(np.median(widths))
    ratio = float(widths.max() / median) if median > 0 else (math.inf if widths.max() > 0 else 1.0)
    outliers = [int(c) for c in np.nonzero(widths > OUTLIER_FACTOR * median)[0]] if median > 0 else []
    advice = None
    if outliers:
        advice = (f"channel(s) {', '.join(map(str, outliers[:8]))} span up to {ratio:.1f}x the median channel's range: "
                  + ("per-tensor quantization gives the other channels few steps; quantize this weight per channel"
                     if role == "weight" else
                     "one scale for the whole tensor wastes most of its grid on these channels; consider "
                     "cross-layer equalization, int16 activations here, or keeping the node float"))
    return {"tensor": tensor, "role": role, "channels": int(x.shape[0]),
            "min": q[0].tolist(), "q1": q[1].tolist(), "median": q[2].tolist(), "q3": q[3].tolist(), "max": q[4].tolist(),
            "range_ratio": ratio, "outliers": outliers, "advice": advice}
