"""auto (the default): find a passing candidate, then minimize it.

1. whole-model candidates: each scheme switch, calibration method, per-channel, symmetric ... alone, and the
   strongest integer one (a 16-bit activation scheme with int16 weights on every layer; never a start); steps 2-4
   start from the closest one that improves on the policy's recipe, then (when they end without a confirmed fix)
   from the next closest;
2. find: bisection over the ranked units (the chain or tensor group of each ranked node, keep the first k) and
   over regions (the tail of the topological order from a node on; when only the whole graph passes as a tail,
   the stem up to a node), until some set passes; with each per-unit remedy in turn (float, int16 weights,
   int16 activations, widened ranges, tighter calibrated ranges) until one finds a set within the budget;
3. prune the passing set to a 1-minimal one by delta debugging: removing any one remaining change breaks a
   requirement (a tail region is first split into its units: chains where nodes share a scale, else nodes, and
   cut to the shortest prefix of them in ranking order that passes);
4. replace each float remedy by an integer one (int16, a widened or a tighter range, int16 with a widened range)
   where that still passes and costs less on the target.

Steps 2-4 judge candidates by *screening* them on the grid emulation model (`screen.py`) when there is one;
then the result is *confirmed*: the final set, else the 1-minimal one, else the set found, is built with ONNX
Runtime and judged. Only confirmed candidates can be chosen. When none of them passes for real, steps 2-4
run again with every candidate built.

Regions on the way may exceed the budget; `select` only chooses candidates within it.
"""

from __future__ import annotations

from collections.abc import Callable

from qcheck.search.base import Context, Strategy, register
from qcheck.search.evaluate import BudgetExhausted, Lookahead, sort_key
from qcheck.search.space import Change, counts, unit_changes, within_budget
from qcheck.search.units import PREFIXES

# what a region or ranked unit gets to find a fix, each in turn until one finds a set within the budget
# (explicit_range: the tighter ranges search.explicit_range_from calibrates, where the policy allows it)
FIND_REMEDIES = ("keep_float", "int16_weights", "int16_activations", "widen_range", "explicit_range")
Judge = Callable[[tuple[Change, ...]], dict]  # Evaluator.screen or Evaluator.evaluate
# whole-model starts the search runs from in turn, closest first, until one leads to a confirmed fix: units
# complete one scheme where they cannot complete another (int16 weights on a16w8 activations, not on per-tensor)
STARTS = 2
INTEGER_REMEDIES = (("int16_activations",), ("widen_range",), ("explicit_range",), ("int16_activations", "widen_range"),
                    ("int16_activations", "int16_weights"))


