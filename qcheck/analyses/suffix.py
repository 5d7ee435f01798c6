"""Cheaper sessions for configurations that switch on few pairs: the switchable model, specialized.

Node sensitivity runs hundreds of configurations that each quantize one node.
On the full switchable model every run pays for all its If nodes, and for
weights that are no longer constants (ORT cannot pre-pack them or pick its
blocked-layout kernels): on PP-OCRv4 it runs 3x slower than the float model.
But a configuration that switches on a few pairs changes nothing upstream of
the first node reading one of them, and needs no If for the pairs it leaves
off. So, for a group of such configurations, `specialize` builds a *suffix*
of the switchable model:

- the If of every switch the group turns on stays;
- every other If becomes its else branch, an Identity of the float tensor
  (ORT removes it; on a weight it folds into a constant, so the kernels
  pre-pack again);
- the nodes before `cut` go; the tensors the rest reads from before the cut
  become inputs, fed with the values the *base* model computes (the
  specialization that keeps no switch and drops nothing: the float model).

A suffix with every switch off computes what the base computes, and each
configuration is compared with its own suffix's all-off run, so the only
difference between the two is the quantization the mask switches on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from qcheck.analyses.switchable import (
    GRID_INPUTS,
    SWITCH_INPUT,
    free_batch_dimension,
    reads,
    subgraphs,
    without_dead_nodes,
)

_GATHER, _COND = "qcheck_gather::", "qcheck_cond::"


@dataclass
class Group:
    """Configurations that share one session: the suffix from `cut` that keeps the switches in `keep`."""

    cut: int
    keep: set[int]
    configs: list[int] = field(default_factory=list)  # indices into the configurations evaluated
    full: bool = False  # run on the full switchable model (configurations that switch on many pairs)


@dataclass
class Suffix:
    model: onnx.ModelProto  # its non-switch inputs have no type yet: see `typed`
    inputs: list[str]  # what it reads besides the switches: the model's inputs, and tensors the base model computes
    outputs: list[str]  # the model outputs it computes (the others are the base model's)


def _switch_of(node: onnx.NodeProto) -> int | None:
    if node.name.startswith(_GATHER):
        return int(node.name[len(_GATHER):].split("::")[0])  # the switch's, or one of its grid's (grids=True)
    if node.op_type == "If" and node.input and node.input[0].startswith(_COND):
        return int(node.input[0][len(_COND):])
    return None


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """What a node reads from its graph: its inputs, and what its subgraphs read and do not produce."""
    inner = set()
    for g in subgraphs(node):
        inner |= {o for sub in g.node for o in sub.output} | {i.name for i in g.initializer}
    return reads(node) - inner


def first_readers(model: onnx.ModelProto, n_switches: int) -> list[int]:
    """Per switch: the graph position of the first node that reads its If's output (len(nodes) if none)."""
    nodes = model.graph.node
    switch_of_output = {n.output[0]: k for n in nodes if n.op_type == "If" and (k := _switch_of(n)) is not None}
    first = [len(nodes)] * n_switches
    for i, n in enumerate(nodes):
        for name in reads(n):
            k = switch_of_output.get(name)
            if k is not None and i < first[k]:
                first[k] = i
    return first


def plan(first: list[int], masks: list[np.ndarray], groups: int, wide: int) -> list[Group]:
    """Split configurations into at most `groups` suffix groups by where their first change is read.

    A configuration switching on more than `wide` pairs runs on the full model:
    it would make the suffix of every configuration grouped with it as slow.
    """
    n_nodes = max(first, default=0)
    full = Group(0, set(), full=True)
    narrow: list[tuple[int, int]] = []  # (start, config)
    for c, mask in enumerate(masks):
        on = np.flatnonzero(mask)
        if len(on) > wide:
            full.configs.append(c)
        else:
            narrow.append((min((first[k] for k in on), default=n_nodes), c))
    narrow.sort()
    out = [full] if full.configs else []
    for chunk in np.array_split(np.arange(len(narrow)), max(1, min(groups, len(narrow)))):
        if len(chunk) == 0:
            continue
        members = [narrow[i][1] for i in chunk]
        keep = {int(k) for c in members for k in np.flatnonzero(masks[c])}
        out.append(Group(narrow[chunk[0]][0], keep, members))
    return out


