"""The per-layer twin: a float copy of each quantized node, fed with what the quantized node saw.

Comparing the twin's output with the quantized node's output isolates the
error that node adds (per-layer, "local" mode). With a weight twin, a second
copy of each node with dequantized weights measures the error the weights
alone cause (`weight_error_share`). The two copies are two models: the
weights-only one costs as much as the first and only a share is read from
it, so the measurement may run it on fewer samples (ONNX Runtime computes
every node of a model whatever outputs a run asks for).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from qcheck.model.graph import GraphIndex
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
DEQUANTIZED_PREFIX = "qcheck_dq::"  # a dequantized copy: apart from INPUT_PREFIX, as a model may read a tensor both
# as it is and through its Q/DQ pair (ORT's QOperator format: a float reader of a tensor an integer op also reads)


@dataclass
class Twin:
    model: onnx.ModelProto
    inputs: dict[str, str]  # twin graph input -> tensor name in the quantized run (a float tensor, or the integer
    # q_output of a quantized activation, dequantized inside the twin)
    outputs: dict[str, str]  # float tensor name -> twin output name
    weight_outputs: dict[str, str]  # float tensor name -> output of the twin with dequantized weights
    weight_model: onnx.ModelProto | None = None  # the copies with dequantized weights (None: no weight twin)
    weight_inputs: dict[str, str] = field(default_factory=dict)  # as `inputs`, for `weight_model`

    def fed(self) -> list[str]:
        """The quantized run's tensors the twin's models read."""
        return sorted(set(self.inputs.values()) | set(self.weight_inputs.values()))


@dataclass
class _Builder:
    q: GraphIndex  # the quantized model
    f: GraphIndex  # the float model
    qmap: QDQMap
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: dict[str, onnx.TensorProto] = field(default_factory=dict)
    graph_inputs: dict[str, int] = field(default_factory=dict)  # twin input -> element type
    feeds: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    weight_outputs: dict[str, str] = field(default_factory=dict)
    dequantizers: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.f_outputs = set(self.f.output_names)
        self.by_qoutput = {t.q_output: t for t in self.qmap.tensors.values() if t.kind == "activation"}

    def twin_input(self, name: str) -> str | None:
        """The twin's name for input `name` of a quantized node; None when it cannot be fed."""
        if name == "":
            return ""
        producer = self.q.producer.get(name)
        if producer is not None and producer.op_type in DEQUANTIZE_OPS:
            src = producer.input[0]
            if src in self.by_qoutput:  # dequantized activation: the quantized run's integers, dequantized here
                return self.dequantized(producer, self.by_qoutput[src])
            return None  # weights are resolved by position (see inputs_of)
        if name in self.q.initializers:
            self.inits[name] = self.q.initializers[name]
            return name
        if name not in self.f.types:
            return None
        feed = INPUT_PREFIX + name
        self.feeds[feed] = name
        self.graph_inputs[feed] = self.f.types[name]
        return feed

    def dequantized(self, dq: onnx.NodeProto, t: QuantizedTensor) -> str:
        """The twin's dequantized copy of activation `t`: the quantized run's integer tensor fed in, and a copy of
        the quantized model's own DequantizeLinear (ORT's kernel: the numbers the quantized nodes read, with no
        float copy of every tensor made in Python)."""
        name = DEQUANTIZED_PREFIX + t.name
        if name in self.dequantizers:
            return name
        feed = INPUT_PREFIX + t.q_output
        self.feeds[feed] = t.q_output
        self.graph_inputs[feed] = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
        node = onnx.NodeProto()
        node.CopyFrom(dq)
        node.name = DEQUANTIZED_PREFIX + (dq.name or t.name)
        node.input[0] = feed
        del node.output[:]
        node.output.append(name)
        for param in node.input[1:]:
            if param:
                self.inits[param] = self.q.initializers[param]
        self.dequantizers.add(name)
        self.nodes.append(node)
        return name

    def inputs_of(self, node: onnx.NodeProto, twin_of: onnx.NodeProto) -> tuple[list[str], dict[int, str]] | None:
        """The twin's inputs for `node` (float weights in place of dequantized ones) and, by position, the
        weights the weights-only twin dequantizes; None when some input cannot be fed."""
        new_inputs: list[str] = []
        dq_weights: dict[int, str] = {}
        for pos, name in enumerate(node.input):
            producer = self.q.producer.get(name)
            if producer is not None and producer.op_type in DEQUANTIZE_OPS and producer.input[0] in self.q.initializers:
                original = twin_of.input[pos] if pos < len(twin_of.input) else None
                if original not in self.f.initializers:
                    return None
                self.inits[original] = self.f.initializers[original]
                new_inputs.append(original)
                if original in self.qmap.tensors and self.qmap.tensors[original].q_initializer in self.q.initializers:
                    dq_weights[pos] = original
                continue
            fed = self.twin_input(name)
            if fed is None:
                return None
            new_inputs.append(fed)
        return new_inputs, dq_weights

    def emit(self, node: onnx.NodeProto, twin_of: onnx.NodeProto, new_inputs: list[str], measured: list[str],
             prefix: str, into: dict[str, str]) -> None:
        """Add a float copy of `twin_of` (outputs renamed with `prefix`) and record its measured outputs."""
        twin = onnx.NodeProto()
        twin.CopyFrom(twin_of)
        twin.name = prefix + node.name
        del twin.input[:]
        twin.input.extend(new_inputs)
        del twin.output[:]
        twin.output.extend(prefix + o for o in twin_of.output)
        self.nodes.append(twin)
        for out in measured:
            if out in twin_of.output:
                into[out] = prefix + out
            else:
                self.reapply_removed(twin_of, out, prefix, into)

    def reapply_removed(self, twin_of: onnx.NodeProto, out: str, prefix: str, into: dict[str, str]) -> None:
        """ORT removed a Relu/Clip and gave its output name `out` to this node: re-apply it in float."""
        for raw in twin_of.output:
            chain = [c for c in self.f.readers(raw) if c.op_type in REMOVABLE_ACTIVATIONS and out in c.output]
            if chain:
                act = onnx.NodeProto()
                act.CopyFrom(chain[0])
                act.name = prefix + chain[0].name
                act.input[0] = prefix + raw
                for j in range(1, len(act.input)):
                    if act.input[j] and act.input[j] in self.f.initializers:
                        self.inits[act.input[j]] = self.f.initializers[act.input[j]]
                del act.output[:]
                act.output.append(prefix + out)
                self.nodes.append(act)
                into[out] = prefix + out
                return

    def add(self, node: onnx.NodeProto, with_weight_twin: bool, only: set[str] | None = None) -> None:
        """The twin (and weights-only twin) of one quantized node, when it has measured outputs and can be fed."""
        if node.op_type in QUANTIZE_OPS | DEQUANTIZE_OPS or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return
        measured = [float_name(o, self.f_outputs) for o in node.output]
        measured = [o for o in measured if o in self.qmap.tensors and self.qmap.tensors[o].kind == "activation"
                    and (only is None or o in only)]
        twin_of = self.f.by_name.get(node.name)
        if not measured or twin_of is None:
            return
        fed = self.inputs_of(node, twin_of)
        if fed is None:
            return
        new_inputs, dq_weights = fed
        self.emit(node, twin_of, new_inputs, measured, TWIN_PREFIX, self.outputs)
        if dq_weights and with_weight_twin:
            # The same float op with dequantized weights: the difference to the float-weight twin is
            # the error the weights alone put into this node's output.
            self.emit(node, twin_of, self.dequantized_weights(new_inputs, dq_weights), measured, TWIN_W_PREFIX,
                      self.weight_outputs)

    def dequantized_weights(self, new_inputs: list[str], dq_weights: dict[int, str]) -> list[str]:
        w_inputs = list(new_inputs)
        for pos, original in dq_weights.items():
            name = DQ_WEIGHT_PREFIX + original
            if name not in self.inits:
                t = self.qmap.tensors[original]
                value = t.dequantize(numpy_helper.to_array(self.q.initializers[t.q_initializer]))
                self.inits[name] = numpy_helper.from_array(value.astype(np.float32), name)
            w_inputs[pos] = name
        return w_inputs