@register
class Auto(Strategy):
    name = "auto"

    def run(self, ctx: Context) -> None:
        ev = ctx.evaluator
        try:
            base = ev.evaluate(())
            if base["passes"]:
                return
            starts, unfound = self._whole_model(ctx, base)[:STARTS], []
            for start in starts:
                if ev.screener is not None:
                    screened = self._search(ctx, start, ev.screen)
                    if screened:
                        return
                    if screened is None:  # nothing passed when screened: try the next start before building all
                        unfound.append(start)
                        continue
                    ctx.notes.append("auto: the fix found by screening did not pass when built; the search was "
                                     "repeated building every candidate")
                if self._search(ctx, start, ev.evaluate):
                    return
            if unfound:
                ctx.notes.append("auto: screening found no passing set from any start; the search was repeated "
                                 "building every candidate")
                self._search(ctx, unfound[0], ev.evaluate)
        except BudgetExhausted:
            pass

    def _search(self, ctx: Context, start: tuple[Change, ...], judge: Judge) -> bool | None:
        """Find, minimize, make integer with `judge` (screening or building); then confirm. True when a
        confirmed candidate passes within the budget; None when `judge` found no passing set."""
        ev = ctx.evaluator
        found = self._find(ctx, start, judge)
        if found is None:
            return None
        ev.focus([found])
        if judge == ev.screen and ev.shards is not None:  # a level's subsets screened together, in shards
            judge = Lookahead(ev, ev.shards.workers)
        minimal = self._minimize(ctx, found, judge)
        ev.focus([minimal] + [self._integer_variant(ctx, minimal, c, combo) for c in minimal
                              for combo in INTEGER_REMEDIES])
        final = self._integer(ctx, minimal, judge)
        return any(c["passes"] and c["within_budget"]
                   for c in (ev.evaluate(changes) for changes in dict.fromkeys((final, minimal, found))))

    # ------------------------------------------------------------------ 1. whole model

    def _whole_model(self, ctx: Context, base: dict) -> list[tuple[Change, ...]]:
        """Try each whole-model change alone; those that improve on the policy's recipe, closest first and one per
        remedy, are the starts of the search (a start is pruned with the rest if not needed); the policy's recipe
        when none does."""
        ev, improving = ctx.evaluator, []
        strongest = _strongest_integer(ctx)
        judged = ev.evaluate_many([(c,) for c in ctx.model_changes] + ([strongest] if strongest else []))
        for c, cand in zip(ctx.model_changes, judged):  # over the cores
            if not cand["passes"] and cand["within_budget"] and sort_key(cand) < sort_key(base):
                improving.append((sort_key(cand), (c,)))
        # one start per remedy (the closest skip_first N, the closest calibration method ...): the next start is
        # another kind of change, not a variant of the first
        starts, kinds = [], set()
        for _, start in sorted(improving):
            if start[0].remedy not in kinds:
                kinds.add(start[0].remedy)
                starts.append(start)
        return starts or [()]

    # ------------------------------------------------------------------ 2. find

    def _find(self, ctx: Context, start: tuple[Change, ...], judge: Judge) -> tuple[Change, ...] | None:
        """A passing set: with each allowed per-unit remedy in turn, until one finds a set within the budget (a set
        beyond it is pruned only when no remedy finds one within: pruning costs many trials and may not get there).
        """
        remedies = [r for r in FIND_REMEDIES if r in ctx.usable]
        if not remedies:
            ctx.notes.append("auto: no per-unit remedy (" + ", ".join(FIND_REMEDIES) + ") is allowed; only "
                             "whole-model candidates were tried")
            return None
        g, beyond = ctx.evaluator.graph, None
        for remedy in remedies:
            found = self._find_with(ctx, start, judge, remedy)
            if found is None:
                continue
            if within_budget(found, g, ctx.evaluator.budget):
                return found
            n = counts(found, g)
            ctx.notes.append(f"auto: {remedy} found a passing set beyond the budget ({n['float_nodes']} float "
                             f"node(s), {n['int16_tensors']} int16 tensor(s))" + (
                                 "; the next remedy was tried before pruning it" if remedy != remedies[-1] else ""))
            beyond = beyond or found
        return beyond

    def _find_with(self, ctx: Context, start: tuple[Change, ...], judge: Judge,
                   remedy: str) -> tuple[Change, ...] | None:
        g = ctx.evaluator.graph
        ranked = _changes(g, remedy, g.units.ranked_units(ctx.ranking, ctx.spec.candidates))
        units = [c.subject for c in ranked]
        ctx.evaluator.focus([start + tuple(ranked)])
        found = bisect_prefix(ranked, lambda s: judge(start + tuple(s))["passes"])
        if found is not None:
            return start + tuple(found)
        region, largest = self._region(ctx, start, judge, remedy)
        if region is None:
            # the largest tail is the whole graph only when the first node can take the remedy (on a given model
            # the nodes before its first Q/DQ pair cannot): name what was tried, not "the whole graph"
            where = (f"its largest region ({largest.subject}, {len(g.units.nodes(largest.subject))} node(s))"
                     if largest is not None else "no region (no node can take it)")
            ctx.notes.append(f"auto: even {remedy} on {where} and the top {len(units)} ranked units does not meet "
                             f"the requirements")
            return None
        units = split_region(region, g, remedy)
        # before delta debugging, the shortest prefix of the region's units in ranking order that still passes
        # (a few bisection steps that usually leave a handful of units out of a region of hundreds of nodes)
        rank = {n: i for i, n in enumerate(ctx.ranking)}
        by_rank = sorted(units, key=lambda c: min((rank.get(n, 1 << 30) for n in g.units.nodes(c.subject)),
                                                  default=1 << 30))
        ctx.evaluator.focus([start + tuple(by_rank)])
        prefix = bisect_prefix(by_rank, lambda s: judge(start + tuple(s))["passes"])
        if prefix is None:  # its units together do not do what the region does: prune the region's own set
            ctx.notes.append(f"auto: the region {region.subject} passes with {remedy} but its {len(units)} unit(s) "
                             "together do not; the region itself was pruned")
            return start + (region,)
        ctx.notes.append(f"auto: bisection found the region {region.subject} ({len(g.units.nodes(region.subject))} "
                         f"node(s)) with {remedy}; its {len(prefix)} highest-ranked unit(s) of {len(units)} still "
                         f"pass; they were then pruned")
        return start + tuple(prefix)

    def _region(self, ctx: Context, start: tuple[Change, ...], judge: Judge,
                remedy: str) -> tuple[Change | None, Change | None]:
        """The smallest region that passes with `remedy`: the shortest tail (from a node to the outputs) or, when
        the whole tail is needed, the shortest stem (from the inputs to a node), both found by bisection; and the
        largest tail (what a failure tried)."""
        g = ctx.evaluator.graph
        tails = _changes(g, remedy, [f"tail:{n}" for n in g.order])
        largest = tails[0] if tails else None
        # tails[i] covers tails[i+1:]: the largest tail first; find the shortest tail that passes
        shortest = bisect_prefix(tails[::-1], lambda s: judge(start + (s[-1],))["passes"])
        if shortest is None or len(shortest) < len(tails):
            return (shortest[-1] if shortest else None), largest
        # only the whole graph passes as a tail: what it needs may lie near the inputs
        stems = _changes(g, remedy, [f"stem:{n}" for n in g.order])
        stem = bisect_prefix(stems, lambda s: judge(start + (s[-1],))["passes"])
        return (stem[-1] if stem else shortest[-1]), largest

    # ------------------------------------------------------------------ 3. minimize

    def _minimize(self, ctx: Context, found: tuple[Change, ...], judge: Judge) -> tuple[Change, ...]:
        """A 1-minimal subset of `found`; when it is over the budget, its units (tensor groups, chains, regions)
        are split into their nodes and that set is pruned again: one node of a group may be all the fix needs."""
        def passes(s: list[Change]) -> bool:
            return judge(tuple(s))["passes"]

        announce = getattr(judge, "announce", None)  # Lookahead: a level's subsets screened together
        minimal = tuple(ddmin(list(found), passes, announce))
        g = ctx.evaluator.graph
        if within_budget(minimal, g, ctx.evaluator.budget):
            return minimal
        split = split_units(minimal, g)
        if split == minimal or not passes(list(split)):
            return minimal
        ctx.evaluator.focus([split])
        smaller = tuple(ddmin(list(split), passes, announce))
        ctx.notes.append(f"auto: the 1-minimal set ({len(minimal)} change(s)) was over the budget; its units split into "
                         f"their nodes and pruned again give {len(smaller)} change(s)"
                         + ("" if within_budget(smaller, g, ctx.evaluator.budget) else ", still over the budget"))
        return smaller

    # ------------------------------------------------------------------ 4. integer remedies

    def _integer(self, ctx: Context, changes: tuple[Change, ...], judge: Judge) -> tuple[Change, ...]:
        current = judge(changes)
        for c in [c for c in changes if c.remedy == "keep_float"]:
            for combo in INTEGER_REMEDIES:
                trial = self._integer_variant(ctx, changes, c, combo)
                if trial == changes:
                    continue
                cand = judge(trial)
                if cand["passes"] and cand["within_budget"] and cand["cost"] < current["cost"]:
                    changes, current = trial, cand
                    break
        return changes

    def _integer_variant(self, ctx: Context, changes: tuple[Change, ...], c: Change, combo: tuple[str, ...]):
        """`changes` with the float remedy `c` replaced by the integer remedies `combo` on its unit (`changes`
        itself when `c` is not a float remedy, `combo` is not allowed or one of its remedies changes nothing)."""
        g = ctx.evaluator.graph
        if c.remedy != "keep_float" or not set(combo) <= set(ctx.usable):
            return changes
        alts = [a for r in combo for a in unit_changes(c.subject, [r], g, g.base)]
        if len(alts) != len(combo):
            return changes
        return tuple(x for x in changes if x != c) + tuple(alts)


