"""Node sensitivity on the switchable emulation model (a per-node analysis as in Horizon's PTQ debugger).

For each quantizable node, four views, each one boolean mask on the same
ONNX Runtime session:

- node:        only this node quantized (its input grids, weights and output grid);
- weight:      only this node's weights (and bias) quantized;
- activation:  only this node's activation grids quantized;
- reverse:     everything quantized except this node, as ORT builds it with the
               node excluded (`SwitchableModel.keep_float`): how much is recovered.

Each configuration is compared with the same session with every switch off,
so the only difference between reference and configuration is the
quantization the mask switches on (not float rounding from different kernel
fusions).

Configurations that switch on few pairs (node, weight, activation) run in
groups on suffix copies of the switchable model (`qcheck.analyses.suffix`), fed with
float activations computed once per batch (`qcheck.analyses.activation_store`). Each
group is split into shards (`qcheck.analyses.shard_work`), each with its own
single-threaded session, on threads of this process or, when the policy says so, a
local process pool or Ray (`qcheck.compute.shards`: the group's data shared once).
The others (reverse, all quantized) run on the full switchable model in this
process. Statistics accumulate in `measure.outputs.OutputMetrics`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcheck.analyses.activation_store import DEFAULT_BUDGET, ActivationStore
from qcheck.analyses.score import Score, sample_labels, update_batch
from qcheck.analyses.shard_work import BatchRange, BatchValues, GroupWork, ShardPart, run_shard
from qcheck.analyses.suffix import Group, Suffix, base_model, first_readers, plan, specialize, typed
from qcheck.analyses.switchable import SWITCH_INPUT, SwitchableModel, free_batch_dimension, stack
from qcheck.compute.shards import ThreadShards, byte_ranges
from qcheck.data.readers import DataSet
from qcheck.errors import first_line
from qcheck.model.runtime import make_session, ort_errors, usable_cores
from qcheck.policy.metric_names import output_metric, task_value
from qcheck.policy.spec import MetricSpec
from qcheck.policy.task_options import value_names

VIEWS = ("node", "weight", "activation", "reverse")
# A suffix session costs about as much to create as 20 runs of the float model: a group must
# have enough runs to pay it back.
RUNS_PER_GROUP = 48
MAX_GROUPS = 12
MAX_WORKERS = 4


@dataclass
class Config:
    """One quantize/don't-quantize configuration: a mask over the switches, and what it stands for."""

    label: str
    mask: np.ndarray


