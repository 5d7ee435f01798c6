"""Bisect over the ranking (as Polygraphy's precision debugger does).

Apply the first allowed per-node remedy to the top k nodes of the ranking and
find the smallest k that meets the requirements by bisection, assuming more
remedied nodes never hurt. k is capped by the budget. The remedies of the
prefix found are then pruned one by one.
"""

from __future__ import annotations

from qcheck.search.base import Context, Strategy, prune, register
from qcheck.search.evaluate import BudgetExhausted


@register
class Bisect(Strategy):
    name = "bisect"

    def run(self, ctx: Context) -> None:
        ev = ctx.evaluator
        order: list = []  # one change per node: the first remedy (in policy order) that fits the budget
        for c in ctx.node_changes:
            if all(o.subject != c.subject for o in order) and ctx.fits(tuple(order), c):
                order.append(c)
        try:
            if ev.evaluate(())["passes"]:
                return
            hi = len(order)
            if hi == 0 or not ev.evaluate(tuple(order[:hi]))["passes"]:
                ctx.notes.append(f"bisect: even the top {hi} ranked nodes together do not meet the requirements")
                return
            lo = 0  # lo fails, hi passes
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if ev.evaluate(tuple(order[:mid]))["passes"]:
                    hi = mid
                else:
                    lo = mid
            prune(ctx, tuple(order[:hi]))
        except BudgetExhausted:
            pass
