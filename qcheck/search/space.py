"""The search space: changes to a recipe, what they cost on the target, and the budget.

A *change* is one remedy applied to one subject: a node (keep it in float,
give its outputs int16) or the whole model (per-channel on/off, another
calibration method, symmetric activations, reduced range). A candidate is a
set of changes on top of the policy's own recipe; `apply_changes` turns it
into a `quantize.Recipe`, so equal sets build equal models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import onnx

from qcheck.policy import SearchBudget
from qcheck.quantize import METHODS, Recipe
from qcheck.targets import TargetProfile

NODE_REMEDIES = ("keep_float", "int16_activations")
MODEL_REMEDIES = ("per_channel", "calibration_method", "symmetric", "reduced_range")
# remedy -> the target profile's cost key (None: no cost entry, always allowed)
COST_KEY = {"keep_float": "float_node", "int16_activations": "int16_tensor", "per_channel": "per_channel",
            "calibration_method": "calibration_method", "symmetric": None, "reduced_range": None}
MODEL = "(model)"


@dataclass(frozen=True, order=True)
class Change:
    remedy: str
    subject: str  # a node name, or MODEL
    value: str | None = None  # calibration_method: the method

    def label(self) -> str:
        if self.remedy == "keep_float":
            return f"float {self.subject}"
        if self.remedy == "int16_activations":
            return f"int16 {self.subject}"
        if self.remedy == "per_channel":
            return "per-channel toggled"
        if self.remedy == "calibration_method":
            return f"calibration {self.value}"
        return self.remedy.replace("_", " ")

    def to_dict(self) -> dict:
        return {"remedy": self.remedy, "subject": self.subject, "value": self.value}


class Graph:
    """What the search needs to know about the float model: node outputs and which nodes touch."""

    def __init__(self, model: onnx.ModelProto, activations: set[str]):
        self.outputs = {n.name: [o for o in n.output if o in activations] for n in model.graph.node if n.name}
        self.op_types = {n.name: n.op_type for n in model.graph.node if n.name}
        producers = {o: n.name for n in model.graph.node for o in n.output}
        self.neighbours: dict[str, set[str]] = {n: set() for n in self.outputs}
        for n in model.graph.node:
            for i in n.input:
                p = producers.get(i)
                if p and n.name and p in self.neighbours:
                    self.neighbours[p].add(n.name)
                    self.neighbours[n.name].add(p)

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
            r.exclude_nodes.append(c.subject)
        elif c.remedy == "int16_activations":
            for t in graph.outputs.get(c.subject, []):
                r.overrides[t] = {**r.overrides.get(t, {}), "quant_type": "int16"}
        elif c.remedy == "per_channel":
            r.per_channel = not base.per_channel
        elif c.remedy == "calibration_method":
            r.calibration = c.value
        elif c.remedy == "symmetric":
            r.symmetric_activations = True
        elif c.remedy == "reduced_range":
            r.reduce_range = True
    r.exclude_nodes = sorted(set(r.exclude_nodes))
    r.overrides = dict(sorted(r.overrides.items()))
    return r


def counts(changes: tuple[Change, ...], graph: Graph) -> dict[str, int]:
    float_nodes = [c.subject for c in changes if c.remedy == "keep_float"]
    int16 = {t for c in changes if c.remedy == "int16_activations" for t in graph.outputs.get(c.subject, [])}
    return {"float_nodes": len(float_nodes), "float_islands": graph.islands(float_nodes), "int16_tensors": len(int16)}


def cost(changes: tuple[Change, ...], graph: Graph, target: TargetProfile) -> float:
    """What the candidate costs on the target (relative units from the profile; inf when not allowed)."""
    n = counts(changes, graph)
    total = 0.0
    if n["float_nodes"]:
        total += target.cost("float_node", n["float_nodes"]) + target.cost("float_island", n["float_islands"])
    if n["int16_tensors"]:
        total += target.cost("int16_tensor", n["int16_tensors"])
    for c in changes:
        key = COST_KEY[c.remedy]
        if c.remedy in MODEL_REMEDIES and key is not None:
            total += target.cost(key, 1)
    return total


def allowed(remedy: str, target: TargetProfile) -> bool:
    key = COST_KEY[remedy]
    return key is None or target.allows(key)


def within_budget(changes: tuple[Change, ...], graph: Graph, budget: SearchBudget) -> bool:
    n = counts(changes, graph)
    return n["float_nodes"] <= budget.max_float_nodes and n["int16_tensors"] <= budget.max_int16_tensors


def compatible(changes: tuple[Change, ...], new: Change) -> bool:
    """One remedy per node, one of each whole-model remedy."""
    for c in changes:
        if c.subject == new.subject and (c.subject != MODEL or c.remedy == new.remedy):
            return False
    return True


def build_pool(ranking: list[str], remedies: list[str], target: TargetProfile, graph: Graph, base: Recipe,
               limit: int) -> tuple[list[Change], list[Change], list[str]]:
    """(whole-model changes, per-node changes in ranking order, notes on remedies the target refuses)."""
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
        elif remedy in MODEL_REMEDIES:
            model_changes.append(Change(remedy, MODEL))
    node_changes = []
    for node in [n for n in ranking if n in graph.outputs][:limit]:
        for remedy in usable:
            if remedy == "keep_float" and node not in base.exclude_nodes:
                node_changes.append(Change(remedy, node))
            elif remedy == "int16_activations" and graph.outputs.get(node):
                node_changes.append(Change(remedy, node))
    return model_changes, node_changes, notes