def specialize(model: onnx.ModelProto, keep: set[int], cut: int,
               inline: dict[int, dict[str, float]] | None = None) -> Suffix:
    """The suffix of the switchable `model` from node `cut` that keeps only the switches in `keep`.

    `inline`: switches (not kept) that are fixed ON: their If becomes its quantizing branch, with the grid
    values it reads from the grid inputs (`switchable.GRID_INPUTS`, a grid model's) made constants; a weight's
    DQ(W_int) then folds into a constant as a float weight does (the search screens candidates that vary a few
    switches of a model otherwise quantized this way)."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inline = inline or {}
    nodes: list[onnx.NodeProto] = []
    constants: list[onnx.TensorProto] = []
    for i, node in enumerate(graph.node):
        k = _switch_of(node)
        if k is None:
            if i >= cut:
                nodes.append(node)
        elif k in keep:
            nodes.append(node)  # a kept If (and its Gather) may sit before the cut: its readers do not
        elif node.op_type == "If":
            source = _branch(node, "else_branch").node[0].input[0]
            if not (i >= cut or source in initializers):  # a weight stays a constant wherever its If stood
                continue
            if k in inline:
                nodes += _inlined(node)
                constants += [helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [value])
                              for name, value in inline[k].items()]
            else:
                nodes.append(helper.make_node("Identity", [source], [node.output[0]],
                                              name=node.name.replace("qcheck_switch::", "qcheck_float::")))
    produced = {o for n in nodes for o in n.output}
    outputs = [o for o in graph.output if o.name in produced]
    nodes = without_dead_nodes(nodes, {o.name for o in outputs})
    read = set().union(*(_outer_reads(n) for n in nodes)) if nodes else set()
    produced = {o for n in nodes for o in n.output}
    used = [t for t in list(graph.initializer) + constants if t.name in read]
    known = {t.name for t in used} | produced | {""}
    inputs = sorted(read - known - {SWITCH_INPUT})
    # every suffix takes the full-length switch vector, so one mask means the same thing everywhere
    declared = {i.name: i for i in graph.input}
    g = helper.make_graph(nodes, graph.name + "_suffix",
                          [declared[SWITCH_INPUT]] + [declared.get(n, onnx.ValueInfoProto(name=n)) for n in inputs],
                          list(outputs), used)
    out = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    out.functions.extend(model.functions)
    return Suffix(out, inputs, [o.name for o in outputs])


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def _inlined(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """An If's then-branch as nodes of the outer graph, its last one writing the If's output."""
    body = [onnx.NodeProto() for _ in _branch(node, "then_branch").node]
    for copy, original in zip(body, _branch(node, "then_branch").node):
        copy.CopyFrom(original)
    body[-1].output[0] = node.output[0]
    return body


def base_model(model: onnx.ModelProto, extra_outputs: list[str]) -> onnx.ModelProto:
    """The switchable model with every If replaced by its float branch, returning `extra_outputs` too."""
    out = specialize(model, set(), 0).model
    kept = [i for i in out.graph.input if i.name != SWITCH_INPUT]  # no If is left to read it
    del out.graph.input[:]
    out.graph.input.extend(kept)
    present = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(extra_outputs) if n not in present)
    return out


def typed(suffix: Suffix, values: dict[str, np.ndarray], batched: bool) -> onnx.ModelProto:
    """The suffix's model with its inputs typed after the arrays that will feed them."""
    model = onnx.ModelProto()
    model.CopyFrom(suffix.model)
    for vi in model.graph.input:
        if vi.name == SWITCH_INPUT or vi.type.HasField("tensor_type"):
            continue
        value = values[vi.name]
        vi.CopyFrom(helper.make_tensor_value_info(vi.name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                                  list(value.shape)))
    if batched:
        free_batch_dimension(model)
    return model


