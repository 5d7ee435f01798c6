"""How far a configuration's outputs are from the reference: accumulated over samples, plain data out.

Used wherever configurations are scored (node sensitivity's runner and its shards, confirmation on real models).
"""

from __future__ import annotations

import numpy as np

from qcheck.data.readers import DataSet
from qcheck.measure.outputs import OutputMetrics, compare_outputs, metric_value
from qcheck.policy.metric_names import worst_of
from qcheck.policy.spec import MetricSpec


def sample_labels(data: DataSet, samples: list[int]) -> list[str]:
    """What task metrics call each sample (its file name; its index for data without names)."""
    named = getattr(data, "samples", None)
    return [named[i].label if named is not None else str(i) for i in samples]


class Score:
    """How far one configuration's outputs are from the reference, accumulated over samples: each model
    output, the policy's generic metrics (an output or a slice of one) and the task metrics given."""

    def __init__(self, outputs: list[str], metrics: dict[str, MetricSpec], tasks: list | None = None):
        self.compared = compare_outputs(outputs, metrics, tasks)

    def update(self, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], label: str) -> None:
        """One sample (batch dimension 1)."""
        self.compared.update(label, ref, got)

    def result(self) -> dict:
        out = summarize(self.compared)
        for task in self.compared.tasks:
            out[task.name] = task.result()["value"]
        return out


def summarize(compared: OutputMetrics) -> dict:
    """Worst-over-outputs cosine / SQNR / MSE, per-output cosine, and the policy's metrics."""
    results = {o: c.result() for o, c in compared.comparisons.items()}
    out = {m: worst_of(m, [r[m] for r in results.values()]) for m in ("cosine", "sqnr", "mse")}
    out["outputs"] = {o: r["cosine"] for o, r in results.items()}
    for m, (spec, cmp) in compared.user.items():
        out[m] = metric_value(cmp.result(), spec.metric)
    return out


def update_batch(score: Score, labels: list[str], outputs: list[str], ref: dict, got: dict) -> None:
    """A batch of samples (along dimension 0), one by one, so slices and per-sample figures mean what they say."""
    for b, label in enumerate(labels):
        score.update({o: ref[o][b:b + 1] for o in outputs}, {o: got[o][b:b + 1] for o in outputs}, label)
