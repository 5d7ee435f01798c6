"""One model whose quantize-dequantize pairs are switched on or off per tensor at run time.

The analyses evaluate hundreds of quantize / don't-quantize configurations.
Building and loading a quantized model for each (what AIMET and PPQ do) costs
seconds per configuration; this module builds ONE model instead, from the QDQ
model ONNX Runtime produced for the full recipe:

    DQ(Q(x)) -> consumers      becomes      If(switch[k]) then DQ(Q(x)) else x -> consumers

for every activation pair, and likewise `If(switch[k]) then DQ(W_int) else W_float`
for every weight and bias. An If runs only the branch it selects (a Where
would compute both: measured 2.5x slower on PP-OCRv4). `switch` is one boolean input of length K (one
entry per quantized tensor). With every switch off the model computes the
float model; with every switch on it computes the QDQ model in float
arithmetic (emulation). Real int8 kernels round intermediate results
differently, so recommendations are confirmed on real quantized models
(`confirm.py`).

With `grids=True` (the search's screening model) an activation pair instead computes
`clip(round(x / scale[k]), lo[k], hi[k]) * scale[k]` (which is DQ(Q(x)): lo, hi are
the integer type's range minus the zero point) with the three per-switch grids fed
as inputs, so a candidate that gives a tensor int16 or a wider range is a change of
the inputs fed, not a new model (`qcheck.quantize.grids` computes them as ORT would).

The QDQ model is built with ORT's `QDQKeepRemovableActivations`, so a Relu
that ORT would fold into its producer's grid stays in the graph: switched
off, the tensor is the Relu's float output, as in the float model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcheck.model.graph import GraphIndex
from qcheck.model.runtime import make_session
from qcheck.quantize.grids import Grid, integer_grid
from qcheck.quantize.qdq import DEQUANTIZE_OPS, QUANTIZE_OPS, REMOVABLE_ACTIVATIONS, QDQMap, float_name

SWITCH_INPUT = "qcheck_switch"
GRID_INPUTS = ("qcheck_scale", "qcheck_lo", "qcheck_hi")  # float[K] each: the grid of every activation switch


@dataclass
class NodeSwitches:
    """The switches that quantize one compute node: its inputs, its weights and its output grid."""

    node: str
    op_type: str
    order: int  # position in the graph (topological)
    activations: list[int] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)  # weights and bias

    @property
    def all(self) -> list[int]:
        return sorted(set(self.activations) | set(self.weights))


@dataclass
class Grids:
    """Per switch, the grid of the QDQ model the switchable model was built from (weights: unused 1, 0, 0)."""

    scale: np.ndarray  # float32 [K]
    lo: np.ndarray  # float32 [K]: the integer type's lowest value minus the zero point
    hi: np.ndarray
    shared: list[str]  # per switch, its scale initializer's name: ORT gives tensors on one scale one initializer


@dataclass
class SwitchableModel:
    model: onnx.ModelProto
    switches: list[str]  # float tensor name per switch index
    kinds: list[str]  # activation | weight | bias per switch index
    nodes: list[NodeSwitches]  # compute nodes with at least one switch, in graph order
    dq_outputs: dict[str, str]  # float tensor name -> its dequantized tensor in `model` (activations)
    grids: Grids | None = None  # the grid model's base grids (built with grids=True)

    def mask(self, on: list[int] | None = None, off: list[int] | None = None, default: bool = False) -> np.ndarray:
        m = np.full(len(self.switches), default, dtype=bool)
        if on:
            m[on] = True
        if off:
            m[off] = False
        return m

    def keep_float(self, nodes: set[str] | list[str]) -> np.ndarray:
        """The mask of the model ORT builds with `nodes` excluded from quantization.

        An excluded node computes in float with float weights, but ORT still
        quantizes a tensor when any other node next to it (its producer or a
        consumer) is quantized: a grid goes away only when every node using it
        is excluded.
        """
        keep = set(nodes)
        users: dict[int, set[str]] = {}
        for n in self.nodes:
            for k in n.activations:
                users.setdefault(k, set()).add(n.node)
        off = [k for n in self.nodes if n.node in keep for k in n.weights]
        off += [k for k, who in users.items() if who <= keep]
        return self.mask(off=off, default=True)

    def session(self, extra_outputs: list[str] | None = None, batched: bool = False, quiet: bool = False):
        """A session on the model; `batched`: the inputs' first dimension is free, to run several samples at once;
        `quiet`: ORT logs nothing (a probe whose failure the caller records)."""
        model = self.model
        if extra_outputs or batched:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
        if batched:
            free_batch_dimension(model)
        if extra_outputs:
            present = {o.name for o in model.graph.output}
            for name in extra_outputs:
                if name not in present:
                    model.graph.output.append(onnx.ValueInfoProto(name=name))
                    present.add(name)
        return make_session(model, "switchable emulation model", quiet=quiet)


def free_batch_dimension(model: onnx.ModelProto) -> None:
    """Make dimension 0 of every data input and output symbolic; drop intermediate shapes fixed at batch 1."""
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name in (SWITCH_INPUT, *GRID_INPUTS) or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 0:
            dims[0].Clear()
            dims[0].dim_param = "qcheck_batch"
    del model.graph.value_info[:]


def stack(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Samples (each with batch dimension 1) -> one feed with the samples along dimension 0; one sample is its
    own feed (it may hold a scalar, which has no axis to join along)."""
    if len(samples) == 1:
        return dict(samples[0])
    return {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}


