"""The sessions measurement runs on each sample, and the groups of tensors it holds at once.

Per sample, measurement holds every measured activation's float tensor, the quantized run's integer
tensor and the per-layer twin's outputs: for a 320x320 detector about 0.5 GB, for a 640x640 one four times
that. When that is more than `memory_mb`, the activations are split into groups (in graph order) whose
tensors fit, and each group is measured on its own: the float and quantized sessions are run once per group
returning only that group's tensors (ONNX Runtime frees the rest as it goes), and each group has its own
twin. Memory is then bounded by the budget (or by the largest tensor), and time grows with the groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from qcheck.measure.twin import Twin, build_twin
from qcheck.model.runtime import make_session, with_outputs
from qcheck.quantize.qdq import QDQMap, QuantizedTensor


@dataclass
class Group:
    """Activations measured together, and the names each session returns for them."""

    activations: list[QuantizedTensor]
    float_names: list[str]
    q_names: list[str]
    twin: Twin | None
    twin_sess: Any
    weight_sess: Any = None  # the twin's copies with dequantized weights


@dataclass
class Sessions:
    float: Any
    quant: Any
    twin: Twin | None  # the twin of every quantized node (what per-layer mode can measure); None: mode off
    groups: list[Group]

    def run(self, group: Group, sample: dict, weights: bool = True) -> tuple[dict, dict, dict]:
        """The group's tensors on one sample: float model's, quantized run's, per-layer twin's (with its copies
        with dequantized weights when `weights`)."""
        f_vals = dict(zip(group.float_names, self.float.run(group.float_names, sample)))
        q_vals = dict(zip(group.q_names, self.quant.run(group.q_names, sample)))
        t_vals = {}
        # fed the integers: the twin dequantizes them as the quantized model does
        for sess, feeds in ((group.twin_sess, group.twin.inputs if group.twin else {}),
                            (group.weight_sess if weights else None, group.twin.weight_inputs if group.twin else {})):
            if sess is not None:
                names = [o.name for o in sess.get_outputs()]
                t_vals.update(zip(names, sess.run(None, {k: q_vals[v] for k, v in feeds.items()})))
        return f_vals, q_vals, t_vals


def tensor_bytes(t: QuantizedTensor, shapes: dict[str, list], twin: Twin | None, typical: int) -> int:
    """What one sample of activation `t` takes while measured: float, integer and twin tensors."""
    shape = shapes.get(t.name)
    n = int(np.prod(shape)) if shape and all(isinstance(d, int) and d > 0 for d in shape) else typical
    per = 4 + np.dtype(t.dtype).itemsize
    if twin is not None:
        per += 4 * ((t.name in twin.outputs) + (t.name in twin.weight_outputs))
    return n * per


def split(activations: list[QuantizedTensor], sizes: list[int], budget: int) -> list[list[QuantizedTensor]]:
    """Consecutive groups whose sizes add up to at most `budget` (a tensor larger than it is a group alone)."""
    groups: list[list[QuantizedTensor]] = [[]]
    used = 0
    for t, size in zip(activations, sizes):
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(t)
        used += size
    return groups


def open_sessions(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, qmap: QDQMap,
                  activations: list[QuantizedTensor], shapes: dict[str, list], modes: list[str],
                  with_weight_twin: bool, budget_bytes: int | None, twin_of: onnx.ModelProto | None = None) -> Sessions:
    """Sessions and groups for `activations`; `budget_bytes` None: one group; `twin_of`: see `per_tensor.measure`."""
    outputs = [o.name for o in float_model.graph.output]
    twin_of = qmodel if twin_of is None else twin_of
    twin = build_twin(twin_of, float_model, qmap, with_weight_twin=with_weight_twin) if "local" in modes else None
    f_sess = make_session(with_outputs(float_model, [t.name for t in activations if t.name not in outputs]),
                          "float model", spin=False)
    known = [int(np.prod(s)) for s in shapes.values() if s and all(isinstance(d, int) and d > 0 for d in s)]
    typical = int(np.median(known)) if known else 1
    sizes = [tensor_bytes(t, shapes, twin, typical) for t in activations]
    parts = [activations] if budget_bytes is None else split(activations, sizes, budget_bytes)
    twins = [twin] if len(parts) == 1 else [
        build_twin(twin_of, float_model, qmap, with_weight_twin=with_weight_twin, only={t.name for t in part})
        if twin is not None else None for part in parts]
    q_names = [t.q_output for t in activations] + (twin.fed() if twin else [])
    q_sess = make_session(with_outputs(qmodel, q_names), "quantized model", spin=False)
    f_out = {o.name for o in f_sess.get_outputs()}  # a graph input is not among them: it is read from the sample
    q_outputs = [o.name for o in qmodel.graph.output]
    groups = []
    for i, (part, tw) in enumerate(zip(parts, twins)):
        # the model's outputs (compared once per sample) come with the first group
        f_names = [n for n in dict.fromkeys([*(outputs if i == 0 else []), *(t.name for t in part)]) if n in f_out]
        q = list(dict.fromkeys([*(q_outputs if i == 0 else []), *(t.q_output for t in part),
                                *(tw.fed() if tw else [])]))
        t_sess = make_session(tw.model, "per-layer twin model", spin=False) if tw and tw.outputs else None
        w_sess = (make_session(tw.weight_model, "per-layer twin model with dequantized weights", spin=False)
                  if tw and tw.weight_model is not None and tw.outputs else None)
        groups.append(Group(part, f_names, q, tw, t_sess, w_sess))
    return Sessions(f_sess, q_sess, twin, groups)
