"""Regression and signals: how far are the quantized values from the float ones, on an output or a slice?

Values: `max_abs` (largest absolute error), `mean_abs`, `relative`
(sum |f - q| / sum |f|) and `psnr` (10 log10(peak² / MSE), with `peak` the
declared signal peak or else the float values' range over all samples).
"""

from __future__ import annotations

import numpy as np

from qcheck.measure.tasks.base import Stat, TaskMetric, ratio, take


class Regression(TaskMetric):
    task = "regression"
    columns = ("max_abs", "abs_sum", "count", "ref_abs_sum", "sq_sum")

    def __init__(self, name, options, labels=None):
        super().__init__(name, options, labels)
        self.lo, self.hi = np.inf, -np.inf

    def peak(self) -> float:
        if "peak" in self.options:
            return float(self.options["peak"])
        return float(self.hi - self.lo) if np.isfinite(self.hi - self.lo) else float("nan")

    def stats(self) -> list[Stat]:
        peak = self.peak()

        def psnr(a: np.ndarray) -> np.ndarray:
            mse = ratio(a)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(mse > 0, 10 * np.log10(peak ** 2 / np.where(mse > 0, mse, 1)), np.inf)

        return [Stat("max_abs", ("max_abs",), lambda a: a[..., 0], kind="max"),
                Stat("mean_abs", ("abs_sum", "count"), ratio),
                Stat("relative", ("abs_sum", "ref_abs_sum"), ratio),
                Stat("psnr", ("sq_sum", "count"), psnr)]

    def update_item(self, item, index, f, q, b):
        fa = take(f, self.options["output"], self.options.get("slice"), self.name)
        qa = take(q, self.options["output"], self.options.get("slice"), self.name)
        fa, qa = fa[b].astype(np.float64), qa[b].astype(np.float64)
        err = np.abs(fa - qa)
        if fa.size:
            self.lo, self.hi = min(self.lo, float(fa.min())), max(self.hi, float(fa.max()))
        comps = {"max_abs": float(err.max()) if err.size else 0.0, "abs_sum": float(err.sum()), "count": float(err.size),
                 "ref_abs_sum": float(np.abs(fa).sum()), "sq_sum": float((err ** 2).sum())}
        return comps, {"max_abs": comps["max_abs"]}