def _strongest_integer(ctx: Context) -> tuple[Change, ...] | None:
    """The strongest whole-model integer candidate: a 16-bit activation scheme with int16 weights on every layer (the
    tail from the first node), when the policy allows both and the target runs them. Not a start: a model that
    needs 16 bits everywhere gets them with 0 float nodes, and a fix found later holds with more margin when a
    cheaper one does not (search.holdout chooses among the passing candidates)."""
    if "int16_weights" not in ctx.usable:
        return None
    schemes = [c for c in ctx.model_changes if c.remedy == "scheme"]
    g = ctx.evaluator.graph
    tails = _changes(g, "int16_weights", [f"tail:{g.order[0]}"]) if schemes and g.order else []
    return (schemes[0], tails[0]) if tails else None


def split_region(region: Change, g, remedy: str) -> list[Change]:
    """A region's units: each node's shared-scale chain where it links one, else the node itself (the units together
    change every node the region changes)."""
    nodes = g.float_nodes_of(region.subject) if remedy == "keep_float" else g.units.nodes(region.subject)

    def unit(n: str) -> str:  # a node that writes into a chain without linking it (a Conv feeding one) is its own
        chain = g.units.chain_of(n)
        return chain if chain is not None and n in g.units.nodes(chain) else n

    return list(dict.fromkeys(_changes(g, remedy, [unit(n) for n in nodes])))


