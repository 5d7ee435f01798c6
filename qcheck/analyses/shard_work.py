"""One shard of node sensitivity: a group's suffix session run over some of the group's configurations.

A *group* (`qcheck.analyses.suffix.plan`) is configurations that share one suffix of the switchable model and
the float activations at its cut; it is the unit the data are shared for (`qcheck.compute.shards`: once per
group, in the object store or a file). A *shard* is some of the group's configurations (their masks); it
builds its own single-threaded session on the suffix, runs every batch with every switch off (the
reference) and with each mask, and returns each configuration's score as plain data. Threads of this
process, a local process pool and Ray all call `run_shard`, so where a shard runs does not change a number.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import onnx

from qcheck.analyses.activation_store import ActivationStore
from qcheck.analyses.score import Score, update_batch
from qcheck.analyses.switchable import SWITCH_INPUT
from qcheck.compute.shards import check_cancelled
from qcheck.errors import first_line
from qcheck.model.runtime import make_session, ort_errors
from qcheck.policy.spec import MetricSpec


class BatchValues:
    """Per batch, the values a group's suffix reads (model inputs, float activations at the cut) and the model
    outputs it does not compute. In this process they are read from the store when asked for; pickled (to a
    worker process, to Ray's object store) they are read once, all batches, and travel as arrays."""

    def __init__(self, store: ActivationStore, feeds: list[dict], names: list[str]):
        self.store, self.feeds, self.names = store, feeds, names

    def __len__(self) -> int:
        return len(self.feeds)

    def __getitem__(self, b: int) -> dict[str, np.ndarray]:
        stored = [n for n in self.names if n not in self.feeds[b]]
        return {**{n: self.feeds[b][n] for n in self.names if n in self.feeds[b]}, **self.store.get(b, stored)}

    def nbytes(self) -> int:
        return sum(self.batch_bytes(b) for b in range(len(self)))

    def batch_bytes(self, b: int) -> int:
        return sum(v.nbytes for v in self[b].values())

    def __reduce__(self):
        return list, ([self[b] for b in range(len(self))],)


class BatchRange:
    """Batches lo..hi-1 of a group's values: what one part of a group too large for analyses.memory_mb sends."""

    def __init__(self, values: BatchValues, lo: int, hi: int):
        self.values, self.lo, self.hi = values, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, b: int) -> dict[str, np.ndarray]:
        return self.values[self.lo + b]

    def nbytes(self) -> int:
        return sum(v.nbytes for b in range(len(self)) for v in self[b].values())

    def __reduce__(self):
        return list, ([self[b] for b in range(len(self))],)


@dataclass
class ShardPart:
    """A shard's configurations over one range of the group's batches: the scores so far come in (None: the first
    range) and go out (not the last range), so a split group accumulates every sample in the order it would whole."""

    masks: list[np.ndarray]
    scores: list[Score] | None = None
    last: bool = True


@dataclass
class GroupWork:
    """What every shard of one group reads: shared once per group."""

    model: onnx.ModelProto  # the group's suffix, its inputs typed
    threads: int  # intra-op threads of each shard's session
    values: BatchValues | BatchRange | list[dict]  # per batch: see BatchValues
    inputs: list[str]  # what the suffix reads besides the switches
    suffix_outputs: list[str]  # the model outputs the suffix computes
    outputs: list[str]  # every model output, in the model's order
    labels: list[list[str]]  # per batch, its samples' labels (task metrics name samples)
    metrics: dict[str, MetricSpec]
    tasks: list  # fresh task-metric accumulators, copied for every configuration
    off: np.ndarray  # the all-off mask: the reference

    def nbytes(self) -> int:
        values = self.values.nbytes() if isinstance(self.values, (BatchValues, BatchRange)) else sum(
            v.nbytes for batch in self.values for v in batch.values())
        return values + self.model.ByteSize()


def run_shard(work: GroupWork, shard: list[np.ndarray] | ShardPart) -> dict:
    """{"results": one score per mask, "runs": forward passes, "seconds": the shard's time in its worker,
    "session_seconds": of which building its session}; {"refused": why} when ONNX Runtime refuses the suffix
    (the caller then runs the group on the full switchable model). A ShardPart that is not the last range of its
    group returns {"scores": the scores so far} instead of results."""
    part = shard if isinstance(shard, ShardPart) else ShardPart(shard)
    masks = part.masks
    start = time.perf_counter()
    try:
        session = make_session(work.model, "suffix emulation model", threads=work.threads, quiet=True)
    except ort_errors() as exc:  # slower, not wrong: the caller notes it
        return {"refused": first_line(exc)}
    built = time.perf_counter() - start
    scores = part.scores or [Score(work.outputs, work.metrics, copy.deepcopy(work.tasks)) for _ in masks]
    for b, labels in enumerate(work.labels):
        values = work.values[b]
        feed = {n: values[n] for n in work.inputs}

        def run(mask, values=values, feed=feed):
            got = session.run(work.suffix_outputs, {**feed, SWITCH_INPUT: mask})
            return {**{o: values[o] for o in work.outputs}, **dict(zip(work.suffix_outputs, got))}

        ref = run(work.off)
        for score, mask in zip(scores, masks):
            check_cancelled()
            update_batch(score, labels, work.outputs, ref, run(mask))
    done = {"results": [s.result() for s in scores]} if part.last else {"scores": scores}
    return {**done, "runs": len(work.labels) * (len(masks) + 1),
            "seconds": time.perf_counter() - start, "session_seconds": built}
