"""Every value a `require:` line can name, recomputed on bootstrap resamples of the evaluation samples.

What a margin for sampling noise reads (`search.confidence`): a fix found on 32 samples should still hold on
samples it has not seen. A resample draws the samples with replacement (`tasks.base.bootstrap_weights`: seeded, the
same draws as the task metrics' intervals) and every value is recomputed from the drawn samples' own sums:

- an output comparison keeps, per sample, the sums its statistics are made of (`OutputComparison.sample_sums`):
  cosine, SQNR, MSE, mean error, top-k agreement are functions of their sums over the drawn samples, the largest
  error is the largest of the drawn samples';
- a task metric keeps its per-item components (F1 from the drawn items' tp, fp, fn, ...); an item is drawn as often
  as its sample.

All values of one resample come from the same draw, so a line that reads two values sees them together.
"""

from __future__ import annotations

import numpy as np

from qcheck.measure.outputs import SAMPLE_COLUMNS, OutputMetrics
from qcheck.measure.tasks.base import Stat, ratio, resampled
from qcheck.policy.metric_names import MODEL_METRIC_NAMES, OUTPUT_METRICS


def _col(a: np.ndarray, name: str) -> np.ndarray:
    return a[..., SAMPLE_COLUMNS.index(name)]


def _cosine(a: np.ndarray) -> np.ndarray:
    """`error_stats.cosine_from_error` on arrays of sums."""
    ff, qq, ee = _col(a, "sum_ff"), _col(a, "sum_qq"), _col(a, "sum_ee")
    nf, nq = np.sqrt(ff), np.sqrt(qq)
    with np.errstate(all="ignore"):
        c = np.clip(1.0 - (ee - (nf - nq) ** 2) / (2.0 * nf * nq), -1.0, 1.0)
    return np.where((ff == 0) & (qq == 0), 1.0, np.where((ff == 0) | (qq == 0), 0.0, c))


def _sqnr(a: np.ndarray) -> np.ndarray:
    """`error_stats.sqnr_db` on arrays of sums."""
    ff, ee = _col(a, "sum_ff"), _col(a, "sum_ee")
    with np.errstate(all="ignore"):
        db = 10.0 * np.log10(ff / ee)
    return np.where(ee == 0, np.inf, np.where(ff == 0, -np.inf, db))


def _per(top: str, bottom: str):
    return lambda a: ratio(np.stack([_col(a, top), _col(a, bottom)], axis=-1))


# each output metric from a sample's sums (SAMPLE_COLUMNS); all read every column
OUTPUT_STATS: dict[str, Stat] = {
    "cosine": Stat("cosine", SAMPLE_COLUMNS, _cosine),
    "sqnr": Stat("sqnr", SAMPLE_COLUMNS, _sqnr),
    "mse": Stat("mse", SAMPLE_COLUMNS, _per("sum_ee", "n")),
    "rmse": Stat("rmse", SAMPLE_COLUMNS, lambda a: np.sqrt(_per("sum_ee", "n")(a))),
    "mean_abs": Stat("mean_abs", SAMPLE_COLUMNS, _per("sum_abs", "n")),
    "max_abs": Stat("max_abs", SAMPLE_COLUMNS, lambda a: _col(a, "max_abs"), kind="max"),
    "top1": Stat("top1", SAMPLE_COLUMNS, _per("hits1", "total")),
    "top5": Stat("top5", SAMPLE_COLUMNS, _per("hits5", "total")),
}


def resampled_values(compared: OutputMetrics, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Name (as `require:` reads it: `model.cosine`, a policy metric, a task value) -> its value on each resample,
    [B] (NaN where a resample leaves it undefined). `weights` [B, n samples]: how often each sample is drawn."""
    out: dict[str, np.ndarray] = {}
    per_output = {name: np.asarray(cmp.sample_sums, dtype=np.float64).reshape(-1, len(SAMPLE_COLUMNS))
                  for name, cmp in compared.comparisons.items()}
    for metric in MODEL_METRIC_NAMES:  # the worst output on each resample, as aggregate_model_metrics takes it
        rows = [resampled(OUTPUT_STATS[metric], comps, weights) for comps in per_output.values()]
        rows = [r for r in rows if not np.all(np.isnan(r))]  # top-k of an output that holds no class scores
        if rows:
            stacked = np.stack(rows)
            with np.errstate(all="ignore"):
                out[f"model.{metric}"] = (stacked.min(axis=0) if OUTPUT_METRICS[metric].higher_is_better
                                          else stacked.max(axis=0))
    for name, (spec, cmp) in compared.user.items():
        comps = np.asarray(cmp.sample_sums, dtype=np.float64).reshape(-1, len(SAMPLE_COLUMNS))
        out[name] = resampled(OUTPUT_STATS[spec.metric], comps, weights)
    for task, samples in zip(compared.tasks, compared.item_samples):
        comps = np.asarray(task.rows, dtype=np.float64).reshape(len(task.rows), len(task.columns))
        item_weights = weights[:, samples]  # an item is drawn as often as its sample
        stats = task.stats()
        for i, stat in enumerate(stats):
            values = resampled(stat, comps[:, [task.columns.index(c) for c in stat.columns]], item_weights)
            out[f"{task.name}.{stat.key}"] = values
            if i == 0:  # the primary value, `name` alone
                out[task.name] = values
    return out
