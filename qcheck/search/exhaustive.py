"""Exhaustive: every combination of the allowed remedies within the budget, cheapest first.

Meant for small spaces (few candidate nodes). Combinations are tried in order
of cost on the target, then number of changes, so when the trial budget runs
out the cheapest ones have been tried.
"""

from __future__ import annotations

from itertools import combinations

from qcheck.search.base import Context, Strategy, register
from qcheck.search.evaluate import BudgetExhausted
from qcheck.search.space import compatible, cost, within_budget

MAX_COMBINATIONS = 100_000
MAX_NODES = 8


@register
class Exhaustive(Strategy):
    name = "exhaustive"

    def run(self, ctx: Context) -> None:
        ev = ctx.evaluator
        nodes = list(dict.fromkeys(c.subject for c in ctx.node_changes))[:MAX_NODES]
        pool = ctx.model_changes + [c for c in ctx.node_changes if c.subject in nodes]
        if len(nodes) < len({c.subject for c in ctx.node_changes}):
            ctx.notes.append(f"exhaustive: only the top {MAX_NODES} ranked nodes are combined")
        budget = ctx.spec.budget
        largest = min(len(pool), len(ctx.model_changes) + budget.max_float_nodes + budget.max_int16_tensors)
        sets: list[tuple] = []
        for size in range(largest + 1):
            for combo in combinations(pool, size):
                if all(compatible(combo[:i], c) for i, c in enumerate(combo)) and \
                        within_budget(combo, ev.graph, budget):
                    sets.append(combo)
                if len(sets) >= MAX_COMBINATIONS:
                    break
        sets.sort(key=lambda s: (cost(s, ev.graph, ev.target), len(s)))
        if len(sets) > ctx.spec.budget.max_trials:
            ctx.notes.append(f"exhaustive: {len(sets)} combinations, more than max_trials "
                             f"({ctx.spec.budget.max_trials}); the cheapest were tried")
        try:  # as many at once as candidates are built at once, the budget checked between them
            for i in range(0, len(sets), ev.workers):
                ev.evaluate_many(sets[i:i + ev.workers])
        except BudgetExhausted:
            pass
