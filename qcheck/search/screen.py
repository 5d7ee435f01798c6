"""Screening: judging a candidate on the grid emulation model instead of building it.

A real candidate is a QDQ model ORT builds and loads (seconds each on a model of a few hundred nodes). Most of
the candidates a search tries differ from the policy's recipe only in which tensors are quantized and on which
grid: a node kept in float (its weights and the grids only it uses switched off), int16 activations or a
widened range (other grids), a scheme with int16 activations. All of these are settings of ONE emulation
model (`analyses.switchable.build_switchable(grids=True)`): a switch mask and three grid tables, computed
from the recipe the candidate stands for (`recipe_config`). Settings that change the weights' quantization
(per-channel, reduced range, another weight type, float op types) cannot be expressed: such candidates are
built for real.

The emulation computes Q/DQ in float arithmetic; ORT's integer kernels round their intermediate results
differently, so a screened figure is close to, not equal to, the real model's (`tests/search/test_screen.py`
measures how close). It guides the search; the verdict only takes confirmed (really built) candidates.

Speed (a screened candidate should cost at most a float pass or two): a candidate runs from the cut before its
first difference from its reference (the policy's recipe, or the whole-model change the search builds on), fed
with the reference's values there, kept once per reference (`focus` adds a cut where the coming candidates
start). Its suffix has every switch fixed (`analyses.suffix.FixedSuffixes`): no If, weights constant again, an
8-bit grid as QuantizeLinear/DequantizeLinear, and ORT's basic optimizations only, so it computes bit for bit what
the full emulation model computes for the same setting (`tests/search/test_screen.py`). The samples (or batches)
run over the cores on threads.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qcheck.analyses.suffix import FixedSuffixes, first_readers
from qcheck.analyses.switchable import GRID_INPUTS, SWITCH_INPUT, SwitchableModel, build_switchable, stack
from qcheck.compute.shards import ThreadShards, byte_ranges, check_cancelled
from qcheck.model.runtime import make_session, ort_errors, usable_cores
from qcheck.quantize.calibrate import Ranges, Recipe, build_quantized
from qcheck.quantize.grids import GridCalculator
from qcheck.quantize.qdq import read_qdq

CUTS = (0.25, 0.5, 0.75, 0.9)  # suffix cuts, as fractions of the switches in graph order
# recipe fields a grid cannot express: they change the weights or which op types ORT quantizes
WEIGHT_FIELDS = ("weights", "per_channel", "reduce_range", "exclude_op_types")


@dataclass
class Config:
    """One setting of the grid emulation model."""

    mask: np.ndarray  # bool [K]
    scale: np.ndarray  # float32 [K]
    lo: np.ndarray
    hi: np.ndarray

    def feed(self) -> dict[str, np.ndarray]:
        return {SWITCH_INPUT: self.mask, **dict(zip(GRID_INPUTS, (self.scale, self.lo, self.hi)))}

    def key(self) -> bytes:
        return b"".join(a.tobytes() for a in (self.mask, self.scale, self.lo, self.hi))

    def differs(self, other: Config) -> np.ndarray:
        """Switches set differently in the two configurations."""
        return np.flatnonzero((self.mask != other.mask) | (self.scale != other.scale) | (self.lo != other.lo) |
                              (self.hi != other.hi))


def build_grid_model(float_path: Path, float_model: onnx.ModelProto, ranges: Ranges, recipe: Recipe,
                     work: Path) -> SwitchableModel:
    path = build_quantized(float_path, ranges, recipe, work / "screening-qdq.onnx", keep_removable_activations=True)
    try:
        qdq = onnx.load(str(path))
    finally:
        path.unlink(missing_ok=True)
    return build_switchable(qdq, float_model, read_qdq(qdq, float_model), grids=True)


@dataclass
class _Reference:
    """A reference setting's values, per batch of samples: its model outputs and the tensors at the cuts."""

    key: bytes
    cuts: list[int]
    outputs: list[dict[str, np.ndarray]]
    values: list[dict[str, np.ndarray]]


def inline_settings(sw: SwitchableModel, cfg: Config) -> dict[int, dict[str, float]]:
    """The switches `cfg` turns on, fixed for `analyses.suffix.specialize`: an activation's grid as constants."""
    return {k: ({f"{t}::{k}": float(v[k]) for t, v in zip(GRID_INPUTS, (cfg.scale, cfg.lo, cfg.hi))}
                if sw.kinds[k] == "activation" else {})
            for k in np.flatnonzero(cfg.mask).tolist()}