def build_twin(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, qmap: QDQMap,
               with_weight_twin: bool = True, only: set[str] | None = None) -> Twin:
    """Float copies of the quantized nodes, fed with what the quantized nodes saw; `only`: the nodes producing
    these activations (measured in a group, qcheck.measure.sessions)."""
    b = _Builder(GraphIndex(qmodel), GraphIndex(float_model), qmap)
    for node in qmodel.graph.node:
        b.add(node, with_weight_twin, only)
    dequantizers = [n for n in b.nodes if n.output[0] in b.dequantizers]
    copies = [n for n in b.nodes if n.output[0] not in b.dequantizers and not n.name.startswith(TWIN_W_PREFIX)]
    weight_copies = [n for n in b.nodes if n.name.startswith(TWIN_W_PREFIX)]
    model, inputs = _model(b, dequantizers, copies, list(b.outputs.values()), qmodel, "qcheck_twin")
    weights = (_model(b, dequantizers, weight_copies, list(b.weight_outputs.values()), qmodel, "qcheck_weight_twin")
               if weight_copies else (None, {}))
    return Twin(model, inputs, b.outputs, b.weight_outputs, *weights)


def _model(b: _Builder, dequantizers: list[onnx.NodeProto], copies: list[onnx.NodeProto], outputs: list[str],
           qmodel: onnx.ModelProto, name: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A model of `copies` and the dequantizers they read, with the feeds and initializers these need; its graph
    inputs -> the quantized run's tensors they are fed."""
    read = {i for n in copies for i in n.input if i}
    nodes = [n for n in dequantizers if n.output[0] in read] + copies
    read |= {i for n in nodes for i in n.input if i}
    graph = onnx.helper.make_graph(
        nodes, name,
        [onnx.helper.make_tensor_value_info(n, t, None) for n, t in b.graph_inputs.items() if n in read],
        [onnx.ValueInfoProto(name=o) for o in outputs],
        initializer=[t for n, t in b.inits.items() if n in read],
    )
    model = onnx.helper.make_model(graph, opset_imports=list(qmodel.opset_import))
    model.ir_version = qmodel.ir_version
    return model, {k: v for k, v in b.feeds.items() if k in read}
