"""Units of change beyond the node: tensor groups, shared-scale chains and regions.

ONNX Runtime keeps a tensor in float only when its producer and every consumer are excluded, and it puts
tensors on one scale through Reshape/Transpose/Squeeze/MaxPool... (same scale initializer) and through
Concat/Split (one grid for all the joined values). So a fix is often a set of nodes, not one:

- a *tensor group* `group:<tensor>`: the tensor, its producer and all its consumers;
- a *shared-scale chain* `chain:<tensor>`: tensors on one scale in the QDQ model ORT actually builds, joined
  through Concat and Split, with the nodes linking them (named after its first tensor in graph order);
- a *region* `tail:<node>` (that node and everything after it in topological order) or `stem:<node>`
  (everything up to it).

A subject is a node name or one of these; `Units` resolves any subject to its nodes and activation tensors.
"""

from __future__ import annotations

import onnx

from qcheck.quantize.qdq import read_qdq

JOINING_OPS = {"Concat", "Split"}  # one grid for all the values they join or split
PREFIXES = ("group:", "chain:", "tail:", "stem:")


class Units:
    """Resolves subjects to (nodes, activation tensors) on the float model."""

    def __init__(self, model: onnx.ModelProto, activations: set[str], order: list[str]):
        self.order = order  # named nodes in topological order
        self.index = {n: i for i, n in enumerate(order)}
        self.activations = activations
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = {}
        self.node_outputs: dict[str, list[str]] = {}
        self.node_inputs: dict[str, list[str]] = {}
        self.op_types: dict[str, str] = {}
        for n in model.graph.node:
            self.op_types[n.name] = n.op_type
            self.node_outputs[n.name] = [o for o in n.output if o in activations]
            self.node_inputs[n.name] = [i for i in n.input if i in activations]
            for o in n.output:
                self.producer[o] = n.name
            for i in n.input:
                self.consumers.setdefault(i, []).append(n.name)
        self.chains: dict[str, list[str]] = {}  # chain name -> its tensors, in graph order

    # ------------------------------------------------------------------ resolution

    def nodes(self, subject: str) -> list[str]:
        kind, _, name = subject.partition(":")
        if subject.startswith("group:"):
            return self._group_nodes([name])
        if subject.startswith("chain:"):
            return self._links(set(self.chains.get(subject, [])))
        if subject.startswith("tail:") and name in self.index:
            return self.order[self.index[name]:]
        if subject.startswith("stem:") and name in self.index:
            return self.order[:self.index[name] + 1]
        return [subject] if subject in self.op_types else []

    def tensors(self, subject: str) -> list[str]:
        if subject.startswith("group:"):
            t = subject.partition(":")[2]
            return [t] if t in self.activations else []
        if subject.startswith("chain:"):
            return list(self.chains.get(subject, []))
        return list(dict.fromkeys(t for n in self.nodes(subject) for t in self.node_outputs.get(n, [])))

    def touching(self, subject: str) -> list[str]:
        """The activation tensors a subject reads or writes (a node's or region's inputs too: what floating it
        leaves in float, and what an integer remedy must widen in its place)."""
        if subject.startswith("chain:"):
            return self.tensors(subject)
        nodes = self.nodes(subject)
        return list(dict.fromkeys(t for n in nodes for t in self.node_inputs.get(n, []) + self.node_outputs.get(n, [])))

    def _links(self, tensors: set[str]) -> list[str]:
        """The nodes that put a chain on one grid: those reading and writing its tensors (floating them leaves the
        chain's tensors between them in float, each joined value on its own producer's grid)."""
        return [n for n in self.order if tensors & set(self.node_inputs.get(n, [])) and
                tensors & set(self.node_outputs.get(n, []))]

    def _group_nodes(self, tensors: list[str]) -> list[str]:
        nodes = []
        for t in tensors:
            if t in self.producer:
                nodes.append(self.producer[t])
            nodes += self.consumers.get(t, [])
        return sorted(set(nodes), key=lambda n: self.index.get(n, 1 << 30))

    # ------------------------------------------------------------------ chains from the QDQ model

    def find_chains(self, qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> None:
        """Tensors ORT put on one scale (equal scale and zero point across a node) or joined by Concat/Split."""
        qdq = read_qdq(qmodel, float_model).tensors
        parent = {t: t for t in qdq if qdq[t].kind == "activation"}

        def find(t):
            while parent[t] != t:
                parent[t] = parent[parent[t]]
                t = parent[t]
            return t

        def same_grid(a, b):
            qa, qb = qdq[a], qdq[b]
            return (qa.dtype == qb.dtype and qa.scale.shape == qb.scale.shape and bool((qa.scale == qb.scale).all())
                    and bool((qa.zero_point == qb.zero_point).all()))

        for node, outs in self.node_outputs.items():
            ins = [i for i in self.node_inputs.get(node, []) if i in parent]
            for o in (o for o in outs if o in parent):
                for i in ins:
                    if self.op_types[node] in JOINING_OPS or same_grid(i, o):
                        parent[find(i)] = find(o)
        members: dict[str, list[str]] = {}
        for t in parent:
            members.setdefault(find(t), []).append(t)
        rank = {t: self.index.get(self.producer.get(t, ""), -1) for t in parent}
        for tensors in members.values():
            if len(tensors) > 1:
                tensors.sort(key=lambda t: (rank[t], t))
                self.chains[f"chain:{tensors[0]}"] = tensors

    def chain_of(self, node: str) -> str | None:
        """The chain a node's output belongs to, if any."""
        outs = set(self.node_outputs.get(node, []))
        return next((name for name, ts in self.chains.items() if outs & set(ts)), None)

    def ranked_units(self, ranking: list[str], limit: int) -> list[str]:
        """Units in the order of the ranking: for each ranked node its chain (when it has one), else the group of
        its first output tensor, else the node; each unit once."""
        out: list[str] = []
        for node in ranking:
            if node not in self.op_types:
                continue
            unit = self.chain_of(node) or (f"group:{self.node_outputs[node][0]}" if self.node_outputs[node] else node)
            if unit not in out:
                out.append(unit)
            if len(out) >= limit:
                break
        return out