def build_switchable(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, qmap: QDQMap,
                     grids: bool = False) -> SwitchableModel:
    """Replace every Q/DQ chain by an If on one entry of a boolean switch input (`grids`: see the module's doc).

    One pass over the graph that rewires as it goes; splitting it would hand half-rewired graphs around."""
    model = onnx.ModelProto()
    model.CopyFrom(qmodel)
    graph = model.graph
    q_index, f_index = GraphIndex(graph), GraphIndex(float_model)  # the graph before the edits below
    inits = set(q_index.initializers)  # grows by the float copies of weights added below
    f_inits, producers = f_index.initializers, q_index.producer
    f_outputs = set(f_index.output_names)
    by_qinit = {t.q_initializer: t for t in qmap.tensors.values() if t.q_initializer}
    graph_outputs = {o.name for o in graph.output}

    switches: list[str] = []
    kinds: list[str] = []
    sources: list[str] = []  # per switch: the float tensor its pair reads (activations)
    index: dict[str, int] = {}
    replacement: dict[str, onnx.NodeProto] = {}  # DQ node name -> the If that replaces it
    renamed: dict[str, str] = {}  # DQ output -> If output that consumers now read
    dq_outputs: dict[str, str] = {}
    extra_inits: list[onnx.TensorProto] = []
    base_grids: dict[int, tuple[Grid, str]] = {}  # activation switch -> its grid and scale initializer (grids=True)

    def switch_of(name: str, kind: str, source: str) -> int:
        if name not in index:
            index[name] = len(switches)
            switches.append(name)
            kinds.append(kind)
            sources.append(source)
            extra_inits.append(numpy_helper.from_array(np.array(index[name], dtype=np.int64), f"qcheck_k::{index[name]}"))
        return index[name]

    for node in graph.node:
        if node.op_type not in DEQUANTIZE_OPS:
            continue
        src = node.input[0]
        if src in inits:  # weight or bias
            t = by_qinit.get(src)
            if t is None or t.name not in f_inits:
                continue
            float_src = "qcheck_float::" + t.name  # ORT may give the DQ output the float name (biases)
            if float_src not in inits:
                value = onnx.TensorProto()
                value.CopyFrom(f_inits[t.name])
                value.name = float_src
                extra_inits.append(value)
                inits.add(float_src)
            k, chain = switch_of(t.name, t.kind, float_src), [node]
        else:
            q = producers.get(src)
            if q is None or q.op_type not in QUANTIZE_OPS or q.input[0] in inits:
                continue
            if producers.get(q.input[0]) is not None and producers[q.input[0]].op_type in DEQUANTIZE_OPS:
                continue  # a type conversion between two grids (mixed precision): left as it is
            name = float_name(q.input[0], f_outputs)
            t = qmap.tensors.get(name)
            if t is None or t.kind != "activation":
                continue
            float_src = q.input[0]
            k, chain = switch_of(name, "activation", float_src), [q, node]
        out = node.output[0]
        if_out = out if out in graph_outputs else "qcheck_sw::" + out
        if if_out != out:
            renamed[out] = if_out
        if kinds[k] == "activation":
            dq_outputs.setdefault(switches[k], if_out)
        if grids and kinds[k] == "activation":
            base_grids.setdefault(k, _grid_of(chain[0], q_index.initializers))
            replacement[node.name] = _grid_switch_node(k, float_src, if_out)
        else:
            replacement[node.name] = _switch_node(k, chain, float_src, if_out)

    # Only the branch the switch selects runs: switched off, a pair costs an Identity.
    gathers = [helper.make_node("Gather", [SWITCH_INPUT, f"qcheck_k::{k}"], [f"qcheck_cond::{k}"],
                                name=f"qcheck_gather::{k}") for k in range(len(switches))]
    gathers += [helper.make_node("Gather", [table, f"qcheck_k::{k}"], [f"{table}::{k}"], name=f"qcheck_gather::{k}::{table}")
                for k in sorted(base_grids) for table in GRID_INPUTS]
    new_nodes: list[onnx.NodeProto] = list(gathers)
    for node in graph.node:
        if node.name in replacement:
            new_nodes.append(replacement[node.name])
            continue
        if node.op_type not in DEQUANTIZE_OPS | QUANTIZE_OPS:  # a requantizing Q keeps its input
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
        new_nodes.append(node)
    new_nodes = without_dead_nodes(new_nodes, graph_outputs)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(extra_inits)
    graph.input.append(helper.make_tensor_value_info(SWITCH_INPUT, onnx.TensorProto.BOOL, [len(switches)]))
    table = None
    if grids:
        graph.input.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, [len(switches)]) for t in GRID_INPUTS)
        table = _grid_table(base_grids, len(switches))
    nodes = _node_switches(graph, sources, kinds, {replacement[n].output[0] for n in replacement})
    return SwitchableModel(model, switches, kinds, nodes, dq_outputs, table)


