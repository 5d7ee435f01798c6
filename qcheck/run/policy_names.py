"""The names a policy gives to parts of the model (nodes to keep in float, op types, tensors with their own
quantization settings) must exist: a typo would otherwise change nothing, and the run would report a
recipe that was never applied. Checked on the user's model (by `validate` and `run`), and again after
ONNX Runtime's pre-processing, which can fuse a named node into its neighbour.
"""

from __future__ import annotations

import onnx
from onnx import defs

from qcheck.errors import QcheckError
from qcheck.model.graph import GraphIndex
from qcheck.policy.spec import Policy

MAX_LISTED = 12  # names listed in a message before "..."


def _listing(names: set[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered[:MAX_LISTED]) + (f" ... ({len(ordered)} in all)" if len(ordered) > MAX_LISTED else "")


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    index = GraphIndex(model)
    named = set(index.producer) | set(index.consumers) | set(index.initializers) | {i.name for i in model.graph.input}
    return named - {""}  # an optional input or output left empty is no tensor


def check_policy_names(policy: Policy, model: onnx.ModelProto, after_preprocessing: bool = False) -> None:
    """Raise one QcheckError listing every `quantization.exclude` / `overrides` name the model lacks."""
    q = policy.quantization
    nodes = {n.name for n in model.graph.node}
    tensors = _tensor_names(model)
    op_types = {n.op_type for n in model.graph.node}
    fused = ("; ONNX Runtime's pre-processing fused {} into a neighbour (run once without it and pick a name "
             "from layer_stats.csv)" if after_preprocessing else "")
    problems = [policy.problem_at(("quantization", "exclude", "nodes", i),
                                  f"the model has no node named '{name}'{fused.format('it')}",
                                  hint=None if fused else f"node names look like: {_listing(nodes)}")
                for i, name in enumerate(q.exclude_nodes) if name not in nodes]
    problems += [policy.problem_at(("quantization", "overrides", name),
                                   f"the model has no tensor named '{name}'{fused.format('its producer')}")
                 for name in q.overrides if name not in tensors]
    if not after_preprocessing:  # a valid op type the model lacks is fine (a policy shared by several models)
        known = {s.name for s in defs.get_all_schemas()}
        problems += [policy.problem_at(("quantization", "exclude", "op_types", i),
                                       f"'{op}' is not an ONNX operator type (names are case-sensitive)",
                                       hint=f"the model's op types are: {_listing(op_types)}")
                     for i, op in enumerate(q.exclude_op_types) if op not in known and op not in op_types]
    if problems:
        raise QcheckError(problems)
