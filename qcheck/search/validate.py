"""search.holdout: the held-out samples judge the recommended candidate, and choose among the passing ones.

A fix pruned to be 1-minimal just meets the requirements on the samples that pruned it; on other samples it often
does not. So the passing candidates within the budget (cheapest first, as `select` orders them: the 1-minimal
set, the larger sets found on the way, whole-model candidates that pass with more margin) are judged in turn on
the held-out samples, and the first that also holds there is chosen; when none holds, the one that comes closest
on them. After a miss there, only a candidate that leaves more room on the search's samples (`slack`) than every
one that missed is judged: a set that fits the search's samples no better is not worth the build. The held-out
figure stays an independent check only when that is the candidate the search would have chosen without them (the
first one judged).
"""

from __future__ import annotations

import math

from qcheck.policy.expr import NotApplicable
from qcheck.search.base import cheapest_first
from qcheck.search.evaluate import Evaluator, candidate_errors, limit_room, sort_key

VALIDATE_AT_MOST = 8  # passing candidates judged on the held-out samples at most (each is one build and run)
KEEP = ("passes", "failed", "shortfall", "requirements", "metrics", "finding_counts")


def held_out_choice(ev: Evaluator, held_out: tuple[list[dict], list[str]],
                    chosen: dict | None) -> tuple[dict | None, dict]:
    """(the candidate chosen, `result["holdout"]`). `chosen`: the search's own choice (None: nothing passed)."""
    held = ev.on(*held_out)

    def judged(changes: tuple) -> dict:
        figures = held.judge_changes(changes)
        return {k: figures[k] for k in KEEP}

    out = {"samples": len(held_out[0]), "plain": judged(()), "chosen": None, "validated": [], "chose": False,
           "independent": True}
    if chosen is None or not chosen["n_changes"]:  # nothing passed, or the policy's own recipe does
        return chosen, out
    tried, room = [], -math.inf
    for cand in _passing(ev, chosen):
        if len(tried) == VALIDATE_AT_MOST:
            break
        if tried:  # after a miss there: only a candidate with more room on the search's samples is worth judging
            cand = _confirmed(ev, cand, room, {c["id"] for c, _ in tried})
            if cand is None:
                continue
        figures = {"candidate": cand["id"], "label": cand["label"], **judged(ev.changes_of(cand))}
        tried.append((cand, figures))
        if figures["passes"]:
            break
        room = max(room, slack(ev, cand))
    cand, figures = next(((c, f) for c, f in tried if f["passes"]), None) or min(
        tried, key=lambda t: (*sort_key(t[1]), cheapest_first(t[0])))
    out["validated"] = [{k: f[k] for k in ("candidate", "label", "passes", "shortfall", "requirements")}
                        for _, f in tried]
    out["chosen"] = figures
    out["chose"] = len(tried) > 1
    out["independent"] = cand is chosen
    return cand, out


def _passing(ev: Evaluator, chosen: dict) -> list[dict]:
    """The search's choice, then the other candidates (screened ones too) that pass within the budget, cheapest
    first, one per recipe."""
    seen, out = {chosen["recipe_key"]}, [chosen]
    for c in sorted(ev.candidates, key=cheapest_first):
        if c["passes"] and c.get("within_budget", True) and c["n_changes"] and c["recipe_key"] not in seen:
            seen.add(c["recipe_key"])
            out.append(c)
    return out


def _confirmed(ev: Evaluator, cand: dict, room: float, judged: set[int]) -> dict | None:
    """The candidate built and judged on the search's samples (a screened one is built now, outside the search's
    budget), if it passes there within the budget with more room than `room` and is not one judged already (a
    recipe that builds the very model of another is that candidate); else None."""
    if slack(ev, cand) <= room:
        return None
    if cand["figure"] != "confirmed":
        try:
            cand = ev.evaluate(ev.changes_of(cand), budget=False)
        except candidate_errors():
            return None
    ok = cand["passes"] and cand.get("within_budget", True) and cand["id"] not in judged
    return cand if ok and slack(ev, cand) > room else None


def slack(ev: Evaluator, cand: dict) -> float:
    """How much room the candidate's values leave on the search's samples: the smallest, over the requirement lines
    with a limit, of (value - c) / |c| for `>=` and (c - value) / |c| for `<=` (0 for a line without one)."""
    out = math.inf
    for r, line in zip(ev.require, cand["requirements"]):
        limit = r.expression.limit
        try:
            value = limit.side(line["values"]) if limit is not None else None
        except NotApplicable:
            value = None
        if not isinstance(value, (int, float)) or math.isnan(value):
            out = min(out, 0.0)
            continue
        out = min(out, limit_room(limit, value))
    return out


def held_out_note(holdout: dict) -> str | None:
    """What the held-out samples did to the choice, for the notes and the report (None when they only judged)."""
    tried = holdout["validated"]
    if len(tried) < 2:
        return None
    first, chosen = tried[0], holdout["chosen"]
    n = holdout["samples"]
    if chosen["passes"]:
        return (f"the cheapest passing candidate (trial {first['candidate']}) did not hold on the "
                f"{n} held-out sample(s); of {len(tried)} passing candidates judged on them, cheapest first, trial "
                f"{chosen['candidate']} is the first that holds and was chosen. The held-out samples chose it, so its "
                f"held-out figure is not an independent check (search.holdout): confirm it on data neither saw")
    how = ("it is the one that comes closest on them" if not holdout["independent"]
           else "the cheapest was kept, which comes closest on them")
    return (f"none of the {len(tried)} passing candidates judged on the {n} held-out sample(s) "
            f"holds on them; {how}" + ("" if holdout["independent"] else
                                       ", so its held-out figure is not an independent check"))
