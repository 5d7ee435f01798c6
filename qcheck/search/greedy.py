"""Greedy: add one remedy at a time, best of the next few in the ranking, until every requirement holds.

Each step tries the whole-model remedies and the remedies of the next `width`
nodes of the ranking not yet changed, each added to what is kept so far. If
any of them meets the requirements, the cheapest such is kept and the search
stops; otherwise the one that comes closest is kept, if it brings the model
closer than the step before. At the end, remedies that turn out not to be
needed are dropped (`prune`). With `width: 1` this is the plain walk down the
ranking.
"""

from __future__ import annotations

from qcheck.search.base import Context, Strategy, prune, register
from qcheck.search.evaluate import BudgetExhausted, sort_key


@register
class Greedy(Strategy):
    name = "greedy"

    def run(self, ctx: Context) -> None:
        ev = ctx.evaluator
        try:
            current = ()
            best = ev.evaluate(current)
            while not best["passes"]:
                options = [c for c in ctx.model_changes if ctx.fits(current, c)]
                nodes: list[str] = []
                for c in ctx.node_changes:
                    if not ctx.fits(current, c):
                        continue
                    if c.subject not in nodes:
                        if len(nodes) == ctx.spec.width:
                            continue
                        nodes.append(c.subject)
                    options.append(c)
                if not options:
                    ctx.notes.append("greedy: the budget allows no further remedy")
                    break
                tried = [(ev.evaluate(current + (c,)), current + (c,)) for c in options]
                passing = [t for t in tried if t[0]["passes"]]
                if passing:
                    best, current = min(passing, key=lambda t: (t[0]["cost"], t[0]["n_changes"], t[0]["id"]))
                    break
                step, changes = min(tried, key=lambda t: (*sort_key(t[0]), t[0]["cost"], t[0]["id"]))
                if sort_key(step) >= sort_key(best):
                    ctx.notes.append("greedy: no remedy in reach brings the model closer to the requirements")
                    break
                best, current = step, changes
            if best["passes"] and current:
                prune(ctx, current)
        except BudgetExhausted:
            pass
