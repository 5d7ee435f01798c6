"""The interface every search strategy implements, and what they share.

A strategy proposes candidates (sets of changes) and has each judged by the
`Evaluator`, which counts the budget and caches by recipe. It does not pick
the winner: `select` does, the same way for every strategy — among the
candidates that meet the requirements, the cheapest on the target, ties to
fewer changes, then to the one tried first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qcheck.policy.spec import SearchSpec
from qcheck.search.evaluate import BudgetExhausted, Evaluator, sort_key
from qcheck.search.space import Change, compatible, within_budget


@dataclass
class Context:
    """What a strategy works with."""

    evaluator: Evaluator
    spec: SearchSpec
    model_changes: list[Change]  # whole-model remedies, in the policy's order
    node_changes: list[Change]  # per-node remedies: nodes in ranking order, each with the remedies in policy order
    notes: list[str] = field(default_factory=list)
    ranking: list[str] = field(default_factory=list)  # node names, worst first
    usable: list[str] = field(default_factory=list)  # the policy's remedies the target allows, in policy order

    def fits(self, changes: tuple[Change, ...], new: Change) -> bool:
        return compatible(changes, new) and within_budget(changes + (new,), self.evaluator.graph, self.spec.budget)


class Strategy:
    """One search strategy. Subclasses set `name` and implement `run`; `STRATEGIES` finds them by name."""

    name = ""

    def run(self, ctx: Context) -> None:
        raise NotImplementedError


STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def confirmed(candidates: list[dict]) -> list[dict]:
    """The candidates built with ONNX Runtime and run (a screened figure never decides)."""
    return [c for c in candidates if c.get("figure", "confirmed") == "confirmed"]


def cheapest_first(c: dict) -> tuple:
    """How passing candidates are ordered to choose among them: cost, then fewer changes, then the earlier trial."""
    return c["cost"], c["n_changes"], c["id"]


def select(candidates: list[dict]) -> dict | None:
    """The cheapest confirmed candidate that meets the requirements within the budget (bisection over regions may
    judge larger sets on the way; those are never chosen)."""
    passing = [c for c in confirmed(candidates) if c["passes"] and c.get("within_budget", True)]
    if not passing:
        return None
    return min(passing, key=cheapest_first)


def prune(ctx: Context, changes: tuple[Change, ...]) -> tuple[Change, ...]:
    """Drop every change the requirements do not need (last added first), keeping the set passing."""
    ev = ctx.evaluator
    for c in reversed(changes):
        if c not in changes:
            continue
        fewer = tuple(x for x in changes if x != c)
        try:
            if ev.evaluate(fewer)["passes"]:
                changes = fewer
        except BudgetExhausted:
            break
    return changes


def closest(candidates: list[dict], n: int = 3) -> list[dict]:
    """The confirmed candidates within the budget that come closest to the requirements."""
    candidates = confirmed(candidates)
    inside = [c for c in candidates if c.get("within_budget", True)] or candidates
    return sorted(inside, key=lambda c: (*sort_key(c), c["cost"], c["id"]))[:n]