class ConfigRunner:
    """Runs masks over samples and compares each with the all-off run of the same session.

    Samples run in batches when the model allows it (a fully convolutional
    network does; one that reshapes to a fixed batch of 1 does not) and a batched
    run gives the values of the same samples run one by one: checked once. The
    choice never depends on a timing, so the same inputs give the same numbers
    on a busy machine and an idle one (results are a merge gate's evidence).
    """

    def __init__(self, sw: SwitchableModel, data: DataSet, samples: list[int], metrics: dict[str, MetricSpec],
                 max_batch: int = 8, activation_budget: int = DEFAULT_BUDGET,
                 make_tasks: Callable[[], list] | None = None, shards=None, shards_per_group: int | None = None):
        """`metrics`: the policy's metrics by name; `make_tasks`: fresh accumulators of the task metrics to
        score every configuration with (qcheck.measure.tasks), e.g. the one the nodes are ranked by.
        `shards`: where suffix groups' configurations run (qcheck.compute.shards; default: threads of this
        process), split into `shards_per_group` shards per group (default: the pool's workers)."""
        self.make_tasks = make_tasks or (list)
        self.labels = dict(zip(samples, sample_labels(data, samples)))
        self.sw, self.data, self.samples, self.metrics = sw, data, samples, metrics
        self.runs = 0
        self.float_runs = 0  # runs of the float base model (suffix groups' inputs)
        self.notes: list[str] = []  # what the runner could not do as planned (shown in the report)
        self.activation_budget = activation_budget
        self.activations: dict = {}  # the largest ActivationStore an evaluation kept (describe())
        # Suffix groups run on one single-threaded session per core, configurations in parallel: on small
        # tensors that beats one session splitting each operator over the cores (bench/bench_analyses.py).
        self.shards = shards or ThreadShards(max(1, min(MAX_WORKERS, usable_cores())))
        self.workers = self.shards.workers
        self.shard_time = {"seconds": 0.0, "session_seconds": 0.0}
        self.split_groups = 0  # suffix groups sent in parts (their data exceed analyses.memory_mb)
        self.over_memory = False
        self.shards_per_group = max(1, shards_per_group or self.workers)
        self.session, self.batch = self._batched_session(max_batch)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.batches = [samples[i:i + self.batch] for i in range(0, len(samples), self.batch)]
        self.feeds = [stack([data[i] for i in chunk]) for chunk in self.batches]
        self.first_readers = first_readers(sw.model, len(sw.switches))

    def _batched_session(self, max_batch: int):
        single = self.sw.session()
        n = min(max_batch, len(self.samples))
        first = self.data[self.samples[0]]
        if n < 2 or any(v.ndim == 0 or v.shape[0] != 1 for v in first.values()):  # a scalar input has no batch axis
            return single, 1
        try:  # a probe: ORT's errors are expected on some models, so it runs quietly and the outcome is noted
            batched = self.sw.session(batched=True, quiet=True)
            mask = self.sw.mask(default=True)
            chosen = [self.data[i] for i in self.samples[:n]]
            feed = stack(chosen)
            together = batched.run(None, {**feed, SWITCH_INPUT: mask})
            apart = [single.run(None, {**x, SWITCH_INPUT: mask}) for x in chosen]
        except ort_errors() as exc:  # ORT refuses a batch this model cannot take (a Reshape to batch 1, ...)
            self._note(f"samples ran one at a time: the model does not take a batch of {n} "
                       f"(ONNX Runtime: {_ort_reason(exc)}); the results are the same, only slower")
            return single, 1
        for o, value in enumerate(together):
            expect = np.concatenate([a[o] for a in apart], axis=0)
            if value.shape != expect.shape or not np.allclose(value, expect, rtol=1e-4, atol=1e-5 * (np.abs(expect).max() + 1)):
                self._note(f"samples ran one at a time: a batch of {n} gave other values than the same samples "
                           "one by one; the results are the same, only slower")
                return single, 1
        # Not chosen by timing: which one measures faster changes with the machine's load, and batched and
        # single runs differ in the last digits, so a timed choice made two runs of one policy disagree.
        return batched, n

    def run(self, feed: dict, mask: np.ndarray) -> list[np.ndarray]:
        self.runs += 1
        return self.session.run(None, {**feed, SWITCH_INPUT: mask})

    def groups(self, configs: list[Config]) -> list[Group]:
        """Which configurations run on which suffix (`qcheck.analyses.suffix`); all on the full model when few runs."""
        wide = max(16, len(self.sw.switches) // 50)
        narrow = sum(1 for c in configs if np.count_nonzero(c.mask) <= wide)
        n = min(MAX_GROUPS, narrow * len(self.batches) // RUNS_PER_GROUP)
        if n < 1:
            return [Group(0, set(), list(range(len(configs))), full=True)]
        return plan(self.first_readers, [c.mask for c in configs], n, wide)

    def evaluate(self, configs: list[Config], progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """Every configuration's score; suffix groups run as shards on `self.shards`, the rest in this process."""
        results: list[dict | None] = [None] * len(configs)
        total, done = len(self.batches) * len(configs), 0

        def tick(n: int) -> None:
            nonlocal done
            done += n * len(self.batches)
            if progress:
                progress(done, total)

        groups = self.groups(configs)
        suffixes = {i: specialize(self.sw.model, g.keep, g.cut) for i, g in enumerate(groups) if not g.full}
        with ActivationStore(self.activation_budget) as store:
            if suffixes and not self._keep_activations(suffixes, store):
                for g in groups:  # a model the specialization cannot handle: everything on the full model
                    g.full = True
            for i, group in enumerate(groups):
                got = None if group.full else self._sharded_group(suffixes[i], group.configs, configs, store, tick)
                if got is None:
                    got = self._full_group(group.configs, configs, tick)
                for c, result in zip(group.configs, got):
                    results[c] = result
        return results

    def _full_group(self, members: list[int], configs: list[Config], tick: Callable[[int], None]) -> list[dict]:
        """Configurations on the full switchable model, in this process, each against the all-off run."""
        scores = [Score(self.outputs, self.metrics, self.make_tasks()) for _ in members]
        for feed, chunk in zip(self.feeds, self.batches):
            ref = dict(zip(self.outputs, self.run(feed, self.sw.mask())))
            for score, c in zip(scores, members):
                update_batch(score, [self.labels[i] for i in chunk], self.outputs, ref,
                             dict(zip(self.outputs, self.run(feed, configs[c].mask))))
        tick(len(members))
        return [s.result() for s in scores]

    def _sharded_group(self, suffix: Suffix, members: list[int], configs: list[Config], store: ActivationStore,
                       tick: Callable[[int], None]) -> list[dict] | None:
        """A suffix group's configurations as shards (qcheck.analyses.shard_work) on `self.shards`, the group's
        data shared once; None (the caller runs it on the full model) when ONNX Runtime refuses the suffix."""
        names = self.outputs + [n for n in suffix.inputs if n not in self.outputs]
        values = BatchValues(store, self.feeds, names)
        labels = [[self.labels[i] for i in chunk] for chunk in self.batches]
        if not suffix.outputs:  # nothing the group switches on reaches an output: each is the reference itself
            scores = [Score(self.outputs, self.metrics, self.make_tasks()) for _ in members]
            for b in range(len(values)):
                for score in scores:
                    update_batch(score, labels[b], self.outputs, values[b], values[b])
            tick(len(members))
            return [s.result() for s in scores]
        n = min(self.shards_per_group, len(members))
        parts = [members[w::n] for w in range(n)]  # interleaved: neighbouring nodes cost alike
        # One intra-op thread whatever the pool: ORT's threaded kernels may split a sum differently, and a shard's
        # numbers must not depend on how many shards ran at once (measured on PP-OCRv4's recognizer).
        model = typed(suffix, values[0], self.batch > 1)
        ranges = self._batch_ranges(values, model)
        scores: list = [None] * n
        for r, (lo, hi) in enumerate(ranges):
            last = r == len(ranges) - 1
            work = GroupWork(model=model, threads=1, values=BatchRange(values, lo, hi) if len(ranges) > 1 else values,
                             inputs=suffix.inputs, suffix_outputs=suffix.outputs, outputs=self.outputs,
                             labels=labels[lo:hi], metrics=self.metrics, tasks=self.make_tasks(), off=self.sw.mask())
            handle = self.shards.share(work, work.nbytes() if self.shards.kind != "threads" else 0)
            try:
                got = self.shards.map(run_shard, handle, [ShardPart([configs[c].mask for c in part], scores[w], last)
                                                          for w, part in enumerate(parts)],
                                      done=(lambda w: tick(len(parts[w]))) if last else None)
            finally:
                self.shards.release(handle)
            refused = next((g["refused"] for g in got if "refused" in g), None)
            if refused is not None:  # as for the base model: slower, not wrong
                self._note(f"a suffix copy could not be built ({refused}); its configurations ran on the full "
                           "switchable model")
                return None
            scores = [g.get("scores") for g in got]
            self.runs += sum(g["runs"] for g in got)
            for key in ("seconds", "session_seconds"):  # what the shards cost inside their workers
                self.shard_time[key] += sum(g[key] for g in got)
        out: dict[int, dict] = {}
        for part, g in zip(parts, got):
            out.update(zip(part, g["results"]))
        return [out[c] for c in members]

    def _batch_ranges(self, values: BatchValues, model) -> list[tuple[int, int]]:
        """A group's batches in ranges whose data stay within analyses.memory_mb, each sent to the workers in turn
        (threads share the data as they are: one range)."""
        if self.shards.kind == "threads":
            return [(0, len(values))]
        room = self.activation_budget - model.ByteSize()
        sizes = [values.batch_bytes(b) for b in range(len(values))]
        ranges = byte_ranges(sizes, room)
        if len(ranges) > 1:
            self.split_groups += 1
        if max(sizes) > room and not self.over_memory:
            self.over_memory = True
            self._note(f"one batch of samples with its suffix's values ({max(sizes) >> 20} MB) exceeds "
                       f"analyses.memory_mb ({self.activation_budget >> 20} MB); it was sent to the workers whole")
        return ranges

    def _keep_activations(self, suffixes: dict[int, Suffix], store: ActivationStore) -> bool:
        """One float run per batch, keeping the tensors at every cut; False when the model does not allow it."""
        needed = sorted({n for s in suffixes.values() for n in s.inputs if n not in self.feeds[0]})
        wanted = self.outputs + [n for n in needed if n not in self.outputs]
        try:
            base = make_session(self._maybe_batched(base_model(self.sw.model, needed)), "float base model", quiet=True)
            for b, feed in enumerate(self.feeds):
                values = dict(zip(wanted, base.run(wanted, feed)))
                if not all(isinstance(v, np.ndarray) for v in values.values()):
                    raise NotAnArray("a tensor at a cut is not an array (a sequence or map)")
                store.put(b, values)
        except (*ort_errors(), NotAnArray) as exc:  # ORT refusing the float base model only costs speed
            self._note(f"suffix copies not used ({first_line(exc)}); "
                       "every configuration ran on the full switchable model")
            return False
        self.runs += len(self.feeds)
        self.float_runs += len(self.feeds)
        if store.bytes_in_memory + store.bytes_on_disk > sum(self.activations.get(k, 0) for k in
                                                             ("bytes_in_memory", "bytes_on_disk")):
            self.activations = store.describe()
        return True

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _maybe_batched(self, model):
        if self.batch > 1:
            free_batch_dimension(model)
        return model


class NotAnArray(TypeError):
    """A tensor at a cut is a sequence or a map: suffix copies cannot be fed with it."""


def _ort_reason(exc: Exception) -> str:
    """ORT's run error without its source path: "Reshape node 'r': The input tensor cannot be reshaped ..."."""
    text = first_line(exc)
    m = re.search(r"running (\w+) node\. Name:'([^']*)' Status Message: (?:\S+:\d+ .*? was false\. )?(.*)", text)
    return f"{m[1]} node '{m[2]}': {m[3]}" if m else text


def badness(result: dict, metric: str, metrics: dict[str, MetricSpec]) -> float:
    """A number that grows as the configuration gets worse, for ranking."""
    value = result.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -math.inf
    return -value if higher_is_better(metric, metrics) else value


def higher_is_better(metric: str, metrics: dict[str, MetricSpec]) -> bool:
    spec = metrics.get(metric)
    """Which way `metric` (a policy metric or an output metric name) is better; unknown names are errors."""
    if spec is not None and spec.task is not None:  # a task metric: its primary value decides
        known = task_value(value_names(spec.task, spec.options)[0])
    else:
        known = output_metric(spec.metric if spec is not None else metric)
    return known.higher_is_better if known else False


def node_sensitivity(runner: ConfigRunner, metric: str = "cosine", detail: int = 20,
                     progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Rank nodes by the damage quantizing each alone does; add the other views for the worst `detail`."""
    sw = runner.sw
    start = time.perf_counter()
    everything = runner.evaluate([Config("all", sw.mask(default=True))])[0]
    node_configs = [Config(n.node, sw.mask(on=n.all)) for n in sw.nodes]
    node_results = runner.evaluate(node_configs, progress=lambda i, n: progress and progress("sensitivity", i, n))
    ranked = sorted(range(len(sw.nodes)), key=lambda j: (-badness(node_results[j], metric, runner.metrics),
                                                          sw.nodes[j].order))
    rows = []
    for rank, j in enumerate(ranked):
        n = sw.nodes[j]
        rows.append({
            "rank": rank + 1, "node": n.node, "op_type": n.op_type, "order": n.order,
            "activations": [sw.switches[k] for k in n.activations],
            "weights": [sw.switches[k] for k in n.weights if sw.kinds[k] == "weight"],
            "views": {"node": node_results[j]},
        })
    # The detailed views for the worst nodes: which kind of quantization hurts, and what excluding it recovers.
    details: list[tuple[dict, str, Config]] = []
    by_name = {n.node: n for n in sw.nodes}
    for row in rows[:detail]:
        n = by_name[row["node"]]
        if n.weights:
            details.append((row, "weight", Config(n.node, sw.mask(on=n.weights))))
        if n.activations:
            details.append((row, "activation", Config(n.node, sw.mask(on=n.activations))))
        details.append((row, "reverse", Config(n.node, sw.keep_float({n.node}))))
    detail_results = runner.evaluate([c for _, _, c in details],
                                     progress=lambda i, n: progress and progress("sensitivity details", i, n))
    for (row, view, _), result in zip(details, detail_results):
        row["views"][view] = result
    for row in rows:
        rev = row["views"].get("reverse")
        row["recovered"] = (None if rev is None else _gain(everything, rev, metric, runner.metrics))
        row["dominant"] = _dominant(row["views"], metric, runner.metrics)
    return {
        "metric": metric,
        "samples": len(runner.samples),
        "reference": "the emulation model with every switch off (float)",
        "all_quantized": everything,
        "nodes": rows,
        "detail_nodes": min(detail, len(rows)),
        "configurations": 1 + len(node_configs) + len(details),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _gain(before: dict, after: dict, metric: str, metrics: dict) -> float | None:
    """How much better `after` is than `before` on `metric` (positive: better)."""
    a, b = badness(before, metric, metrics), badness(after, metric, metrics)
    if math.isinf(a) or math.isinf(b):
        return None
    return a - b


def _dominant(views: dict, metric: str, metrics: dict) -> str | None:
    """'weight' or 'activation': which kind of quantization of this node does more damage on its own."""
    w, a = views.get("weight"), views.get("activation")
    if w is None and a is None:
        return None
    if w is None:
        return "activation"
    if a is None:
        return "weight"
    return "weight" if badness(w, metric, metrics) > badness(a, metric, metrics) else "activation"