def _changes(g, remedy: str, subjects: list[str]) -> list[Change]:
    """`remedy` on each subject where it changes something (as `unit_changes` makes it: explicit_range carries the
    method its ranges come from)."""
    return [c for s in subjects for c in unit_changes(s, [remedy], g, g.base)]


def split_units(changes: tuple[Change, ...], g) -> tuple[Change, ...]:
    """Each change on a unit of several nodes (a tensor group, a chain, a region) replaced by the same remedy on each
    of its nodes that it changes something on (the unit's float nodes for keep_float); other changes kept."""
    out: list[Change] = []
    for c in changes:
        nodes = g.units.nodes(c.subject) if c.subject.startswith(PREFIXES) else []
        parts = [x for n in nodes for x in unit_changes(n, [c.remedy], g, g.base)]
        for x in parts if len(parts) > 1 else [c]:
            if x not in out:
                out.append(x)
    return tuple(out)


def bisect_prefix(items: list, passes: Callable[[list], bool]) -> list | None:
    """The shortest prefix of `items` that passes (assuming longer prefixes pass when shorter ones do), or None."""
    if not items or not passes(items):
        return None
    lo, hi = 0, len(items)  # items[:lo] fails (or is empty), items[:hi] passes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(items[:mid]):
            hi = mid
        else:
            lo = mid
    return items[:hi]


def ddmin(items: list, passes: Callable[[list], bool], announce: Callable[[list], None] | None = None) -> list:
    """Delta debugging (Zeller): a 1-minimal subset of a passing `items` (removing any one element fails).
    `announce(sets)`: told the sets a level will ask `passes` about, in order, before it asks."""
    n = 2
    while len(items) >= 2:
        size = -(-len(items) // n)
        chunks = [items[i:i + size] for i in range(0, len(items), size)]
        if announce and len(chunks) > 2:
            announce(chunks)
        for chunk in chunks:
            if len(chunks) > 2 and passes(chunk):  # (with two chunks, a chunk is the other's complement)
                items, n = chunk, 2
                break
        else:
            if announce:
                announce([[x for x in items if x not in chunk] for chunk in chunks])
            for chunk in chunks:
                rest = [x for x in items if x not in chunk]
                if rest and passes(rest):
                    items, n = rest, max(n - 1, 2)
                    break
            else:
                if n >= len(items):
                    break
                n = min(len(items), 2 * n)
    if len(items) == 1 and passes([]):
        return []
    return items