@dataclass
class Candidate:
    """One screened candidate as a worker runs it: from node `cut` on, the switches `placed` set anew."""

    cut: int
    inline: dict[int, dict[str, float]]  # inline_settings of its setting
    placed: tuple[int, ...]  # the switches it sets differently from its reference
    mask: np.ndarray

    @property
    def key(self) -> bytes:
        """What its suffix session depends on (not the values it is fed): kept between a race's stages by it."""
        return self.mask.tobytes() + repr((self.cut, self.placed, sorted(self.inline.items()))).encode()


@dataclass
class ScreenGroup:
    """What every candidate screened against one reference reads: shared once per reference (and per batch range,
    `Screener.run_many`). Pickled, it leaves its prepared suffix builder behind: a worker prepares its own once."""

    model: onnx.ModelProto  # the grid emulation model
    feeds: list[dict[str, np.ndarray]]  # per batch: the model inputs
    values: list[dict[str, np.ndarray]]  # per batch: the reference's values at the cuts
    ref_outputs: list[dict[str, np.ndarray]]  # per batch: the reference's model outputs
    outputs: list[str]
    batched: bool
    threads: int  # intra-op threads of each candidate's session
    suffixes: FixedSuffixes | None = None
    # by Candidate.key: the suffix sessions of candidates whose next stage of a race is coming (`Screener.run_many`,
    # `keep`); this process only (a pool's worker builds its session again)
    sessions: dict | None = None

    def fixed(self) -> FixedSuffixes:
        if self.suffixes is None:
            self.suffixes = FixedSuffixes(self.model)
        return self.suffixes

    def __getstate__(self) -> dict:
        return {**self.__dict__, "suffixes": None, "sessions": None}

    def batch_range(self, lo: int, hi: int) -> ScreenGroup:
        return ScreenGroup(self.model, self.feeds[lo:hi], self.values[lo:hi], self.ref_outputs[lo:hi], self.outputs,
                           self.batched, self.threads, self.suffixes, self.sessions)

    def session(self, item: Candidate):
        """`item`'s suffix and its session: kept from an earlier stage of its race, else built (and kept when the
        group keeps sessions)."""
        if self.sessions is not None and item.key in self.sessions:
            return self.sessions[item.key]
        values = self.values[0] if item.cut else {}
        suffix = self.fixed().build(item.cut, item.inline, set(item.placed), {**self.feeds[0], **values}, self.batched)
        made = suffix, make_session(suffix.model, "screening suffix", threads=self.threads, quiet=True, basic=True)
        if self.sessions is not None:
            self.sessions[item.key] = made
        return made

    def batch_bytes(self, b: int) -> int:
        return sum(v.nbytes for d in (self.feeds[b], self.values[b], self.ref_outputs[b]) for v in d.values())


def group_bytes(group: ScreenGroup) -> int:
    return group.model.ByteSize() + sum(group.batch_bytes(b) for b in range(len(group.feeds)))


def suffix_outputs(group: ScreenGroup, item: Candidate, mapper=map) -> list[dict[str, np.ndarray]]:
    """Per batch of `group`, the model outputs of the candidate `item`: its suffix (every switch fixed) run from its
    cut on the reference's values there. `mapper` spreads the batches (threads of this process) or not (a shard).
    One screening and its shards both call it, so where a candidate runs cannot change its figures."""
    values = group.values if item.cut else [{} for _ in group.feeds]
    suffix, session = group.session(item)
    mask = {SWITCH_INPUT: item.mask}

    def one(b: int) -> dict[str, np.ndarray]:
        inputs = {n: values[b][n] if n in values[b] else group.feeds[b][n] for n in suffix.inputs}
        got = dict(zip(suffix.outputs, session.run(suffix.outputs, {**inputs, **mask})))
        return {o: got[o] if o in got else group.ref_outputs[b][o] for o in group.outputs}

    return list(mapper(one, range(len(group.feeds))))


