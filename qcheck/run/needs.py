"""Which per-tensor statistics a run reads: the one answer measurement is given (`measure(need=...)`).

Measurement computes an optional column only when something reads it: the per-layer twin (a float copy of every
quantized node, as costly as a model run) and the distribution's moments are left out otherwise, their columns
null and the reason in `per_layer_missing`, `results.measure.not_computed` and the report. The readers:

- the rules of the loaded packs and `rules.inline` (each rule knows the statistics its condition, rank,
  evidence and message read: `rules.engine.needed_statistics`);
- `require:` lines read model-level values (`model.*`, the policy's metrics, task metrics and `findings.*`,
  which are the rules' findings): no per-tensor column of their own;
- the report: `report.graph.color_by` when the policy names it (by default the graph is colored by per-layer
  rmse/scale when measured, else by its whole-model counterpart);
- the search, which without node sensitivity walks the nodes in the order of their per-layer statistics
  (`search.ranking.RANKING_READS`);
- layer metrics in `mode: local` read the twin's arrays (measure.per_tensor.skipped_statistics checks those).
"""

from __future__ import annotations

from qcheck.policy.spec import Policy
from qcheck.rules.engine import Rule, needed_statistics
from qcheck.search.ranking import RANKING_READS


def statistics_read(policy: Policy, rules: list[Rule]) -> set[str]:
    """Every per-tensor statistic this run's rules, report settings and search read."""
    need = needed_statistics(rules)
    color_by = ((policy.raw.get("report") or {}).get("graph") or {}).get("color_by")
    if color_by:
        need.add(color_by)
    if policy.search is not None and not policy.analyses.sensitivity:
        need.update(RANKING_READS)
    return need
