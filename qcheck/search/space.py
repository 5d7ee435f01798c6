"""The search space: changes to a recipe, what they cost on the target, and the budget.

A *change* is one remedy applied to one subject: a node (keep it in float,
give its outputs int16, its weights int16, give its outputs an explicit tighter range) or the
whole model (per-channel on/off, another calibration method, symmetric
activations, reduced range, the first N quantizable nodes in float). A candidate is a
set of changes on top of the policy's own recipe; `apply_changes` turns it
into a `quantize.Recipe`, so equal sets build equal models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import onnx

from qcheck.model.graph import GraphIndex
from qcheck.policy.spec import SearchBudget
from qcheck.policy.targets import GIVEN_RANGE_EDIT_COST, REMEDY_COST_KEY, TargetProfile
from qcheck.quantize.calibrate import METHODS, Recipe, per_tensor_fallbacks, quantizable_op_types
from qcheck.quantize.given_edit import GIVEN_METHOD
from qcheck.quantize.schemes import scheme_recipe
from qcheck.search.units import Units

NODE_REMEDIES = ("keep_float", "int16_activations", "int16_weights", "explicit_range", "widen_range")
MODEL_REMEDIES = ("scheme", "per_channel", "calibration_method", "symmetric", "reduced_range", "skip_first",
                  "keep_float_flagged")
FLOAT_NODE_REMEDIES = ("keep_float", "skip_first", "keep_float_flagged")  # costed and budgeted as float nodes
# remedy -> the target profile's cost key (None: no cost entry, always allowed)
COST_KEY = {**REMEDY_COST_KEY, "symmetric": None, "reduced_range": None}
# the weight input of the ops ORT quantizes per channel, and its channel axis there (Gemm: 0 when transB)
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1}
SCHEME_SWITCHES = ("a16w8",)  # whole-model scheme switches the search tries (the target must run them)
MODEL = "(model)"


@dataclass(frozen=True, order=True)
class Change:
    remedy: str
    subject: str  # a node name, a unit (group:/chain:/tail:/stem:, see units.py), or MODEL
    value: str | None = None  # calibration_method: the method; skip_first: N; explicit_range: the range's method;
    # scheme: the scheme

    def label(self) -> str:
        if self.remedy == "keep_float":
            return f"float {self.subject}"
        if self.remedy == "int16_activations":
            return f"int16 {self.subject}"
        if self.remedy == "int16_weights":
            return f"int16 weights {self.subject}"
        if self.remedy == "explicit_range":
            return f"{self.value} range {self.subject}"
        if self.remedy == "widen_range":
            return f"widened range {self.subject}"
        if self.remedy == "scheme":
            return f"scheme {self.value}"
        if self.remedy == "skip_first":
            return f"float first {self.value} node(s)"
        if self.remedy == "keep_float_flagged":
            return "float flagged nodes"
        if self.remedy == "per_channel":
            return "per-channel toggled"
        if self.remedy == "calibration_method":
            return f"calibration {self.value}"
        return self.remedy.replace("_", " ")

    def to_dict(self) -> dict:
        return {"remedy": self.remedy, "subject": self.subject, "value": self.value}


class Graph:
    """What the search needs to know about the float model: node outputs and which nodes touch."""

    def __init__(self, model: onnx.ModelProto, activations: set[str], base: Recipe | None = None):
        self.base = base or Recipe()
        index = GraphIndex(model)
        self.outputs = {n.name: [o for o in n.output if o in activations] for n in model.graph.node if n.name}
        self.op_types = {n.name: n.op_type for n in model.graph.node if n.name}
        order = index.order
        first = {n.name: min((order[o] for o in n.output if o in order), default=1 << 30) for n in model.graph.node}
        self.order = sorted(self.outputs, key=lambda n: first[n])
        # explicit_range: tensor -> (rmin, rmax) from another calibration method (set by run_search), and which
        self.explicit_ranges: dict[str, tuple[float, float]] = {}
        self.explicit_method = ""
        self.calibrated: dict[str, tuple[float, float]] = {}  # the base recipe's calibrated ranges
        self.flagged: list[str] = []  # keep_float_flagged: nodes error/warning findings propose to keep in float
        # widen_range: tensor -> the calibrated range joined with what the evaluation data reach (set by run_search)
        self.reach: dict[str, tuple[float, float]] = {}
        self.units = Units(model, activations, self.order)
        # int16_weights: node -> (its weight initializer, the axis ORT quantizes it per channel on, or None when
        # ORT quantizes it per tensor)
        inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
        per_tensor = per_tensor_fallbacks(model, Recipe(per_channel=True))
        self.weights: dict[str, tuple[str, int | None]] = {}
        for n in model.graph.node:
            if n.name and n.op_type in WEIGHT_AXIS and len(n.input) > 1 and n.input[1] in inits:
                trans_b = any(a.name == "transB" and a.i for a in n.attribute)
                axis = 0 if n.op_type == "Gemm" and trans_b else WEIGHT_AXIS[n.op_type]
                self.weights[n.name] = (n.input[1], None if n.input[1] in per_tensor else axis)
        self.quantizable = self.quantizable_ops(self.base)
        self.neighbours: dict[str, set[str]] = {n: set() for n in self.outputs}
        for n in model.graph.node:
            for i in n.input:
                p = index.producer[i].name if i in index.producer else None
                if p and n.name and p in self.neighbours:
                    self.neighbours[p].add(n.name)
                    self.neighbours[n.name].add(p)

    def quantizable_ops(self, base: Recipe) -> set[str]:
        """The op types keep_float can change: those ORT quantizes; on a given model every op type, as a node there
        that reads dequantized values sees quantized ones whatever its type (a Div or HardSigmoid between pairs;
        the given base recipe's exclude_nodes hold the nodes that do not)."""
        if base.calibration == GIVEN_METHOD:
            return set(self.op_types.values())
        return set(quantizable_op_types(base.exclude_op_types))

    def first_quantizable(self, base: Recipe, n: int) -> list[str]:
        """skip_first: the first n nodes, in topological order, that the base recipe would quantize."""
        ops = self.quantizable_ops(base)
        return [m for m in self.order if self.op_types[m] in ops and m not in base.exclude_nodes][:n]

    def float_nodes_of(self, subject: str, base: Recipe | None = None) -> list[str]:
        """keep_float on a subject: its nodes ORT would quantize and the policy does not already keep in float
        (excluding a node that computes in float anyway changes nothing)."""
        return [n for n in self.units.nodes(subject)
                if self.op_types.get(n) in self.quantizable and n not in (base or self.base).exclude_nodes]

    def tensors_of(self, subject: str) -> list[str]:
        return self.units.tensors(subject)

    def weights_of(self, subject: str, base: Recipe | None = None) -> dict[str, int | None]:
        """int16_weights on a subject: weight -> per-channel axis of its nodes' weights that the recipe quantizes to
        8 bits (a node kept in float, or a weight already in int16, changes nothing)."""
        base = base or self.base
        if base.weights == "int16":
            return {}
        out = {}
        for n in self.units.nodes(subject):
            if n in self.weights and n not in base.exclude_nodes:
                w, axis = self.weights[n]
                if base.overrides.get(w, {}).get("quant_type") != "int16":
                    out[w] = axis
        return out

    def wider_ranges(self, subject: str, base: Recipe) -> dict[str, tuple[float, float]]:
        """widen_range: the tensors a subject touches whose evaluation data reach beyond the calibrated range."""
        out = {}
        for t in self.units.touching(subject):
            if t not in self.reach or {"rmin", "rmax"} & set(base.overrides.get(t, {})):
                continue
            lo, hi = self.reach[t]
            clo, chi = self.calibrated.get(t, (lo, hi))
            if lo < clo or hi > chi:
                out[t] = (min(lo, clo), max(hi, chi))
        return out

    def tighter_ranges(self, node: str, base: Recipe) -> dict[str, tuple[float, float]]:
        """explicit_range: the subject's tensors whose explicit range is narrower than the calibrated one
        (and that the policy does not already give an rmin/rmax). On a given model, whose grids qcheck did not
        calibrate, any range other than its own: a wider one too (a QAT export's range that clips)."""
        given = base.calibration == GIVEN_METHOD
        out = {}
        for t in self.tensors_of(node):
            if t not in self.explicit_ranges or {"rmin", "rmax"} & set(base.overrides.get(t, {})):
                continue
            lo, hi = self.explicit_ranges[t]
            clo, chi = self.calibrated.get(t, (lo, hi))
            if lo < hi and (lo > clo or hi < chi or given and (lo, hi) != (clo, chi)):
                out[t] = (lo, hi)
        return out

    def islands(self, float_nodes: list[str]) -> int:
        """Connected groups of float nodes: each is one float region inside the integer graph."""
        left, count = set(float_nodes), 0
        while left:
            count += 1
            stack = [left.pop()]
            while stack:
                for nb in self.neighbours.get(stack.pop(), ()):
                    if nb in left:
                        left.remove(nb)
                        stack.append(nb)
        return count


def apply_changes(base: Recipe, changes: tuple[Change, ...], graph: Graph) -> Recipe:
    r = copy.deepcopy(base)
    for c in changes:
        if c.remedy == "keep_float":
            r.exclude_nodes += graph.float_nodes_of(c.subject)
        elif c.remedy == "skip_first":
            r.exclude_nodes += graph.first_quantizable(base, int(c.value))
        elif c.remedy == "keep_float_flagged":
            r.exclude_nodes += graph.flagged
        elif c.remedy == "explicit_range":
            for t, (lo, hi) in graph.tighter_ranges(c.subject, base).items():
                r.overrides[t] = {**r.overrides.get(t, {}), "rmin": float(lo), "rmax": float(hi)}
        elif c.remedy == "widen_range":
            for t, (lo, hi) in graph.wider_ranges(c.subject, base).items():
                r.overrides[t] = {**r.overrides.get(t, {}), "rmin": float(lo), "rmax": float(hi)}
        elif c.remedy == "int16_activations":
            for t in graph.tensors_of(c.subject):
                r.overrides[t] = {**r.overrides.get(t, {}), "quant_type": "int16"}
        elif c.remedy == "per_channel":
            r.per_channel = not base.per_channel
        elif c.remedy == "calibration_method":
            r.calibration = c.value
        elif c.remedy == "symmetric":
            r.symmetric_activations = True
        elif c.remedy == "reduced_range":
            r.reduce_range = True
    for c in changes:  # a scheme switch last: it sets every activation's type (int16 overrides are then moot)
        if c.remedy == "scheme":
            r = scheme_recipe(c.value, r)
    for c in changes:  # after the scheme, which drops every tensor's type override
        if c.remedy == "int16_weights":
            for w, axis in graph.weights_of(c.subject, base).items():
                r.overrides[w] = {**r.overrides.get(w, {}), "quant_type": "int16", "symmetric": True, "axis": axis}
    for o in r.overrides.values():  # a weight's axis: ORT quantizes it per channel only when the recipe does
        if "axis" in o and (o["axis"] is None or not r.per_channel):
            del o["axis"]
    r.exclude_nodes = sorted(set(r.exclude_nodes))
    r.overrides = dict(sorted(r.overrides.items()))
    return r


def float_nodes(changes: tuple[Change, ...], graph: Graph, base: Recipe | None = None) -> list[str]:
    """Nodes the changes keep in float: keep_float's, skip_first's first N quantizable nodes, the flagged nodes."""
    nodes = [n for c in changes if c.remedy == "keep_float" for n in graph.float_nodes_of(c.subject)]
    for c in changes:
        if c.remedy == "skip_first":
            nodes += graph.first_quantizable(base or graph.base, int(c.value))
        elif c.remedy == "keep_float_flagged":
            nodes += graph.flagged
    return list(dict.fromkeys(nodes))


def counts(changes: tuple[Change, ...], graph: Graph) -> dict[str, int]:
    floats = float_nodes(changes, graph)
    int16 = {t for c in changes if c.remedy == "int16_activations" for t in graph.tensors_of(c.subject)}
    weights = {w for c in changes if c.remedy == "int16_weights" for w in graph.weights_of(c.subject)}
    ranged = {t for c in changes if c.remedy == "explicit_range" for t in graph.tighter_ranges(c.subject, graph.base)}
    ranged |= {t for c in changes if c.remedy == "widen_range" for t in graph.wider_ranges(c.subject, graph.base)}
    scheme = {c.value for c in changes if c.remedy == "scheme"}
    if scheme:  # a16w8: every activation in int16
        int16 = set(graph.calibrated)
    int16 |= weights
    return {"float_nodes": len(floats), "float_islands": graph.islands(floats), "int16_tensors": len(int16),
            "explicit_ranges": len(ranged)}


def cost(changes: tuple[Change, ...], graph: Graph, target: TargetProfile) -> float:
    """What the candidate costs on the target (relative units from the profile; inf when not allowed). On a given
    quantized model a moved range is an edit of that model: at least GIVEN_RANGE_EDIT_COST per tensor, and a
    calibration method switch moves every tensor's."""
    n = counts(changes, graph)
    given = graph.base.calibration == GIVEN_METHOD
    total = 0.0
    if n["float_nodes"]:
        total += target.cost("float_node", n["float_nodes"]) + target.cost("float_island", n["float_islands"])
    if n["int16_tensors"]:
        total += target.cost("int16_tensor", n["int16_tensors"])
    if n["explicit_ranges"]:
        total += _range_cost(target, "explicit_range", n["explicit_ranges"], given)
    for c in changes:
        key = COST_KEY[c.remedy]
        if c.remedy == "calibration_method" and given:
            total += _range_cost(target, key, max(len(graph.calibrated), 1), given)
        elif c.remedy in MODEL_REMEDIES and key is not None and c.remedy not in FLOAT_NODE_REMEDIES + ("scheme",):
            total += target.cost(key, 1)
    return total


def _range_cost(target: TargetProfile, key: str, tensors: int, given: bool) -> float:
    value = target.cost(key, tensors)
    return max(value, GIVEN_RANGE_EDIT_COST * tensors) if given else value


def allowed(remedy: str, target: TargetProfile) -> bool:
    key = COST_KEY[remedy]
    return key is None or target.allows(key)


def within_budget(changes: tuple[Change, ...], graph: Graph, budget: SearchBudget) -> bool:
    """Float nodes and int16 tensors within the budget (a scheme switch the target runs is a whole-model
    alternative: its int16 activations are costed, not counted against max_int16_tensors)."""
    n = counts(changes, graph)
    int16_ok = n["int16_tensors"] <= budget.max_int16_tensors or any(c.remedy == "scheme" for c in changes)
    return n["float_nodes"] <= budget.max_float_nodes and int16_ok


# more bits over a wider range; int16 activations and weights
COMBINABLE = {frozenset({"int16_activations", "widen_range"}), frozenset({"int16_activations", "int16_weights"})}


def compatible(changes: tuple[Change, ...], new: Change) -> bool:
    """One remedy per subject (int16 with a widened range excepted), one of each whole-model remedy."""
    for c in changes:
        if c.subject == new.subject and (c.subject != MODEL or c.remedy == new.remedy):
            if frozenset({c.remedy, new.remedy}) not in COMBINABLE:
                return False
    return True


def skip_first_counts(graph: Graph, base: Recipe, max_float_nodes: int) -> list[int]:
    """skip_first tries N = 1, 2, 4, ... up to the float-node budget and the number of quantizable nodes."""
    most = min(max_float_nodes, len(graph.first_quantizable(base, max_float_nodes)))
    out, n = [], 1
    while n <= most:
        out.append(n)
        n *= 2
    return out


def build_pool(ranking: list[str], remedies: list[str], target: TargetProfile, graph: Graph, base: Recipe,
               limit: int, max_float_nodes: int = 0,
               proposed: dict[str, list[str]] | None = None) -> tuple[list[Change], list[Change], list[str]]:
    """(whole-model changes, per-node changes in ranking order, notes on remedies the target refuses).

    `proposed`: node -> the remedies its rule findings propose. A flagged node gets those of its proposals the
    policy allows (and the target can use), in the policy's order; when none of them changes anything on that
    node, or the node has no finding, it gets every allowed per-node remedy.
    """
    notes = []
    usable = []
    for remedy in remedies:
        if allowed(remedy, target):
            usable.append(remedy)
        else:
            notes.append(f"{remedy} is not available on target '{target.name}'")
    model_changes = []
    for remedy in usable:
        if remedy == "calibration_method":
            model_changes += [Change(remedy, MODEL, m) for m in METHODS if m != base.calibration]
        elif remedy == "symmetric" and base.symmetric_activations or remedy == "reduced_range" and base.reduce_range:
            continue
        elif remedy == "skip_first":
            model_changes += [Change(remedy, MODEL, str(n)) for n in skip_first_counts(graph, base, max_float_nodes)]
        elif remedy == "scheme":
            switches = [s for s in SCHEME_SWITCHES if target.can_run(s) and base.activations not in ("int16", "uint16")]
            model_changes += [Change(remedy, MODEL, s) for s in switches]
            if not switches:
                notes.append(f"scheme: target '{target.name}' runs no scheme other than the policy's "
                             f"({', '.join(target.schemes)})")
        elif remedy == "keep_float_flagged":
            if graph.flagged:
                model_changes.append(Change(remedy, MODEL))
            else:
                notes.append("keep_float_flagged: no error or warning finding proposes keeping a node in float")
        elif remedy in MODEL_REMEDIES:
            model_changes.append(Change(remedy, MODEL))
    node_changes = []
    node_usable = [r for r in usable if r in NODE_REMEDIES]
    for node in [n for n in ranking if n in graph.outputs][:limit]:
        wanted = [r for r in node_usable if r in (proposed or {}).get(node, ())]
        node_changes += _node_changes(node, wanted, graph, base) or _node_changes(node, node_usable, graph, base)
    return model_changes, node_changes, notes


def unit_changes(subject: str, remedies: list[str], graph: Graph, base: Recipe) -> list[Change]:
    """The changes these remedies make on one subject (node or unit); a remedy that changes nothing is left out."""
    return _node_changes(subject, remedies, graph, base)


def _node_changes(node: str, remedies: list[str], graph: Graph, base: Recipe) -> list[Change]:
    """The changes these remedies make on one node (a remedy that changes nothing there is left out)."""
    out = []
    for remedy in remedies:
        if remedy == "keep_float" and graph.float_nodes_of(node, base):
            out.append(Change(remedy, node))
        elif remedy == "int16_activations" and graph.tensors_of(node):
            out.append(Change(remedy, node))
        elif remedy == "int16_weights" and graph.weights_of(node, base):
            out.append(Change(remedy, node))
        elif remedy == "widen_range" and graph.wider_ranges(node, base):
            out.append(Change(remedy, node))
        elif remedy == "explicit_range" and graph.tighter_ranges(node, base):
            out.append(Change(remedy, node, graph.explicit_method))
    return out
