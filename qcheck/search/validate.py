"""search.holdout: the held-out samples judge the recommended candidate, and choose among the passing ones.

A fix pruned to be 1-minimal just meets the requirements on the samples that pruned it; on other samples it often
does not. So the passing candidates within the budget (cheapest first, as `select` orders them: the 1-minimal
set, the larger sets found on the way, whole-model candidates that pass with more margin) are judged in turn on
the held-out samples, and the first that also holds there is chosen; when none holds, the one that comes closest
on them. The held-out figure stays an independent check only when that is the candidate the search would have
chosen without them (the first one judged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from qcheck.search.evaluate import Evaluator, candidate_errors, sort_key

VALIDATE_AT_MOST = 8  # passing candidates judged on the held-out samples at most (each is one build and run)
KEEP = ("passes", "failed", "shortfall", "requirements", "metrics", "finding_counts")


def held_out_choice(ev: Evaluator, held_out: tuple[list[dict], list[str]], chosen: dict | None,
                    order: Callable[[dict], tuple]) -> tuple[dict | None, dict]:
    """(the candidate chosen, `result["holdout"]`). `chosen`: the search's own choice (None: nothing passed);
    `order`: how `select` orders passing candidates (cheapest first)."""
    held = ev.on(*held_out)

    def judged(changes: tuple) -> dict:
        figures = held.judge_changes(changes)
        return {k: figures[k] for k in KEEP}

    out = {"samples": len(held_out[0]), "plain": judged(()), "chosen": None, "validated": [], "chose": False,
           "independent": True}
    if chosen is None or not chosen["n_changes"]:  # nothing passed, or the policy's own recipe does
        return chosen, out
    tried = []
    for cand in _passing(ev, chosen, order):
        figures = {"candidate": cand["id"], "label": cand["label"], **judged(ev.changes_of(cand))}
        tried.append((cand, figures))
        if figures["passes"]:
            break
    cand, figures = next(((c, f) for c, f in tried if f["passes"]), None) or min(
        tried, key=lambda t: (*sort_key(t[1]), order(t[0])))
    out["validated"] = [{k: f[k] for k in ("candidate", "label", "passes", "shortfall", "requirements")}
                        for _, f in tried]
    out["chosen"] = figures
    out["chose"] = len(tried) > 1
    out["independent"] = cand is chosen
    return cand, out


def _passing(ev: Evaluator, chosen: dict, order: Callable[[dict], tuple]) -> Iterator[dict]:
    """The search's choice, then the other candidates that pass within the budget, cheapest first, at most
    VALIDATE_AT_MOST in all. A screened one (a larger set screening passed on the way) is built and judged on the
    search's samples first, outside the search's budget, and judged on the held-out ones only if it passes."""
    others = [c for c in ev.candidates if c["passes"] and c.get("within_budget", True) and c["n_changes"]]
    yield chosen
    n, seen, judged = 1, {chosen["recipe_key"]}, {chosen["id"]}
    for cand in sorted(others, key=order):
        if n >= VALIDATE_AT_MOST:
            return
        if cand["recipe_key"] in seen:
            continue
        seen.add(cand["recipe_key"])
        if cand["figure"] != "confirmed":
            try:
                cand = ev.evaluate(ev.changes_of(cand), budget=False)
            except candidate_errors():
                continue
        # (a recipe that builds the very model of a candidate judged already is that candidate)
        if cand["id"] in judged or not (cand["passes"] and cand.get("within_budget", True)):
            continue
        judged.add(cand["id"])
        n += 1
        yield cand


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