def _grid_of(q: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> tuple[Grid, str]:
    """The grid a QuantizeLinear node puts its input on, and the name of its scale initializer."""
    scale = numpy_helper.to_array(initializers[q.input[1]])
    zero = numpy_helper.to_array(initializers[q.input[2]]) if len(q.input) > 2 and q.input[2] else np.uint8(0)
    return integer_grid(float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0]), zero.dtype), q.input[1]


def _grid_table(base_grids: dict[int, tuple[Grid, str]], n: int) -> Grids:
    scale, lo, hi = np.ones(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    shared = [""] * n
    for k, (g, name) in base_grids.items():
        scale[k], lo[k], hi[k], shared[k] = g.scale, g.lo, g.hi, name
    return Grids(scale, lo, hi, shared)


def _grid_switch_node(k: int, float_src: str, out: str) -> onnx.NodeProto:
    """If(switch[k]) then clip(round(x / scale[k]), lo[k], hi[k]) * scale[k] else Identity(x)."""
    s, lo, hi = (f"{t}::{k}" for t in GRID_INPUTS)
    p = f"qcheck_then::{out}"
    body = [helper.make_node("Div", [float_src, s], [p + "::div"]),
            helper.make_node("Round", [p + "::div"], [p + "::round"]),
            helper.make_node("Clip", [p + "::round", lo, hi], [p + "::clip"]),
            helper.make_node("Mul", [p + "::clip", s], [p])]
    then_branch = helper.make_graph(body, f"qcheck_then_{k}_{out}", [], [onnx.ValueInfoProto(name=p)])
    else_out = "qcheck_else::" + out
    else_branch = helper.make_graph([helper.make_node("Identity", [float_src], [else_out])], f"qcheck_else_{k}_{out}",
                                    [], [onnx.ValueInfoProto(name=else_out)])
    return helper.make_node("If", [f"qcheck_cond::{k}"], [out], name=f"qcheck_switch::{out}",
                            then_branch=then_branch, else_branch=else_branch)


def _switch_node(k: int, chain: list[onnx.NodeProto], float_src: str, out: str) -> onnx.NodeProto:
    """If(switch[k]) then <copy of the Q/DQ chain> else Identity(float tensor)."""
    produced = {c.output[0] for c in chain}
    body = []
    for c in chain:
        copy = onnx.NodeProto()
        copy.CopyFrom(c)
        copy.name = "qcheck_then::" + c.name
        copy.output[0] = "qcheck_then::" + c.output[0]
        if copy.input[0] in produced:
            copy.input[0] = "qcheck_then::" + c.input[0]
        body.append(copy)
    then_branch = helper.make_graph(body, f"qcheck_then_{k}_{out}", [], [onnx.ValueInfoProto(name=body[-1].output[0])])
    else_out = "qcheck_else::" + out
    else_branch = helper.make_graph([helper.make_node("Identity", [float_src], [else_out])], f"qcheck_else_{k}_{out}",
                                    [], [onnx.ValueInfoProto(name=else_out)])
    return helper.make_node("If", [f"qcheck_cond::{k}"], [out], name=f"qcheck_switch::{out}",
                            then_branch=then_branch, else_branch=else_branch)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds in its attributes (an If's branches, a Loop's body)."""
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name a node reads, including those its subgraphs read from the outer scope."""
    names = set(node.input)
    for g in subgraphs(node):
        for sub in g.node:
            names |= reads(sub)
    return names


def without_dead_nodes(nodes: list[onnx.NodeProto], graph_outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop nodes none of whose outputs are read (the Q/DQ pairs the Ifs replaced)."""
    while True:
        used = set(graph_outputs)
        for n in nodes:
            used |= reads(n)
        kept = [n for n in nodes if any(o in used for o in n.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def _node_switches(graph: onnx.GraphProto, sources: list[str], kinds: list[str], switched: set[str]) -> list[NodeSwitches]:
    """For every compute node: the switches of the tensors it reads and of the grid its output lands on."""
    switch_of_output = {n.output[0]: int(n.input[0].split("::")[1]) for n in graph.node if n.output[0] in switched}
    grids_of_source: dict[str, list[int]] = {}
    for k, src in enumerate(sources):
        if kinds[k] == "activation":
            grids_of_source.setdefault(src, []).append(k)
    index = GraphIndex(graph)

    def output_grid(tensor: str) -> list[int]:
        """Switches of the grid this tensor lands on, looking through a Relu/Clip ORT would fold."""
        found = list(grids_of_source.get(tensor, []))
        readers = index.readers(tensor)
        if len(readers) == 1 and readers[0].op_type in REMOVABLE_ACTIVATIONS:
            found.extend(grids_of_source.get(readers[0].output[0], []))
        return found

    out = []
    for order, n in enumerate(graph.node):
        if n.op_type in QUANTIZE_OPS | DEQUANTIZE_OPS or n.name.startswith("qcheck_") or n.op_type == "Constant":
            continue
        read = [switch_of_output[i] for i in n.input if i in switch_of_output]
        if not read:
            continue
        ns = NodeSwitches(n.name, n.op_type, order)
        ns.weights = sorted({k for k in read if kinds[k] != "activation"})
        ns.activations = sorted({k for k in read if kinds[k] == "activation"} |
                                {k for o in n.output for k in output_grid(o)})
        out.append(ns)
    return out