class FixedSuffixes:
    """`specialize` with no switch kept (every switch fixed: on ones inlined, off ones float), prepared once so that
    it costs milliseconds per setting: the search's screening builds one such suffix per candidate. Two additions:
    `placed` switches keep their (inlined or float) If even before the cut (a candidate changes them, so what the
    reference computed there is not what they compute now), and `extra_outputs` are returned too.

    Per node of the switchable model, what it becomes is known in advance (a compute node: itself; a switch's If:
    its float Identity or its inlined quantizing branch, with the setting's grid as constants); a setting only
    picks. The nodes stay in the switchable model's topological order, so one backward pass drops dead ones."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.model = model
        self.initializers = {t.name: t for t in graph.initializer}
        # per node: (position, switch or None, the node(s) it becomes: (float, quantized), whether it is a weight's)
        self.entries: list[tuple[int, int | None, tuple[list, list], bool]] = []
        self.qdq: dict[int, list[onnx.NodeProto]] = {}  # per activation switch: Q/DQ operators for an 8-bit grid
        for i, node in enumerate(graph.node):
            k = _switch_of(node)
            if k is None:
                self.entries.append((i, None, ([node], [node]), False))
            elif node.op_type == "If":
                source = _branch(node, "else_branch").node[0].input[0]
                identity = helper.make_node("Identity", [source], [node.output[0]],
                                            name=node.name.replace("qcheck_switch::", "qcheck_float::"))
                self.entries.append((i, k, ([identity], _inlined(node)), source in self.initializers))
                q, s, z = f"qcheck_q::{k}", f"qcheck_qscale::{k}", f"qcheck_qzero::{k}"
                self.qdq[k] = [helper.make_node("QuantizeLinear", [source, s, z], [q], name=q),
                               helper.make_node("DequantizeLinear", [q, s, z], [node.output[0]], name=q + "::dq")]
        self.reads = {id(n): _outer_reads(n) for _, _, pair, _ in self.entries for ns in pair for n in ns}
        self.declared = {i.name: i for i in graph.input}

    def _eight_bit(self, k: int, grid: dict[str, float]) -> list[onnx.TensorProto] | None:
        """An 8-bit grid (255 steps around 0) as the scale and zero point of uint8 Q/DQ operators: the same values
        as Div, Round, Clip, Mul (ORT's QuantizeLinear divides and rounds half to even), in two vectorized kernels
        instead of four passes over the tensor. None for any other grid (int16, or none)."""
        if k not in self.qdq or not grid:
            return None
        scale, lo, hi = (next(v for n, v in grid.items() if n.startswith(t)) for t in GRID_INPUTS)
        if hi - lo != 255 or not -255 <= lo <= 0:
            return None
        return [helper.make_tensor(f"qcheck_qscale::{k}", onnx.TensorProto.FLOAT, [], [scale]),
                helper.make_tensor(f"qcheck_qzero::{k}", onnx.TensorProto.UINT8, [], [int(-lo)])]

    def build(self, cut: int, inline: dict[int, dict[str, float]], placed: set[int],
              typed_as: dict[str, np.ndarray] | None = None, batched: bool = False,
              extra_outputs: list[str] | None = None) -> Suffix:
        """The suffix from node `cut` with the switches in `inline` on (see `specialize`), its inputs typed after
        `typed_as` (as `typed` does; None: left untyped, for a suffix only asked what it reads)."""
        nodes: list[onnx.NodeProto] = []
        constants: list[onnx.TensorProto] = []
        for i, k, (off, on), weight in self.entries:
            if k is None:
                if i >= cut:
                    nodes += on
            elif i >= cut or weight or k in placed:
                if k not in inline:
                    nodes += off
                elif (qdq := self._eight_bit(k, inline[k])) is not None:
                    nodes += self.qdq[k]
                    constants += qdq
                else:
                    nodes += on
                    constants += [helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [value])
                                  for name, value in inline[k].items()]
        produced = {o for n in nodes for o in n.output}
        outputs = [o for o in self.model.graph.output if o.name in produced]
        present = {o.name for o in outputs}
        outputs += [onnx.ValueInfoProto(name=n) for n in dict.fromkeys(extra_outputs or [])
                    if n in produced and n not in present]
        used, kept = {o.name for o in outputs}, []
        for n in reversed(nodes):  # topological order: a node's readers come after it
            if any(o in used for o in n.output):
                kept.append(n)
                used |= self.reads[id(n)] if id(n) in self.reads else _outer_reads(n)
        kept.reverse()
        produced = {o for n in kept for o in n.output}
        inits = [t for name, t in self.initializers.items() if name in used] + [c for c in constants if c.name in used]
        known = {t.name for t in inits} | produced | {""}
        inputs = sorted(used - known - {SWITCH_INPUT})
        declared = [self.declared[SWITCH_INPUT]]
        for name in inputs:
            if name in self.declared:
                declared.append(self.declared[name])
            elif typed_as is None:
                declared.append(onnx.ValueInfoProto(name=name))
            else:
                v = typed_as[name]
                declared.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype),
                                                              list(v.shape)))
        g = helper.make_graph(kept, self.model.graph.name + "_suffix", declared, outputs, inits)
        out = helper.make_model(g, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        out.functions.extend(self.model.functions)
        if batched:
            free_batch_dimension(out)
        return Suffix(out, inputs, [o.name for o in outputs])