def screen_shard(group: ScreenGroup, items: list[Candidate]) -> list:
    """A shard of candidates (qcheck.compute.shards): per candidate its outputs per batch, or the text of the error
    ONNX Runtime refused it with (recorded as a failed candidate, as a build error is)."""
    from qcheck.search.evaluate import candidate_errors, error_text

    out: list = []
    for item in items:
        check_cancelled()
        try:
            out.append(suffix_outputs(group, item))
        except candidate_errors() as exc:
            out.append(error_text(exc))
    return out


class Screener:
    """Runs recipes on the grid emulation model over the evaluation samples: per sample, the model outputs.
    `workers`: threads the samples run on (default: the usable cores)."""

    def __init__(self, sw: SwitchableModel, float_path: Path, ranges_for, base: Recipe, samples: list[dict],
                 workers: int | None = None):
        self.sw, self.float_path, self.ranges_for, self.base = sw, float_path, ranges_for, base
        self.samples = samples
        self.calculators: dict[tuple, GridCalculator] = {}
        self.base_config = Config(sw.mask(default=True), sw.grids.scale, sw.grids.lo, sw.grids.hi)
        self.outputs = [o.name for o in sw.model.graph.output]
        self.suffixes = FixedSuffixes(sw.model)
        self.workers = max(1, workers or usable_cores())
        self._full_session = None  # see session
        self.batch = self._batch_size()
        self.batches = [list(range(i, min(i + self.batch, len(samples)))) for i in range(0, len(samples), self.batch)]
        self.feeds = [stack([samples[i] for i in chunk]) if self.batch > 1 else samples[chunk[0]]
                      for chunk in self.batches]
        self.first = first_readers(sw.model, len(sw.switches))
        self.cuts = self._cuts()
        self._pool: ThreadPoolExecutor | None = None
        self._reference: _Reference | None = None  # the reference's outputs and values at every cut, per batch
        self._focus_cut: int | None = None  # see focus()
        self._sessions: dict = {}  # ScreenGroup.sessions: candidates whose race goes on (run's `keep`)
        self.runs = 0  # forward passes of a batch (full or suffix)
        self.node_runs = 0.0  # the same, weighted by the share of the graph's nodes each ran
        self.seconds = 0.0  # spent running (and setting up suffixes)
        self.group_ranges = 0  # shard groups sent to a pool's workers (more than the references: memory_mb split)
        self.over_memory = False  # one batch's data alone exceeded memory_mb (it was sent anyway)

    # ------------------------------------------------------------------ recipes -> settings

    def screenable(self, recipe: Recipe) -> bool:
        """Whether a grid setting can express `recipe` (it leaves the weights' quantization as it is)."""
        acts = {t for t, kind in zip(self.sw.switches, self.sw.kinds) if kind == "activation"}
        weights = {t for t in set(recipe.overrides) | set(self.base.overrides) if t not in acts}
        return (all(getattr(recipe, f) == getattr(self.base, f) for f in WEIGHT_FIELDS)
                and all(recipe.overrides.get(t) == self.base.overrides.get(t) for t in weights))

    def config(self, recipe: Recipe) -> Config | None:
        """The setting that emulates `recipe`; None when the recipe changes what a grid cannot express."""
        if not self.screenable(recipe):
            return None
        sw, cfg = self.sw, Config(self.sw.keep_float(recipe.exclude_nodes), *(a.copy() for a in (
            self.sw.grids.scale, self.sw.grids.lo, self.sw.grids.hi)))
        global_change = any(getattr(recipe, f) != getattr(self.base, f)
                            for f in ("activations", "symmetric_activations", "calibration"))
        changed = {t for t in set(recipe.overrides) | set(self.base.overrides)
                   if recipe.overrides.get(t) != self.base.overrides.get(t)}
        if not global_change and not changed:
            return cfg
        calc = self._calculator(recipe)
        shared = {sw.grids.shared[k] for k, t in enumerate(sw.switches) if t in changed}
        for k, t in enumerate(sw.switches):
            if sw.kinds[k] != "activation" or not (global_change or t in changed or sw.grids.shared[k] in shared):
                continue
            # a tensor on a scale it shares with a changed one takes the changed tensor's grid, as ORT shares it
            source = t if global_change or t in changed else next(
                s for j, s in enumerate(sw.switches) if s in changed and sw.grids.shared[j] == sw.grids.shared[k])
            grid = calc.grid(source, recipe.overrides.get(source, {}))
            if grid is not None:
                cfg.scale[k], cfg.lo[k], cfg.hi[k] = grid.scale, grid.lo, grid.hi
        return cfg

    def _calculator(self, recipe: Recipe) -> GridCalculator:
        key = (recipe.activations, recipe.symmetric_activations, recipe.calibration)
        if key not in self.calculators:
            settings = Recipe(activations=recipe.activations, weights=self.base.weights,
                              per_channel=self.base.per_channel, calibration=recipe.calibration,
                              symmetric_activations=recipe.symmetric_activations, reduce_range=self.base.reduce_range,
                              exclude_op_types=list(self.base.exclude_op_types))
            self.calculators[key] = GridCalculator(self.float_path, self.ranges_for(recipe.calibration), settings)
        return self.calculators[key]

    # ------------------------------------------------------------------ running

    def run(self, cfg: Config, reference: Config | None = None, batches: tuple[int, int] | None = None,
            keep: bool = False) -> list[dict[str, np.ndarray]]:
        """Per sample, the emulated model outputs. `reference`: a setting `cfg` differs from in a few switches
        (its values at the cuts are kept, so `cfg` runs from the cut before its first difference on).
        `batches`: only the batches lo..hi-1 of `self.batches` run (a stage of a race: the samples in them);
        `keep`: a later stage of the same candidate follows (its session is kept for it)."""
        clock = time.perf_counter()
        self._new_race(batches)
        try:
            return self._run(cfg, reference or self.base_config, batches or (0, len(self.feeds)), keep)
        finally:
            self.seconds += time.perf_counter() - clock

    def run_many(self, pairs: list[tuple[Config, Config]], shards=None, per_group: int | None = None,
                 memory_bytes: int | None = None, batches: tuple[int, int] | None = None,
                 keep: bool = False) -> list[list[dict[str, np.ndarray]] | str]:
        """`run` for each (setting, reference) pair, as shards on `shards` (qcheck.compute.shards; default: threads of
        this process): one shard group per reference, whose values at the cuts go to the workers once (in ranges of
        batches of at most `memory_bytes` each), its candidates split into `per_group` shards (default: the pool's
        workers). Per pair: the outputs per sample, or the text of the error ONNX Runtime refused it with.
        `batches`, `keep`: as in `run`."""
        clock = time.perf_counter()
        self._new_race(batches)
        shards = shards or ThreadShards(self.workers)
        results: list = [None] * len(pairs)
        by_reference: dict[bytes, list[int]] = {}
        for i, (_, reference) in enumerate(pairs):
            by_reference.setdefault(reference.key(), []).append(i)
        try:
            for members in by_reference.values():
                got = self._run_group([pairs[i] for i in members], shards, per_group, memory_bytes,
                                      batches or (0, len(self.feeds)), keep)
                for i, result in zip(members, got):
                    results[i] = result
        finally:
            self.seconds += time.perf_counter() - clock
        return results

    def release(self) -> None:
        """A race is over: the sessions kept for its next stages go."""
        self._sessions.clear()

    def _new_race(self, batches: tuple[int, int] | None) -> None:
        """A run from the first batch starts anew: no session of an earlier race is kept."""
        if not batches or batches[0] == 0:
            self._sessions.clear()

    def _run_group(self, pairs: list[tuple[Config, Config]], shards, per_group: int | None,
                   memory_bytes: int | None, batches: tuple[int, int], keep: bool) -> list:
        """One reference's candidates (`run_many`)."""
        from qcheck.search.evaluate import candidate_errors, error_text

        reference = pairs[0][1]
        try:
            ref = self._reference_values(reference)
        except candidate_errors() as exc:  # what ORT refuses in the reference, it refuses in every candidate on it
            return [error_text(exc)] * len(pairs)
        results: list = [None] * len(pairs)
        items: dict[int, Candidate] = {}
        for j, (cfg, _) in enumerate(pairs):
            item = self._item(cfg, reference, ref)
            if item is None:
                results[j] = self._per_sample(ref.outputs[slice(*batches)], batches[0])
            else:
                items[j] = item
        if not items:
            return results
        # one intra-op thread per session in a pool's worker, as on this process's threads over the cores
        threads = 1 if self.workers > 1 or shards.kind != "threads" else 0
        group = self._group(ref, threads, batches, keep)
        todo = list(items)
        n = min(per_group or shards.workers, len(todo))
        parts = [todo[w::n] for w in range(n)]  # interleaved: neighbouring candidates cost alike
        per_batch: dict[int, list] = {j: [] for j in todo}
        failed: dict[int, str] = {}
        for lo, hi in self._batch_ranges(group, shards, memory_bytes):
            sub = group.batch_range(lo, hi)
            handle = shards.share(sub, group_bytes(sub) if shards.kind != "threads" else 0)
            try:
                got = shards.map(screen_shard, handle, [[items[j] for j in part] for part in parts])
            finally:
                shards.release(handle)
            for part, outcomes in zip(parts, got):
                for j, outcome in zip(part, outcomes):
                    if isinstance(outcome, str):
                        failed.setdefault(j, outcome)
                    else:
                        per_batch[j] += outcome
        for j in todo:
            results[j] = failed[j] if j in failed else self._per_sample(per_batch[j], batches[0])
            for _ in per_batch[j]:
                self._count(items[j].cut)
            if not keep or j in failed:
                self._sessions.pop(items[j].key, None)
        return results

    def _group(self, ref: _Reference, threads: int, batches: tuple[int, int], keep: bool) -> ScreenGroup:
        """The shard group of a reference's candidates, on the batches lo..hi-1: a stage that keeps sessions, or
        follows one that did, shares them."""
        lo, hi = batches
        return ScreenGroup(self.sw.model, self.feeds[lo:hi], ref.values[lo:hi], ref.outputs[lo:hi], self.outputs,
                           self.batch > 1, threads, self.suffixes, self._sessions if keep or self._sessions else None)

    def _batch_ranges(self, group: ScreenGroup, shards, memory_bytes: int | None) -> list[tuple[int, int]]:
        """The batches in consecutive ranges whose data (with the model) stay within `memory_bytes`: what one shard
        group sends its workers. Threads share the data as they are: one range."""
        n = len(group.feeds)
        if shards.kind == "threads" or not memory_bytes:
            return [(0, n)]
        room = memory_bytes - group.model.ByteSize()
        sizes = [group.batch_bytes(b) for b in range(n)]
        ranges = byte_ranges(sizes, room)
        self.over_memory |= max(sizes) > room  # one batch alone exceeds it: sent anyway, and said
        self.group_ranges += len(ranges)
        return ranges

    def focus(self, reference: Config, variable: set[int]) -> None:
        """Candidates that differ from `reference` only in the switches `variable` are coming: keep the reference's
        values at the first node that reads one of them, so each such candidate runs from there on."""
        self._focus_cut = min((self.first[k] for k in variable), default=None)
        if self._focus_cut is not None and self._reference is not None and self._reference.key == reference.key() \
                and self._focus_cut not in self._reference.cuts:
            self._reference = None  # computed again with the new cut, when first needed

    def _run(self, cfg: Config, reference: Config, batches: tuple[int, int], keep: bool) -> list[dict[str, np.ndarray]]:
        ref = self._reference_values(reference)
        item = self._item(cfg, reference, ref)
        if item is None:
            return self._per_sample(ref.outputs[slice(*batches)], batches[0])
        group = self._group(ref, 1 if self.workers > 1 else 0, batches, keep)
        try:
            per_batch = suffix_outputs(group, item, self._map)
        finally:
            if not keep:
                self._sessions.pop(item.key, None)
        for _ in per_batch:
            self._count(item.cut)
        return self._per_sample(per_batch, batches[0])

    def _item(self, cfg: Config, reference: Config, ref: _Reference) -> Candidate | None:
        """What a screening worker needs to run `cfg` from its reference's values (None: `cfg` is the reference)."""
        diff = cfg.differs(reference)
        if not len(diff):
            return None
        start = min(self.first[k] for k in diff)
        cut = max((c for c in ref.cuts if c <= start), default=0)
        return Candidate(cut, inline_settings(self.sw, cfg), tuple(diff.tolist()), cfg.mask)

    def _session(self, model: onnx.ModelProto, what: str):
        """A session for one setting: ORT's basic optimizations only (what the nodes say, bit for bit: the values
        the full emulation model computes), one thread each when the samples run over the cores."""
        return make_session(model, what, threads=1 if self.workers > 1 else 0, quiet=True, basic=True)

    def _map(self, fn, items) -> list:
        """fn over items, in order, on `workers` threads (ORT releases the GIL while it runs)."""
        items = list(items)
        if self.workers == 1 or len(items) == 1:
            return [fn(i) for i in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="qcheck-screen")
        return list(self._pool.map(fn, items))

    def _per_sample(self, per_batch: list[dict], first: int = 0) -> list[dict[str, np.ndarray]]:
        """Per sample, the outputs of the batches first, first + 1, ... given."""
        return [{o: out[o][i:i + 1] if self.batch > 1 else out[o] for o in self.outputs}
                for out, chunk in zip(per_batch, self.batches[first:]) for i in range(len(chunk))]

    def _count(self, cut: int) -> None:
        n = len(self.sw.model.graph.node)
        self.runs += 1
        self.node_runs += (n - cut) / n

    def _cuts(self) -> list[int]:
        firsts = sorted({f for f in self.first if f < len(self.sw.model.graph.node)})
        return sorted({firsts[int(len(firsts) * q)] for q in CUTS if firsts and int(len(firsts) * q) > 0})

    def _reference_values(self, reference: Config) -> _Reference:
        """The reference's model outputs and, per batch, every tensor a candidate's suffix from a cut may read
        (one run of the reference, every switch fixed, per batch)."""
        key = reference.key()
        if self._reference is not None and self._reference.key == key:
            return self._reference
        self._reference = None  # one reference kept: memory does not grow with the references a search moves to
        cuts = sorted(set(self.cuts) | ({self._focus_cut} if self._focus_cut else set()))
        inline = inline_settings(self.sw, reference)
        names: set[str] = set()
        for c in cuts:
            later = {k for k, f in enumerate(self.first) if f >= c}  # what a candidate cut there may change
            for placed in (set(), later):
                names |= set(self.suffixes.build(c, inline, placed).inputs)
        names -= set(self.feeds[0]) | {SWITCH_INPUT}
        full = self.suffixes.build(0, inline, set(), self.feeds[0], self.batch > 1, extra_outputs=sorted(names))
        session = self._session(full.model, "screening reference")
        mask = {SWITCH_INPUT: reference.mask}

        def one(b: int) -> dict[str, np.ndarray]:
            inputs = {n: self.feeds[b][n] for n in full.inputs}
            return dict(zip(full.outputs, session.run(full.outputs, {**inputs, **mask})))

        got = self._map(one, range(len(self.feeds)))
        for _ in got:
            self._count(0)
        self._reference = _Reference(key, cuts, [{o: g[o] for o in self.outputs} for g in got],
                                     [{n: g[n] for n in names if n in g} for g in got])
        return self._reference

    @property
    def session(self):
        """A session on the full emulation model (every switch an If, the grids fed): the straightforward way to run
        a setting, which the fast path must agree with (`tests/search/test_screen.py`)."""
        if self._full_session is None:
            self._full_session = self.sw.session(batched=self.batch > 1)
        return self._full_session

    def _batch_size(self) -> int:
        """Samples per run: 8 when the model takes a batch and gives each sample's values, else 1. Probed on the
        policy's recipe with every switch fixed (no If: cheap to load and run)."""
        first = self.samples[0]
        n = min(8, len(self.samples))
        if n < 2 or any(v.shape[0] != 1 for v in first.values()):
            return 1
        inline, mask = inline_settings(self.sw, self.base_config), {SWITCH_INPUT: self.base_config.mask}
        try:
            single = self._session(self.suffixes.build(0, inline, set(), first).model, "screening probe")
            batched = self._session(self.suffixes.build(0, inline, set(), first, batched=True).model,
                                    "screening probe")
            together = batched.run(None, {**stack(self.samples[:n]), **mask})
            apart = [single.run(None, {**s, **mask}) for s in self.samples[:n]]
        except ort_errors():  # ORT refuses a batch this model cannot take: one sample at a time
            return 1
        for o, value in enumerate(together):
            expect = np.concatenate([a[o] for a in apart], axis=0)
            if value.shape != expect.shape or not np.allclose(value, expect, rtol=1e-4,
                                                              atol=1e-5 * (np.abs(expect).max() + 1)):
                return 1
        return n
