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

Speed: a candidate that differs from its reference (the policy's recipe, or the whole-model change the search
builds on) only from some node on runs on a *suffix* of the emulation model (`analyses.suffix.specialize`) fed
with the reference's values at the cut, kept once per reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qcheck.analyses.suffix import first_readers, specialize, typed
from qcheck.analyses.switchable import GRID_INPUTS, SWITCH_INPUT, SwitchableModel, build_switchable, stack
from qcheck.model.runtime import make_session, ort_errors
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


class Screener:
    """Runs recipes on the grid emulation model over the evaluation samples: per sample, the model outputs."""

    def __init__(self, sw: SwitchableModel, float_path: Path, ranges_for, base: Recipe, samples: list[dict]):
        self.sw, self.float_path, self.ranges_for, self.base = sw, float_path, ranges_for, base
        self.samples = samples
        self.calculators: dict[tuple, GridCalculator] = {}
        self.base_config = Config(sw.mask(default=True), sw.grids.scale, sw.grids.lo, sw.grids.hi)
        self.outputs = [o.name for o in sw.model.graph.output]
        self.session, self.batch = self._batched_session()
        self.batches = [list(range(i, min(i + self.batch, len(samples)))) for i in range(0, len(samples), self.batch)]
        self.feeds = [stack([samples[i] for i in chunk]) if self.batch > 1 else samples[chunk[0]]
                      for chunk in self.batches]
        self.first = first_readers(sw.model, len(sw.switches))
        self.cuts = self._cuts()
        self._suffix_sessions: dict[int, object] = {}
        self._reference: tuple[bytes, list[dict]] | None = None  # the reference's values at every cut, per batch
        self._cut_session = None
        self._focus: tuple | None = None  # see focus()
        self.runs = 0  # forward passes of a batch (full or suffix)
        self.node_runs = 0.0  # the same, weighted by the share of the graph's nodes each ran
        self.seconds = 0.0  # spent running (and setting up suffixes)

    # ------------------------------------------------------------------ recipes -> settings

    def screenable(self, recipe: Recipe) -> bool:
        """Whether a grid setting can express `recipe` (it leaves the weights' quantization as it is)."""
        return all(getattr(recipe, f) == getattr(self.base, f) for f in WEIGHT_FIELDS)

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

    def run(self, cfg: Config, reference: Config | None = None) -> list[dict[str, np.ndarray]]:
        """Per sample, the emulated model outputs. `reference`: a setting `cfg` differs from in a few switches
        (its values at the cuts are kept, so `cfg` runs from the cut before its first difference on)."""
        clock = time.perf_counter()
        try:
            return self._run(cfg, reference or self.base_config)
        finally:
            self.seconds += time.perf_counter() - clock

    def focus(self, reference: Config, variable: set[int]) -> None:
        """Prepare a session for candidates that differ from `reference` only in the switches `variable`: the
        suffix from the first of them on, every other switch fixed as the reference sets it (quantized ones
        inlined, so their weights are constants again). `run` uses it for every such candidate."""
        self._focus = None
        if not variable:
            return
        sw, cut = self.sw, min(self.first[k] for k in variable)
        inline = {k: ({f"{t}::{k}": float(v[k]) for t, v in zip(GRID_INPUTS, (reference.scale, reference.lo,
                                                                             reference.hi))}
                      if sw.kinds[k] == "activation" else {})
                  for k in range(len(sw.switches)) if k not in variable and reference.mask[k]}
        suffix = specialize(sw.model, set(variable), cut, inline)
        needed = [n for n in suffix.inputs if n not in self.feeds[0] and n not in GRID_INPUTS]
        values = [{} for _ in self.feeds]
        if needed:
            names = self.outputs + [n for n in needed if n not in self.outputs]
            session = self.sw.session(extra_outputs=names, batched=self.batch > 1)
            for b, feed in enumerate(self.feeds):
                values[b] = dict(zip(names, session.run(names, {**feed, **reference.feed()})))
                self._count(0)
        else:
            values = [dict(zip(self.outputs, self.session.run(None, {**feed, **reference.feed()})))
                      for feed in self.feeds]
        session = make_session(typed(suffix, {**self.feeds[0], **values[0]}, self.batch > 1),
                               "focused screening model", quiet=True)
        self._focus = (reference.key(), set(variable), suffix, session, values, cut)

    def _focused(self, cfg: Config, reference: Config, diff: np.ndarray) -> list[dict] | None:
        if self._focus is None:
            return None
        key, variable, suffix, session, values, cut = self._focus
        if key != reference.key() or not set(diff.tolist()) <= variable:
            return None
        declared = {i.name for i in suffix.model.graph.input}
        settings = {n: v for n, v in cfg.feed().items() if n in declared}
        out = []
        for b, feed in enumerate(self.feeds):
            inputs = {n: values[b][n] if n in values[b] else feed[n] for n in suffix.inputs if n not in GRID_INPUTS}
            got = dict(zip(suffix.outputs, session.run(suffix.outputs, {**inputs, **settings})))
            out.append({o: got.get(o, values[b][o]) for o in self.outputs})
            self._count(cut)
        return out

    def _run(self, cfg: Config, reference: Config) -> list[dict[str, np.ndarray]]:
        diff = cfg.differs(reference)
        per_batch = self._focused(cfg, reference, diff)
        if per_batch is not None:
            return self._per_sample(per_batch)
        start = min((self.first[k] for k in diff), default=len(self.sw.model.graph.node))
        cut = max((c for c in self.cuts if c <= start), default=None)
        per_batch = []
        if cut is None:
            for feed in self.feeds:
                per_batch.append(dict(zip(self.outputs, self.session.run(None, {**feed, **cfg.feed()}))))
                self._count(0)
        else:
            values = self._reference_values(reference)
            suffix, session = self._suffix(cut, values[0])
            for b, feed in enumerate(self.feeds):
                inputs = {n: values[b][n] if n in values[b] else feed[n] for n in suffix.inputs
                          if n not in GRID_INPUTS}
                got = dict(zip(suffix.outputs, session.run(suffix.outputs, {**inputs, **cfg.feed()})))
                per_batch.append({o: got.get(o, values[b][o]) for o in self.outputs})
                self._count(cut)
        return self._per_sample(per_batch)

    def _per_sample(self, per_batch: list[dict]) -> list[dict[str, np.ndarray]]:
        return [{o: out[o][i:i + 1] if self.batch > 1 else out[o] for o in self.outputs}
                for out, chunk in zip(per_batch, self.batches) for i in range(len(chunk))]

    def _count(self, cut: int) -> None:
        n = len(self.sw.model.graph.node)
        self.runs += 1
        self.node_runs += (n - cut) / n

    def _cuts(self) -> list[int]:
        firsts = sorted({f for f in self.first if f < len(self.sw.model.graph.node)})
        return sorted({firsts[int(len(firsts) * q)] for q in CUTS if firsts and int(len(firsts) * q) > 0})

    def _suffixes(self):
        return {c: specialize(self.sw.model, set(range(len(self.sw.switches))), c) for c in self.cuts}

    def _reference_values(self, reference: Config) -> list[dict]:
        """The reference's model outputs and its tensors at every cut, per batch (one full run per batch)."""
        key = reference.key()
        if self._reference is None or self._reference[0] != key:
            if self._cut_session is None:
                self._suffix_models = self._suffixes()
                names = sorted({n for s in self._suffix_models.values() for n in s.inputs
                                if n not in self.feeds[0] and n not in GRID_INPUTS and n != SWITCH_INPUT})
                self._cut_names = self.outputs + [n for n in names if n not in self.outputs]
                self._cut_session = self.sw.session(extra_outputs=self._cut_names, batched=self.batch > 1)
            values = []
            for feed in self.feeds:
                values.append(dict(zip(self._cut_names, self._cut_session.run(self._cut_names,
                                                                               {**feed, **reference.feed()}))))
                self._count(0)
            self._reference = (key, values)
        return self._reference[1]

    def _suffix(self, cut: int, values: dict):
        suffix = self._suffix_models[cut]
        if cut not in self._suffix_sessions:
            typed_values = {**self.feeds[0], **values}
            self._suffix_sessions[cut] = make_session(typed(suffix, typed_values, self.batch > 1),
                                                      "suffix of the screening model", quiet=True)
        return suffix, self._suffix_sessions[cut]

    def _batched_session(self):
        """A session over batches of samples when the model takes them and gives the same values, else one by one."""
        single = self.sw.session()
        first = self.samples[0]
        n = min(8, len(self.samples))
        if n < 2 or any(v.shape[0] != 1 for v in first.values()):
            return single, 1
        feed = {**self.base_config.feed()}
        try:
            batched = self.sw.session(batched=True, quiet=True)
            together = batched.run(None, {**stack(self.samples[:n]), **feed})
            apart = [single.run(None, {**s, **feed}) for s in self.samples[:n]]
        except ort_errors():  # ORT refuses a batch this model cannot take: one sample at a time
            return single, 1
        for o, value in enumerate(together):
            expect = np.concatenate([a[o] for a in apart], axis=0)
            if value.shape != expect.shape or not np.allclose(value, expect, rtol=1e-4,
                                                              atol=1e-5 * (np.abs(expect).max() + 1)):
                return single, 1
        return batched, n
