"""The fallback search: find the cheapest recipe that meets the policy's `require:` lines.

    ranking (worst nodes first) + allowed remedies + target costs + budget
        -> candidates, each a real QDQ model measured with ONNX Runtime
        -> the cheapest passing one, its finalists' size and latency,
           or, when none passes, the closest ones and a QAT recommendation.

Strategies are small classes behind one interface (`base.Strategy`); a new
strategy is one file that registers itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import onnx

from qcheck.compute.shards import retry_note
from qcheck.measure.tasks.base import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from qcheck.policy.spec import MetricSpec, Requirement, SearchSpec
from qcheck.policy.targets import TargetProfile
from qcheck.quantize.calibrate import Ranges, Recipe
from qcheck.results.values_text import line_text, margin_text
from qcheck.search import auto, bisect, exhaustive, greedy  # noqa: F401  (register the strategies)
from qcheck.search.base import STRATEGIES, Context, cheapest_first, closest, confirmed, select
from qcheck.search.evaluate import BudgetExhausted, Evaluator, candidate_errors
from qcheck.search.ranking import rank_nodes
from qcheck.search.space import Graph, allowed, build_pool, unit_changes
from qcheck.search.validate import held_out_choice, held_out_note


def run_search(spec: SearchSpec, *, float_path: Path, float_model: onnx.ModelProto, ranges: Ranges,
               calibrate_with: Callable[[str], Ranges], base: Recipe, samples: list[dict],
               metrics: dict[str, MetricSpec], require: list[Requirement], finding_counts: dict,
               target: TargetProfile, ranking: list[str], workdir: Path,
               log: Callable[[str], None] = lambda m: None, make_tasks: Callable[[], list] | None = None,
               labels: list[str] | None = None,
               findings_of: Callable[[Path, Recipe, Ranges], dict] | None = None,
               proposed: dict[str, list[str]] | None = None,
               flagged: list[str] | None = None,
               reach_of: Callable[[], Ranges] | None = None,
               held_out: tuple[list[dict], list[str]] | None = None,
               build_with: Callable[[Ranges, Recipe, Path], Path] | None = None,
               shards=None, shards_per_group: int | None = None, memory_mb: int | None = None,
               ) -> tuple[dict, Recipe | None, Ranges | None]:
    """Search; returns (the search's results as plain data, the chosen recipe and its ranges, or None, None).
    `held_out`: samples (and their labels) the search never sees; the chosen candidate, or the policy's recipe
    when none is chosen, is judged on them (`result["holdout"]`). `build_with(ranges, recipe, path)`: builds a
    candidate instead of ORT's quantizer from the float model (a given model's edits, `quantize.given_edit`);
    such candidates are all built (the screening model emulates qcheck's own grids and weights, not theirs).
    `shards`, `shards_per_group`, `memory_mb`: where candidates known in advance are screened together
    (`Evaluator.screen_many`; the policy's analyses.executor, analyses.shards, analyses.memory_mb)."""
    by_method = {ranges.method: ranges}

    def ranges_for(method: str) -> Ranges:
        if method not in by_method:  # another calibration method: calibrate once with it, then reuse
            log(f"  calibrating with {method} for the search ...")
            by_method[method] = calibrate_with(method)
        return by_method[method]

    graph = Graph(float_model, set(ranges.ranges), base)
    graph.calibrated = dict(ranges_for(base.calibration).ranges)
    graph.flagged = [n for n in flagged or [] if n in graph.outputs and n not in base.exclude_nodes]
    range_notes = _explicit_ranges(spec, graph, base, target, ranges_for)
    if "widen_range" in spec.remedies and reach_of is not None:
        graph.reach = dict(reach_of().ranges)
        range_notes.append("widen_range: ranges widened to what the evaluation data reach are set from the data the "
                           "candidates are judged on; confirm such a fix on data it has not seen")
    ev = Evaluator(float_path, float_model, ranges_for, base, samples, metrics, require, finding_counts, target, graph,
                   spec.budget, workdir, log, make_tasks, labels, findings_of, shards=shards,
                   shards_per_group=shards_per_group, memory_mb=memory_mb, confidence=spec.confidence)
    if build_with is not None:
        ev.build = lambda recipe, path: build_with(ranges_for(recipe.calibration), recipe, path)
    _find_chains(ev, graph, float_model, base)
    if spec.strategy == "auto" and build_with is None:
        ev.make_screener = lambda: _screener(ev, float_model, ranges_for, base, samples, log)
    model_changes, node_changes, notes = build_pool(ranking, spec.remedies, target, graph, base, spec.candidates,
                                                    spec.budget.max_float_nodes, proposed)
    notes += range_notes
    ctx = Context(ev, spec, model_changes, node_changes, notes, ranking=list(ranking),
                  usable=[r for r in spec.remedies if allowed(r, target)])
    STRATEGIES[spec.strategy]().run(ctx)
    ctx.notes += untried_remedies(spec.remedies, ev.candidates, ctx.notes, ev.stopped_by)
    effects = finding_effects(ev, proposed or {}, ctx.usable)
    ctx.notes += retry_note(shards, "screening")
    if ev.built_screener is not None and ev.built_screener.over_memory:
        ctx.notes.append(f"screening: one batch of samples with its reference's values exceeds analyses.memory_mb "
                         f"({memory_mb} MB); it was sent to the workers whole")

    chosen = select(ev.candidates)
    built = confirmed(ev.candidates)
    baseline = built[0] if built else None
    finalists = sorted((c for c in built if c["passes"] and c.get("within_budget", True)),
                       key=cheapest_first)[:spec.finalists]
    if baseline is not None and baseline not in finalists:
        finalists.append(baseline)
    for c in finalists:
        c["latency_ms"] = ev.latency(c, spec.latency_repeats)
    if spec.cost == "latency":  # among the finalists that meet the requirements, the fastest on this machine
        chosen = select_by_latency(finalists) or chosen
    holdout = None
    if held_out and held_out[0]:  # the held-out samples judge the choice, and choose among the passing candidates
        chosen, holdout = held_out_choice(ev, held_out, chosen)
    status = "not-needed" if baseline is not None and baseline["passes"] else ("found" if chosen else "failed")
    result = {
        "strategy": spec.strategy,
        "cost": spec.cost,
        # search.confidence: candidates that change something were judged at their bootstrap bounds
        "margin": {"confidence": spec.confidence, "samples": len(samples), "resamples": BOOTSTRAP_RESAMPLES,
                   "seed": BOOTSTRAP_SEED} if spec.confidence else None,
        "remedies": spec.remedies,
        "budget": vars(spec.budget).copy(),
        "latency_repeats": spec.latency_repeats,
        "target": target.name,
        "ranking": ranking[:spec.candidates],
        "proposed": {n: r for n, r in (proposed or {}).items() if n in ranking[:spec.candidates]},
        "flagged": graph.flagged,
        "status": status,
        "trials": len(ev.candidates),
        "screened": len(ev.candidates) - len(built),
        "confirmed": len(built),
        "screening": _screening_figures(ev),
        "findings_measured": findings_of is not None,
        "stopped_by": ev.stopped_by,
        "notes": ctx.notes,
        "candidates": ev.candidates,
        "chosen": chosen["id"] if chosen else None,
        "finalists": [c["id"] for c in finalists],
        "pareto": pareto_front(built, "latency_ms" if spec.cost == "latency" else "cost"),
        "why": _why(chosen, ev.candidates, target, spec.cost, finalists, holdout) if chosen else None,
        "closest": [c["id"] for c in closest(ev.candidates)] if not chosen else [],
        "recommendation": None if chosen else recommend(ev.candidates, spec, target, ev.stopped_by, ctx.usable),
        "finding_effects": effects,
    }
    result["holdout"] = holdout
    if not chosen:
        return result, None, None
    recipe = ev.recipe(ev.changes_of(chosen))
    return result, recipe, ranges_for(recipe.calibration)


def _screener(ev: Evaluator, float_model: onnx.ModelProto, ranges_for, base: Recipe, samples: list[dict], log):
    """The grid emulation model that screens candidates (None, and the search builds every candidate, when it
    cannot be built: the reason goes to the log)."""
    from qcheck.errors import ModelError
    from qcheck.model.runtime import ort_errors
    from qcheck.search.screen import Screener, build_grid_model

    try:
        sw = build_grid_model(ev.float_path, float_model, ranges_for(base.calibration), base, ev.workdir)
        return Screener(sw, ev.float_path, ranges_for, base, samples)
    except (ModelError, *ort_errors()) as exc:  # screening only saves time: without it every candidate is built
        log(f"  screening model not available ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "every candidate is built")
        return None


FINDING_NODES = 20  # the findings' nodes whose proposed remedy is tried (screened) to rank the findings


def finding_effects(ev: Evaluator, proposed: dict[str, list[str]], usable: list[str]) -> dict[str, float]:
    """Per node a finding names (its first FINDING_NODES, most severe first): how much of the policy's recipe's
    shortfall from the requirements the finding's first proposed remedy that changes something there recovers,
    screened on the emulation model. Empty when the recipe passes or there is no screening model."""
    built = confirmed(ev.candidates)
    if not built or built[0]["passes"] or not math.isfinite(built[0]["shortfall"]) or ev.screener is None:
        return {}
    tried = {}
    for node, remedies in list(proposed.items())[:FINDING_NODES]:
        changes = unit_changes(node, [r for r in remedies if r in usable], ev.graph, ev.graph.base)[:1]
        if changes:
            tried[node] = tuple(changes)
    try:  # every one is screened: together, in shards (`Evaluator.screen_many`)
        ev.screen_many(list(tried.values()))
    except BudgetExhausted:  # those screened before the budget ran out still count
        pass
    out = {}
    for node, changes in tried.items():
        key = ev.recipe(changes).key()
        cand = ev.screened.get(key) or ev.by_key.get(key)
        if cand is not None and math.isfinite(cand["shortfall"]):
            out[node] = round(built[0]["shortfall"] - cand["shortfall"], 6)
    return out


def _screening_figures(ev: Evaluator) -> dict | None:
    """What screening cost: its wall time per candidate, in float passes over the samples (the float model run
    once on every sample, timed when the search starts)."""
    sc = ev.built_screener
    if sc is None:
        return None
    n = sum(c["figure"] == "screened" for c in ev.candidates)
    return {"candidates": n, "batch": sc.batch, "runs": sc.runs, "seconds": round(sc.seconds, 3),
            # rejected by racing (`Evaluator._screen_pairs`) on a share of the samples
            "raced": sum(bool(c.get("raced")) for c in ev.candidates),
            "float_pass_seconds": round(ev.float_seconds, 4),
            "float_passes_per_candidate": round(sc.seconds / n / ev.float_seconds, 3) if n and ev.float_seconds else None,
            # where candidates screened together ran (Evaluator.screen_many); groups: references' data sent out,
            # more than one per reference when analyses.memory_mb split them
            "shards": {**ev.shards.describe(), "per_group": ev.shards_per_group or ev.shards.workers}
            if ev.shards is not None else None}


def _find_chains(ev: Evaluator, graph: Graph, float_model: onnx.ModelProto, base: Recipe) -> None:
    """Shared-scale chains as ORT builds them: read from the policy's own recipe's QDQ model."""
    path = ev.workdir / "search-chains.onnx"
    try:
        ev.build(base, path)
        built = onnx.load(str(path))
    except candidate_errors():  # the baseline trial records the build error; the search then goes on without chains
        return
    finally:
        path.unlink(missing_ok=True)
    graph.units.find_chains(built, float_model)


def untried_remedies(remedies: list[str], candidates: list[dict], notes: list[str], stopped_by: str | None) -> list[str]:
    """Why an allowed remedy never appears in a trial (unless a note already says so)."""
    tried = {ch["remedy"] for c in candidates for ch in c["changes"]}
    passed = any(c["passes"] for c in candidates)
    out = []
    for r in remedies:
        if r in tried or any(n.startswith((f"{r}:", f"{r} ")) for n in notes):
            continue
        if stopped_by:
            why = f"the search stopped at {stopped_by} before reaching it"
        elif passed and candidates[0]["passes"]:
            why = "the policy's own recipe already meets the requirements"
        elif passed:
            why = "a passing set was found and minimized without it (it changes nothing cheaper on what remained)"
        else:
            why = "it changes nothing on the units the search reached"
        out.append(f"{r}: allowed but never tried: {why}")
    return out


def select_by_latency(finalists: list[dict]) -> dict | None:
    """`search.cost: latency`: the passing finalist with the lowest measured latency (ties: profile cost, fewer
    changes, tried first)."""
    timed = [c for c in finalists if c["passes"] and c.get("latency_ms") is not None]
    return min(timed, key=lambda c: (c["latency_ms"], c["cost"], c["n_changes"], c["id"])) if timed else None


def _explicit_ranges(spec: SearchSpec, graph: Graph, base: Recipe, target: TargetProfile, ranges_for) -> list[str]:
    """explicit_range: take the tighter ranges from `spec.explicit_range_from`, calibrated once (not per candidate)."""
    if "explicit_range" not in spec.remedies or not allowed("explicit_range", target):
        return []
    method = spec.explicit_range_from
    if method == base.calibration:
        return [f"explicit_range: the policy already calibrates with {method}, so its ranges are no tighter; "
                f"set search.explicit_range_from to another method"]
    graph.explicit_ranges, graph.explicit_method = dict(ranges_for(method).ranges), method
    return []


def pareto_front(candidates: list[dict], axis: str = "cost") -> list[int]:
    """Candidates no other candidate beats on both cost (or another axis, e.g. latency_ms) and closeness to
    the requirements. Candidates without a value on the axis are left out."""
    def key(c):
        return (c["failed"], c["shortfall"])

    candidates = [c for c in candidates if c.get(axis) is not None]
    front = []
    for c in candidates:
        if any((o[axis] <= c[axis] and key(o) <= key(c)) and (o[axis] < c[axis] or key(o) < key(c))
               for o in candidates):
            continue
        front.append(c["id"])
    return front


def _why(chosen: dict, candidates: list[dict], target: TargetProfile, by: str = "profile",
         finalists: list[dict] | None = None, holdout: dict | None = None) -> str:
    passing = [c for c in candidates if c["passes"]]
    if not chosen["n_changes"]:
        return "the policy's own recipe already meets every requirement; nothing was changed"
    if by == "latency":
        timed = [c for c in finalists or [] if c["passes"] and c.get("latency_ms") is not None]
        return (f"{chosen.get('brief', chosen['label'])} meets every requirement and is the fastest of {len(timed)} passing finalist(s) "
                f"measured on this machine ({chosen['latency_ms']:.3g} ms median; search.cost: latency), at cost "
                f"{chosen['cost']:g} on target '{target.name}'")
    text = (f"{chosen.get('brief', chosen['label'])} meets every requirement at cost {chosen['cost']:g} on target '{target.name}'"
            f" ({chosen['float_nodes']} float node(s), {chosen['int16_tensors']} int16 tensor(s))")
    bounds = [f"{q['text']}: {margin_text(q)}" for q in chosen["requirements"] if q.get("margin")]
    if bounds:
        text += (f", with a margin for sampling noise (search.confidence {chosen['confidence']:g}, bootstrap over "
                 f"the search's samples): {'; '.join(bounds)}")
    others = len(passing) - 1
    if holdout and len(holdout["validated"]) > 1:  # the held-out samples chose among the passing candidates
        return f"{text}; {held_out_note(holdout)}"
    if others:
        text += f"; it is the cheapest of {len(passing)} passing candidates (ties go to fewer changes)"
    return text


def recommend(candidates: list[dict], spec: SearchSpec, target: TargetProfile, stopped_by: str | None,
              usable: list[str]) -> dict:
    """Nothing passed. When the search stopped at its trial or time budget before trying every allowed remedy,
    the next step is a larger budget (retraining is not called for by what was never tried); else QAT."""
    tried = {ch["remedy"] for c in candidates for ch in c["changes"]}
    untried = [r for r in usable if r not in tried]
    if stopped_by in ("max_trials", "max_seconds") and untried:
        qat = recommend_qat(candidates, spec, target, stopped_by)
        limit = getattr(spec.budget, stopped_by)
        return {"action": f"a larger search.budget.{stopped_by}",
                "reason": f"The search stopped at {stopped_by} ({limit:g}) before it tried {', '.join(untried)}: "
                          f"what it never tried may pass; raise search.budget.{stopped_by} and run again "
                          f"(quantization-aware training only if the search then ends with nothing). "
                          + qat["reason"].split(". Post-training")[0] + "."}
    return recommend_qat(candidates, spec, target, stopped_by)


def recommend_qat(candidates: list[dict], spec: SearchSpec, target: TargetProfile, stopped_by: str | None) -> dict:
    """Nothing passed: say how close the best came, and why quantization-aware training is the next step."""
    near = closest(candidates, 1)
    b = spec.budget
    limits = (f"max_float_nodes {b.max_float_nodes}, max_int16_tensors {b.max_int16_tensors}, "
              f"max_trials {b.max_trials}, max_seconds {b.max_seconds:g}")
    reason = f"No recipe within the budget ({limits}) on target '{target.name}' meets the requirements"
    if stopped_by:
        reason += f" (the search stopped at {stopped_by})"
    edge = [c for c in confirmed(candidates) if c.get("passes_on_values") and not c["passes"] and c["n_changes"]
            and c.get("within_budget", True)]
    if edge:
        reason += (f" with a margin for sampling noise: {len(edge)} candidate(s) met them on their values but not at "
                   f"the {100 * spec.confidence:g}% bootstrap bound (search.confidence); lower it, or judge on more "
                   f"evaluation samples, to accept such a fix")
    if near:
        c = near[0]
        misses = [f"`{q['text']}` ({line_text(q)}, "
                  f"{100 * q['shortfall']:.3g}% short)" for q in c["requirements"] if not q["holds"]]
        reason += (f". Closest: {c.get('brief', c['label'])} (cost {c['cost']:g}: {c['float_nodes']} float node(s), "
                   f"{c['int16_tensors']} int16 tensor(s), {c['explicit_ranges']} re-ranged tensor(s)), which misses "
                   f"{'; '.join(misses) or c.get('error') or 'the requirements'}")
    reason += (". Post-training remedies keep part of the model out of int8 at a cost; quantization-aware training "
               "instead trains the weights to the int8 grid so every layer can stay integer")
    if target.integer_only:
        reason += f", which is what an integer-only target like '{target.name}' needs"
    reason += ". Export the trained model once its range estimates have converged and check the exported integer " \
              "model with qcheck again, not the training-time model."
    return {"action": "quantization-aware training", "reason": reason}


__all__ = ["run_search", "rank_nodes", "pareto_front", "STRATEGIES"]
