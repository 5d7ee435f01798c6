"""Which nodes the search tries first: a ranking, worst first.

The search takes the ranking as a plain list of node names. When the node
sensitivity analysis (quantize one node at a time, measure the outputs) has
run, its ranking is used. When it has not
run (policy `analyses:` off), `rank_nodes` ranks from what a run already measured: each node's
worst per-layer (local) statistic over the tensors it produces or reads as
weights — lowest cosine first, then highest rmse/scale (TFLite's quantization
debugger flags layers above 0.7), then graph order. Point `rank_nodes` at a better ranking and every
strategy follows it.
"""

from __future__ import annotations

import math


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


RANKING_READS = ("cosine", "rmse_scale")  # the per-layer columns `rank_nodes` orders by (qcheck.run.needs asks)


def rank_nodes(rows: list[dict]) -> list[dict]:
    """[{node, op_type, cosine, rmse_scale, order}] for every node with a measured tensor, worst first;
    cosine and rmse_scale are None for a node none of whose tensors has the statistic."""
    worst: dict[str, dict] = {}
    for row in rows:
        node = row.get("node")
        if not node or node == "(input)":
            continue
        w = worst.setdefault(node, {"node": node, "op_type": row.get("op_type"), "cosine": None, "rmse_scale": None,
                                    "order": row.get("order", -1)})
        if _finite(row.get("cosine")):
            w["cosine"] = min(_or(w["cosine"], 1.0), float(row["cosine"]))
        if _finite(row.get("rmse_scale")):
            w["rmse_scale"] = max(_or(w["rmse_scale"], 0.0), float(row["rmse_scale"]))
        if row.get("kind") == "activation":
            w["order"] = row.get("order", w["order"])
    return sorted(worst.values(), key=lambda w: (w["cosine"] is None and w["rmse_scale"] is None,
                                                 _or(w["cosine"], 1.0), -_or(w["rmse_scale"], 0.0),
                                                 w["order"], w["node"]))


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def candidate_ranking(rows: list[dict], findings: list[dict] | None = None,
                      sensitivity: list[str] | None = None) -> tuple[list[str], str]:
    """The node order the search walks, and where it comes from.

    With the node sensitivity analysis (each node quantized alone, model outputs measured): its ranking.
    Without: nodes named by rule findings first (errors, then warnings, then info, each rule's worst first),
    then every other measured node as `rank_nodes` orders them.
    """
    if sensitivity:
        return list(dict.fromkeys(sensitivity)), "node sensitivity (each node quantized alone)"
    ranked = [w["node"] for w in rank_nodes(rows)]
    flagged = sorted(((SEVERITY_ORDER.get(f.get("severity"), 3), i, f.get("node")) for i, f in enumerate(findings or [])
                      if f.get("node") and f.get("node") != "(input)"))
    first = list(dict.fromkeys(node for _, _, node in flagged))
    return first + [n for n in ranked if n not in first], "rule findings by severity, then per-layer statistics"


def flagged_nodes(findings: list[dict] | None) -> list[str]:
    """keep_float_flagged: nodes an error or warning finding proposes to keep in float, errors first."""
    hits = sorted((SEVERITY_ORDER[f["severity"]], i, f["node"]) for i, f in enumerate(findings or [])
                  if f.get("severity") in ("error", "warning") and f.get("node") and f.get("node") != "(input)"
                  and "keep_float" in (f.get("remedies") or []))
    return list(dict.fromkeys(node for _, _, node in hits))


def proposed_remedies(findings: list[dict] | None) -> dict[str, list[str]]:
    """node -> the remedies its rule findings propose (already filtered to the target by the rule engine),
    most severe finding first."""
    out: dict[str, list[str]] = {}
    for f in sorted(findings or [], key=lambda f: SEVERITY_ORDER.get(f.get("severity"), 3)):
        node = f.get("node")
        if node and node != "(input)" and f.get("remedies"):
            out[node] = list(dict.fromkeys(out.get(node, []) + list(f["remedies"])))
    return out
