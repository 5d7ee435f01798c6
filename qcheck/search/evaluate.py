"""Judging one candidate: build the real QDQ model, run it with ONNX Runtime, compare its outputs.

The float model runs once per evaluation sample and its outputs are kept;
each candidate costs one `build_quantized` (with the ranges calibrated once)
and one quantized session over the samples. Candidates are cached by recipe
key, so a recipe is never built twice. The budget (trials, seconds) is
counted here.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcheck.errors import ModelError
from qcheck.measure.latency import measure_latency
from qcheck.measure.outputs import aggregate_model_metrics, compare_outputs
from qcheck.measure.resample import resampled_values
from qcheck.measure.tasks.base import bootstrap_weights
from qcheck.model.runtime import make_session, ort_errors, usable_cores
from qcheck.policy.expr import ExprError, Expression, NotApplicable
from qcheck.policy.metric_names import require_metric
from qcheck.policy.spec import MetricSpec, Requirement, SearchBudget
from qcheck.policy.targets import TargetProfile
from qcheck.quantize.calibrate import Ranges, Recipe, build_quantized
from qcheck.quantize.reuse import BuildReuse
from qcheck.results.values_text import line_text
from qcheck.rules.requirements import judge, requirement_env, with_margin
from qcheck.search.space import MODEL, Change, Graph, apply_changes, cost, counts, within_budget


def shortfall(expression: Expression | str, values: dict) -> float:
    """How far a failing `require:` line is from holding, relative to its threshold.

    For `name >= c` (or `>`): (c - value) / |c|; for `name <= c`: (value - c) / |c|.
    Lines of any other form count 1 when they fail. NaN counts as infinitely far.
    `expression`: the requirement's parsed expression (text is parsed here, for tools and tests).
    """
    if isinstance(expression, str):
        try:
            expression = Expression(expression)
        except ExprError:
            return 1.0
    limit = expression.limit
    if limit is None or len(values) != 1:
        return 1.0
    try:
        value = limit.side(values)
    except NotApplicable:
        return math.inf
    if not isinstance(value, (int, float)) or math.isnan(value):
        return math.inf
    return limit_gap(limit, value)


def limit_room(limit, value: float) -> float:
    """How far `value` (the side of `side op c`) lies on the passing side of the limit, relative to c (negative
    when it fails)."""
    c = limit.value
    room = (value - c) if limit.at_least else (c - value)
    return room / max(abs(c), 1e-12)


def limit_gap(limit, value: float) -> float:
    """How far `value` (the side of `side op c`) is from meeting the limit, relative to c (0 when it does)."""
    return max(0.0, -limit_room(limit, value))


class BudgetExhausted(Exception):
    pass


class Evaluator:
    def __init__(self, float_path: Path, float_model, ranges_for: Callable[[str], Ranges], base: Recipe,
                 samples: list[dict], metrics: dict[str, MetricSpec], require: list[Requirement],
                 finding_counts: dict, target: TargetProfile, graph: Graph, budget: SearchBudget, workdir: Path,
                 log: Callable[[str], None] = lambda m: None, make_tasks: Callable[[], list] | None = None,
                 labels: list[str] | None = None,
                 findings_of: Callable[[Path, Recipe, Ranges], dict] | None = None, workers: int | None = None,
                 shards=None, shards_per_group: int | None = None, memory_mb: float | None = None,
                 confidence: float = 0.0):
        """`shards`: where `screen_many` runs candidates (qcheck.compute.shards; default: threads of this process),
        `shards_per_group` shards per reference, each group's data sent in parts of at most `memory_mb`."""
        self.float_path, self.ranges_for, self.base = float_path, ranges_for, base
        self.shards, self.shards_per_group, self.memory_mb = shards, shards_per_group, memory_mb
        # search.confidence: a candidate that changes something passes only when every requirement holds at its
        # one-sided bootstrap bound at this confidence (0: on the value itself)
        self.confidence = confidence
        self.workers = max(1, workers or usable_cores())  # candidates built and judged at once (evaluate_many)
        # findings_of: the candidate measured per tensor and the rule packs evaluated on it -> its finding counts.
        # Given only when a `require:` line names findings.* (it costs a per-tensor measurement per candidate).
        self.findings_of = findings_of
        # task metrics (qcheck.measure.tasks) are fed whole outputs; the others compare an output or a slice of one
        self.samples, self.require = samples, require
        self.metrics = {n: m for n, m in metrics.items() if getattr(m, "task", None) is None}
        # racing (`_screen_pairs`): a screened candidate is judged after a share of the samples and, when a line it
        # must meet fails even if every sample left gave the float model's outputs, rejected there
        self.race = True
        self.raceable = [raceable(r.expression, metrics) for r in require]
        self.make_tasks = make_tasks or (list)
        self.labels = labels or [str(i) for i in range(len(samples))]
        self.finding_counts, self.target, self.graph, self.budget = finding_counts, target, graph, budget
        self.workdir, self.log = workdir, log
        self.outputs = [o.name for o in float_model.graph.output]
        sess = make_session(float_path, "float model")
        clock = time.perf_counter()
        self.float_outputs = [dict(zip(self.outputs, sess.run(self.outputs, s))) for s in samples]
        self.float_seconds = time.perf_counter() - clock  # one float pass over the samples (screening's unit)
        self.candidates: list[dict] = []
        self.by_key: dict[str, dict] = {}  # confirmed candidates by recipe key
        self.screened: dict[str, dict] = {}  # screened candidates by recipe key
        self.make_screener: Callable[[], object] | None = None  # builds a screen.Screener (set by run_search)
        self.built_screener = None  # the Screener, once something asked for it
        self.by_model: dict[str, dict] = {}  # sha256 of the built model -> its candidate
        self._changes: dict[int, tuple[Change, ...]] = {}
        # what ORT's quantizer computes alike for every candidate (the same models, faster), within memory_mb
        self.reuse = BuildReuse(int(memory_mb * (1 << 20)) if memory_mb else None)
        self.start = time.perf_counter()
        self.stopped_by: str | None = None

    @property
    def screener(self):
        """The screening model, built when first needed (a search whose policy's recipe passes never builds it);
        None when the search builds every candidate."""
        if self.built_screener is None and self.make_screener is not None:
            self.built_screener, self.make_screener = self.make_screener(), None
        return self.built_screener

    # ------------------------------------------------------------------ budget

    def exhausted(self, screened: bool = False) -> str | None:
        """The budget that is spent, if any: max_trials counts confirmed (built) candidates; screening is bound by
        max_seconds only."""
        if self.stopped_by:
            return self.stopped_by
        if not screened and sum(c["figure"] == "confirmed" for c in self.candidates) >= self.budget.max_trials:
            self.stopped_by = "max_trials"
        elif time.perf_counter() - self.start >= self.budget.max_seconds:
            self.stopped_by = "max_seconds"
        return self.stopped_by

    # ------------------------------------------------------------------ one candidate

    def recipe(self, changes: tuple[Change, ...]) -> Recipe:
        return apply_changes(self.base, changes, self.graph)

    def evaluate(self, changes: tuple[Change, ...] | list[Change], budget: bool = True) -> dict:
        """The candidate built for real and judged (cached by recipe key): a *confirmed* figure.
        Raises BudgetExhausted when the budget is spent (`budget` False: not counted against it; confirming a
        candidate screening already found, after the search)."""
        return self.evaluate_many([changes], budget)[0]

    def evaluate_many(self, sets: list[tuple[Change, ...]], budget: bool = True) -> list[dict]:
        """`evaluate` for each change set, the builds and runs spread over `workers` threads (ORT's quantizer is
        Python, but sessions and runs release the GIL: one candidate builds while another runs); recorded in the
        order given, so ids, log and figures are those of evaluating them one by one, whatever the workers.
        Raises BudgetExhausted, after recording those that fit, when the budget is spent."""
        todo: dict[str, tuple[tuple[Change, ...], Recipe]] = {}
        for changes in sets:
            changes = tuple(sorted(set(changes)))
            recipe = self.recipe(changes)
            if recipe.key() not in self.by_key:
                todo.setdefault(recipe.key(), (changes, recipe))
        if todo:
            if budget and self.exhausted():
                raise BudgetExhausted(self.stopped_by)
            room = (self.budget.max_trials - sum(c["figure"] == "confirmed" for c in self.candidates)) if budget \
                else len(todo)
            items = list(todo.items())[:room]
            for _, (_, recipe) in items:  # a calibration the candidates need runs here, once, not in a worker
                self.ranges_for(recipe.calibration)
            workers = 1 if self.findings_of is not None else min(self.workers, len(items))
            outcomes = self._map(self._confirm, items, workers)
            for (key, (changes, _)), (digest, figures) in zip(items, outcomes):
                self._record_confirmed(changes, key, digest, figures)
            if len(items) < len(todo):
                self.stopped_by = "max_trials"
                raise BudgetExhausted(self.stopped_by)
        return [self.by_key[self.recipe(tuple(sorted(set(changes)))).key()] for changes in sets]

    def _confirm(self, item: tuple[str, tuple[tuple[Change, ...], Recipe]]) -> tuple[str | None, dict]:
        """Build one candidate and judge it: (sha256 of the model built, its figures), or (None, the record of
        the error ONNX Runtime refused it with)."""
        key, (changes, recipe) = item
        path = self.workdir / f"candidate-{key}.onnx"
        try:
            self.build(recipe, path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in self.by_model:  # the very model of an earlier candidate: not judged again
                return digest, {}
            return digest, self._judge(path, recipe, changes, threads=1 if self.workers > 1 else 0)
        except candidate_errors() as exc:  # a candidate ORT cannot build or run is recorded; the search goes on
            failed = _failed_build(exc, len(self.require))
            failed["error"] = failed["error"].replace(str(path), "the candidate model").replace(str(self.workdir), "")
            return None, failed
        finally:
            path.unlink(missing_ok=True)

    def _record_confirmed(self, changes: tuple[Change, ...], key: str, digest: str | None, figures: dict) -> None:
        cand = self._record(changes, key, "confirmed")
        same = self.by_model.get(digest) if digest else None
        if same is not None:  # another recipe that builds the very same model: one candidate
            self.by_key[key] = same
            self.log(f"  ({cand['brief']} builds the same model as trial {same['id']}; judged once)")
            return
        if digest:
            self.by_model[digest] = cand
        cand.update(figures)
        self._add(cand, changes, self.by_key)

    def _map(self, fn, items: list, workers: int) -> list:
        if workers <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(workers, thread_name_prefix="qcheck-confirm") as pool:
            return list(pool.map(fn, items))

    def screen(self, changes: tuple[Change, ...] | list[Change]) -> dict:
        """The candidate judged on the grid emulation model (`screen.py`): a *screened* figure, never chosen.
        Falls back to `evaluate` when there is no screening model or the candidate changes the weights'
        quantization. A screened candidate's reference is its whole-model changes (it runs from its first
        difference from them on)."""
        changes = tuple(sorted(set(changes)))
        recipe = self.recipe(changes)
        key = recipe.key()
        if key in self.by_key or key in self.screened:
            return self.by_key.get(key) or self.screened[key]
        if self.screener is None or not self.screener.screenable(recipe):
            return self.evaluate(changes)
        if self.exhausted(screened=True):
            raise BudgetExhausted(self.stopped_by)
        try:  # a grid ORT cannot compute (the build would fail the same way) is recorded like a failed build
            pair = self._screen_configs(changes)
        except candidate_errors() as exc:
            return self._record_screened(key, changes, error_text(exc))
        return self._record_screened(key, changes, self._screen_pairs([pair], race=self.race, many=False)[0])

    def _screen_configs(self, changes: tuple[Change, ...]) -> tuple:
        """The candidate's grid setting and its reference's: its whole-model changes (it runs from its first
        difference from them on)."""
        reference = self.screener.config(self.recipe(tuple(c for c in changes if c.subject == MODEL)))
        return self.screener.config(self.recipe(changes)), reference

    def _record_screened(self, key: str, changes: tuple[Change, ...], outcome: list[dict] | str | Raced) -> dict:
        """A screened candidate from its outputs per sample, the text of the error ORT refused it with, or its
        rejection by racing."""
        cand = self._record(changes, key, "screened")
        cand.update(self._screened_figures(outcome, changes))
        return self._add(cand, changes, self.screened)

    def _screened_figures(self, outcome: list[dict] | str | Raced, changes: tuple[Change, ...]) -> dict:
        if isinstance(outcome, str):
            return _failed_build(outcome, len(self.require))
        if isinstance(outcome, Raced):  # the figures at best: its unseen samples taken as the float model's outputs
            return {**outcome.verdict, "findings_measured": False, "size_bytes": None,
                    "raced": {"samples": outcome.seen, "of": len(self.samples)}}
        return {**self._verdict(outcome, self.finding_counts, bool(changes)), "findings_measured": False,
                "size_bytes": None, "raced": None}

    def _screen_pairs(self, pairs: list[tuple], race: bool, many: bool) -> list[list[dict] | str | Raced]:
        """Per (setting, reference) pair: its outputs per sample, the text of the error ONNX Runtime refused it
        with, or, racing, its rejection (`Raced`). Racing runs the samples in stages (RACE_STAGES of them) and, after
        each but the last, rejects a candidate that cannot pass whatever the rest of the samples give
        (`_cannot_pass`); the others run on, from where they were, with the same suffix session, so their outputs
        are those of one run over all the samples. `many`: together, in shards (`Screener.run_many`)."""
        screener, done, outputs = self.screener, {}, [[] for _ in pairs]
        n = len(screener.batches)
        # a stage runs as many batches as there are threads for them (fewer candidates than workers: several each)
        step = max(1, -(-screener.workers // len(pairs))) if many else screener.workers
        stages = race_stages(n, step) if race and any(self.raceable) else [n]
        memory = int(self.memory_mb * (1 << 20)) if self.memory_mb else None
        lo = 0
        for hi in stages:
            live = [i for i in range(len(pairs)) if i not in done]
            keep = hi < n
            if many:
                got = screener.run_many([pairs[i] for i in live], self.shards, self.shards_per_group, memory,
                                        (lo, hi), keep)
            else:
                try:
                    got = [screener.run(*pairs[live[0]], (lo, hi), keep)]
                except candidate_errors() as exc:
                    got = [error_text(exc)]
            for i, g in zip(live, got):
                if isinstance(g, str):
                    done[i] = g
                    continue
                outputs[i] += g
                if keep and (raced := self._cannot_pass(outputs[i])) is not None:
                    done[i] = raced
            if len(done) == len(pairs):
                break
            lo = hi
        screener.release()
        return [done.get(i, outputs[i]) for i in range(len(pairs))]

    def _cannot_pass(self, seen: list[dict]) -> Raced | None:
        """Rejected after the samples `seen` (their outputs, in order): a line that can be raced (`raceable`) fails,
        by a clear margin, even when every other sample is given the float model's outputs (its best case: the
        value on all the samples can only be worse, so the candidate fails it on all of them)."""
        completed = seen + self.float_outputs[len(seen):]
        raced = [r for r, ok in zip(self.require, self.raceable) if ok]
        names = {n.partition(".")[0] for r in raced for n in r.expression.names}
        # only what those lines read: a task's values, a policy metric's, every output's only for `model.*`
        compared = compare_outputs(self.outputs, {n: m for n, m in self.metrics.items() if n in names},
                                   [t for t in self.make_tasks() if t.name in names], model="model" in names)
        for label, f_vals, q_vals in zip(self.labels, self.float_outputs, completed):
            compared.update(label, f_vals, q_vals)
        env = requirement_env(aggregate_model_metrics(compared.output_results()), compared.user_results(),
                              self.finding_counts, compared.task_results())
        for r, line in zip(raced, judge(raced, env)["requirements"]):
            value = next(iter(line["values"].values()), None)
            if not line["holds"] and isinstance(value, (int, float)) and math.isfinite(value) \
                    and limit_gap(r.expression.limit, value) > RACE_TOLERANCE:
                # the record: every line judged on the same outputs (no margin: it fails on a value already)
                return Raced(self._verdict(completed, self.finding_counts, changed=False), len(seen))
        return None

    def screen_many(self, sets: list[tuple[Change, ...]], race: bool = False) -> list[dict]:
        """`screen` for each change set, the screened ones as shards on `self.shards` (`Screener.run_many`: one
        group per reference, the candidates split into shards), those screening cannot express built
        (`evaluate_many`); recorded in the order given, so ids, log and figures are those of screening them one by
        one, wherever the shards ran. Raises BudgetExhausted, after recording what ran, when the budget is spent.
        `race`: candidates that cannot pass may be rejected on a share of the samples (`_screen_pairs`); without
        it every candidate's figures are those of all the samples (one rejected earlier is screened again on all
        of them: its record completed, under the same id)."""
        sets = [tuple(sorted(set(changes))) for changes in sets]
        if self.screener is None:
            return self.evaluate_many(sets)
        start = 0
        while start < len(sets):  # runs of screenable and of built sets, in order
            screenable = self.screener.screenable(self.recipe(sets[start]))
            end = start + 1
            while end < len(sets) and self.screener.screenable(self.recipe(sets[end])) == screenable:
                end += 1
            if screenable:
                self._screen_run(sets[start:end], race)
            else:
                self.evaluate_many(sets[start:end])
            start = end
        return [self.by_key.get(key) or self.screened[key] for key in (self.recipe(c).key() for c in sets)]

    def _screen_run(self, sets: list[tuple[Change, ...]], race: bool) -> None:
        todo: dict[str, tuple[Change, ...]] = {}
        for changes in sets:
            key = self.recipe(changes).key()
            raced = key in self.screened and self.screened[key].get("raced") and not race
            if key not in self.by_key and (key not in self.screened or raced):
                todo.setdefault(key, changes)
        if not todo:
            return
        if self.exhausted(screened=True):
            raise BudgetExhausted(self.stopped_by)
        outcomes: dict[str, list[dict] | str | Raced] = {}
        pairs: list = []
        for key, changes in todo.items():
            try:  # as in `screen`
                pairs.append((key, self._screen_configs(changes)))
            except candidate_errors() as exc:
                outcomes[key] = error_text(exc)
        if pairs:
            outcomes.update(zip((key for key, _ in pairs), self._screen_pairs([p for _, p in pairs], race, many=True)))
        for key, changes in todo.items():
            if key in self.screened:  # rejected by racing before: completed on every sample
                cand = self.screened[key]
                cand.update(self._screened_figures(outcomes[key], changes))
                self.log(trial_line(cand) + " (completed on every sample)")
            else:
                self._record_screened(key, changes, outcomes[key])

    def focus(self, sets: list[tuple[Change, ...]]) -> None:
        """Screening is about to try subsets and variants of these change sets (all on the whole-model changes of
        the first): prepare the screening model for them (`Screener.focus`)."""
        if self.screener is None or not sets:
            return
        try:
            reference = self.screener.config(self.recipe(tuple(c for c in sets[0] if c.subject == MODEL)))
        except candidate_errors():  # a grid ORT cannot compute: `screen` records it when tried
            return
        variable: set[int] = set()
        for changes in sets:
            try:
                cfg = self.screener.config(self.recipe(tuple(sorted(set(changes)))))
            except candidate_errors():
                continue
            if cfg is not None and reference is not None:
                variable |= set(cfg.differs(reference).tolist())
        if reference is not None:
            self.screener.focus(reference, variable)

    def _record(self, changes: tuple[Change, ...], key: str, figure: str) -> dict:
        return {
            "id": len(self.candidates),
            "changes": [c.to_dict() for c in changes],
            "label": ", ".join(c.label() for c in changes) or "the policy's recipe",
            "brief": brief_label(changes, counts(changes, self.graph)),
            "recipe_key": key,
            # screened: judged on the emulation model; confirmed: built with ONNX Runtime and run (only these
            # can be chosen)
            "figure": figure,
            **counts(changes, self.graph),
            "n_changes": len(changes),
            "cost": cost(changes, self.graph, self.target),
            "within_budget": within_budget(changes, self.graph, self.budget),
            "latency_ms": None,
            "error": None,
        }

    def _add(self, cand: dict, changes: tuple[Change, ...], cache: dict) -> dict:
        self.candidates.append(cand)
        cache[cand["recipe_key"]] = cand
        self._changes[cand["id"]] = changes
        self.log(trial_line(cand))
        return cand

    def _judge(self, path: Path, recipe: Recipe, changes: tuple[Change, ...], threads: int = 0) -> dict:
        """Run the built candidate on the evaluation data and judge the requirements."""
        # the policy's own recipe is the pipeline's main run: its findings (with the analyses' node statistics)
        # are already counted; every other candidate is measured per tensor when findings_of is given
        finding_counts = (self.findings_of(path, recipe, self.ranges_for(recipe.calibration))
                          if self.findings_of and changes else self.finding_counts)
        sess = make_session(path, "quantized candidate", threads=threads)
        got = [dict(zip(self.outputs, sess.run(self.outputs, sample))) for sample in self.samples]
        return {**self._verdict(got, finding_counts, bool(changes)), "findings_measured": self.findings_of is not None,
                "size_bytes": path.stat().st_size}

    def _verdict(self, got: list[dict], finding_counts: dict, changed: bool = True) -> dict:
        """The requirements judged on a candidate's outputs per sample (compared with the float model's). With
        `confidence` and a candidate that changes something (`changed`; the policy's own recipe is judged as the
        verdict judges it), each line must also hold at its bootstrap bound (`requirements.with_margin`)."""
        compared = compare_outputs(self.outputs, self.metrics, self.make_tasks())
        for label, f_vals, q_vals in zip(self.labels, self.float_outputs, got):
            compared.update(label, f_vals, q_vals)
        env = requirement_env(aggregate_model_metrics(compared.output_results()), compared.user_results(),
                              finding_counts, compared.task_results())
        verdict = judge(self.require, env)
        lines = [{"text": q["text"], "holds": q["holds"], "values": q["values"]} for q in verdict["requirements"]]
        gaps = [shortfall(r.expression, q["values"]) if not q["holds"] else 0.0
                for r, q in zip(self.require, verdict["requirements"])]
        margins = self._margins(compared, env) if changed and self.confidence > 0 else [None] * len(lines)
        for r, line, m, i in zip(self.require, lines, margins, range(len(lines))):
            if m is None:
                continue
            line["margin"] = m
            if line["holds"] and not m["holds"]:  # holds on the value, not at its bound: short by the bound's gap
                line["holds"] = False
                gaps[i] = limit_gap(r.expression.limit, m["bound"]) if m["bound"] is not None else 1.0
        for line, g in zip(lines, gaps):
            line["shortfall"] = g
        failed = sum(not line["holds"] for line in lines)
        return {
            "passes": failed == 0,
            "passes_on_values": verdict["status"] != "fail",  # without the margin
            "failed": failed,
            "shortfall": sum(gaps),
            "requirements": lines,
            "metrics": {k: v for k, v in env.items() if not k.startswith("findings.")},
            # the candidate's own findings when measured per tensor; else the policy's recipe's
            "finding_counts": dict(finding_counts),
            "confidence": self.confidence if changed and self.confidence > 0 else None,
        }

    def _margins(self, compared, env: dict) -> list[dict | None]:
        """Each requirement's bootstrap bound over this evaluator's samples (seeded: the same draws every time)."""
        weights = bootstrap_weights(len(self.samples))
        values = resampled_values(compared, weights)
        return [with_margin(r, env, values, self.confidence) for r in self.require]

    def changes_of(self, cand: dict) -> tuple[Change, ...]:
        return self._changes[cand["id"]]

    def build(self, recipe: Recipe, path: Path) -> Path:
        return build_quantized(self.float_path, self.ranges_for(recipe.calibration), recipe, path, reuse=self.reuse)

    # ------------------------------------------------------------------ held-out samples

    def on(self, samples: list[dict], labels: list[str]) -> Evaluator:
        """The same judge on other samples (search.holdout), with the float model's outputs for them."""
        other = copy.copy(self)
        other.confidence = 0.0  # judged on the values themselves: whether the fix holds on samples it has not seen
        sess = make_session(self.float_path, "float model")
        other.samples, other.labels = samples, labels
        other.float_outputs = [dict(zip(self.outputs, sess.run(self.outputs, s))) for s in samples]
        return other

    def judge_changes(self, changes: tuple[Change, ...]) -> dict:
        """Build the candidate and judge it on this evaluator's samples (nothing recorded, no budget counted)."""
        recipe = self.recipe(changes)
        path = self.build(recipe, self.workdir / f"held-out-{recipe.key()}.onnx")
        try:
            return self._judge(path, recipe, changes)
        finally:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ finalists

    def latency(self, cand: dict, repeats: int) -> float:
        """Median wall time (ms) of one run of the first sample, after one warm-up run."""
        path = self.build(self.recipe(self.changes_of(cand)), self.workdir / f"final-{cand['recipe_key']}.onnx")
        figures = measure_latency(path, self.samples[0], runs=repeats, warmup=1, what="quantized candidate")
        path.unlink()
        return float(figures["median_ms"])


class Lookahead:
    """A judge (`Evaluator.screen`) for a loop that asks about change sets one at a time, in an order announced in
    advance (a level of delta debugging): asked about one, it screens it and the next ones, as many as the shards
    run at once, together (`Evaluator.screen_many`). The loop gets the answers it gets one at a time; at most
    `width - 1` candidates are screened that the loop then does not ask about."""

    def __init__(self, ev: Evaluator, width: int):
        self.ev, self.width, self.coming = ev, max(1, width), []

    def announce(self, sets: list) -> None:
        self.coming = [tuple(sorted(set(s))) for s in sets]

    def __call__(self, changes: tuple[Change, ...]) -> dict:
        changes = tuple(sorted(set(changes)))
        screener = self.ev.screener
        if self.width > 1 and changes in self.coming and screener is not None:
            i = self.coming.index(changes)
            # only what screening expresses: a candidate built for real counts against max_trials, so none ahead
            self.ev.screen_many([s for s in self.coming[i:i + self.width] if screener.screenable(self.ev.recipe(s))],
                                race=self.ev.race)
        return self.ev.screen(changes)


RACE_STAGES = (0.125, 0.25, 0.5, 0.75)  # the shares of the samples after which a raced candidate is judged
RACE_TOLERANCE = 1e-9  # a line fails at best by more than this share of its limit before it rejects (rounding)


@dataclass
class Raced:
    """A screened candidate rejected after its first `seen` samples (`Evaluator._cannot_pass`): `verdict` is judged
    with the other samples taken as the float model's outputs (its figures at best)."""

    verdict: dict
    seen: int


def race_stages(n_batches: int, step: int) -> list[int]:
    """Where a race's stages end, in batches: after about RACE_STAGES of them, in multiples of `step` (a stage keeps
    that many threads busy), and at the end."""
    ends = {min(n_batches, step * math.ceil(n_batches * f / step)) for f in RACE_STAGES} | {n_batches}
    return sorted(e for e in ends if e > 0)


# what every sample taken as the float model's outputs makes of the value of a `require:` name, per kind: its best
# (the value on all the samples can only be worse). True for the ideal-valued comparisons and task values whose
# components sum over samples with the float model fixing the denominator (hits / rows, inter / union, edits /
# float length, tp / (tp + fp + fn)) or take their maximum; not for cosine (one scaled output could raise the
# cosine of all the samples above the float outputs'), nor for values against labels or a python task's values.
NOT_RACED = {"cosine"}


def raceable(expression: Expression, metrics: dict[str, MetricSpec]) -> bool:
    """Whether a `require:` line can reject a candidate early (`Evaluator._cannot_pass`): `name op c` with the
    name's best case the float model's outputs (see NOT_RACED), compared in the direction that is better, or a
    findings count (screening does not change it)."""
    limit, names = expression.limit, expression.names
    if limit is None or len(names) != 1:
        return False
    name = next(iter(names))
    try:
        side = ast.parse(expression.text, mode="eval").body
    except SyntaxError:
        return False
    if not isinstance(side, ast.Compare) or name not in {ast.unparse(side.left), ast.unparse(side.comparators[0])}:
        return False  # the side is a formula of the name, not the name
    if name.startswith("findings."):
        return True
    kind = require_metric(name, metrics)
    if kind is None or kind.ideal is None or kind.name in NOT_RACED:
        return False
    return kind.higher_is_better == limit.at_least


def candidate_errors() -> tuple[type[BaseException], ...]:
    """What building or running a candidate raises when ONNX Runtime (or onnx) refuses it: ORT's quantizer
    (wrapped as ModelError by `build_quantized` and `quantize.grids`), its sessions and runs, onnx's checker and
    shape inference. Everything else is a bug of qcheck's: it ends the run with exit 3 and its traceback."""
    import onnx

    return (ModelError, *ort_errors(), onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def error_text(exc: Exception) -> str:
    """What a candidate's record says of the error ONNX Runtime refused it with."""
    problems = getattr(exc, "problems", None)
    return problems[0].message if problems else f"{type(exc).__name__}: {exc}"


def _failed_build(exc: Exception | str, n_require: int) -> dict:
    """The record of a candidate ONNX Runtime could not build or run (the error, or its text): it fails every
    line, infinitely far."""
    text = exc if isinstance(exc, str) else error_text(exc)
    return {"passes": False, "failed": max(n_require, 1), "shortfall": math.inf, "requirements": [], "metrics": {},
            "finding_counts": {}, "findings_measured": False, "size_bytes": None, "error": text.splitlines()[0][:300]}


def sort_key(cand: dict) -> tuple:
    """How close a candidate is to meeting the requirements: fewer failing lines, then smaller shortfall."""
    s = cand["shortfall"]
    return (cand["failed"], s if not (isinstance(s, float) and np.isnan(s)) else math.inf)


BRIEF_CHANGES = 3  # changes a log line or a sentence names before it summarizes the rest


def brief_label(changes: tuple[Change, ...], n: dict[str, int]) -> str:
    """The label for a line of text: every change when there are few; else how many of each kind, and the
    first few (a region or a pruned set can hold 30 changes, and each node name can be 80 characters)."""
    if len(changes) <= BRIEF_CHANGES + 1:
        return ", ".join(c.label() for c in changes) or "the policy's recipe"
    kinds = [f"{v} {k.replace('_', ' ')}" for k, v in n.items() if v and k != "float_islands"]
    first = ", ".join(c.label() for c in changes[:BRIEF_CHANGES])
    return f"{len(changes)} changes ({', '.join(kinds)}): {first}, and {len(changes) - BRIEF_CHANGES} more"


def trial_line(cand: dict) -> str:
    """One search trial for the log, with the values that decide it: "trial 3: fc in float -> misses
    `model.cosine >= 0.99` (model.cosine = 0.9812)"."""
    raced = cand.get("raced")
    trial = f"trial {cand['id']}" + (" (screened)" if cand.get("figure") == "screened" and not raced else "") + (
        f" (screened, raced: rejected after {raced['samples']} of {raced['of']} samples; the values are the best the "
        f"other samples could give)" if raced else "")
    label = cand.get("brief", cand["label"])
    if cand.get("error"):
        return f"  {trial}: {label} -> could not be built or run ({cand['error']})"
    failing = [q for q in cand["requirements"] if not q["holds"]]
    if not failing:
        shown = "; ".join(line_text(q) for q in cand["requirements"])
        return f"  {trial}: {label} -> meets the requirements" + (f" ({shown})" if shown else "")
    return (f"  {trial}: {label} -> misses "
            + "; ".join(f"{q['text']} ({line_text(q)})" for q in failing))
