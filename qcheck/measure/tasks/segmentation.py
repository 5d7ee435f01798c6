"""Segmentation and maps: do the thresholded (or argmax) maps of both models cover the same pixels?

Binary maps (the default): pixels at or above `threshold` (0.5) are
foreground. `iou` is the intersection over union of the float and quantized
foreground, summed over all samples (per sample too); `pixel_agreement` the
share of pixels on the same side. With `class_axis`, each pixel's class is the
argmax along that axis and `iou` is the mean over classes of per-class IoU.
"""

from __future__ import annotations

import numpy as np

from qcheck.measure.tasks.base import Stat, TaskMetric, ratio, shape_error, take


def binary_iou(f: np.ndarray, q: np.ndarray, threshold: float) -> tuple[int, int]:
    """(intersection, union) pixel counts of f >= threshold and q >= threshold."""
    mf, mq = f >= threshold, q >= threshold
    return int(np.logical_and(mf, mq).sum()), int(np.logical_or(mf, mq).sum())


class Segmentation(TaskMetric):
    task = "segmentation"

    def __init__(self, name, options, labels=None):
        super().__init__(name, options, labels)
        self.columns = ("inter", "union", "same", "pixels")
        self.classes: int | None = None

    def stats(self) -> list[Stat]:
        if self.classes is None:
            return [Stat("iou", ("inter", "union"), ratio), Stat("pixel_agreement", ("same", "pixels"), ratio)]
        c = self.classes
        cols = tuple(f"inter{i}" for i in range(c)) + tuple(f"union{i}" for i in range(c))

        def mean_iou(a: np.ndarray) -> np.ndarray:
            inter, union = a[..., :c], a[..., c:]
            with np.errstate(divide="ignore", invalid="ignore"):
                per = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
            valid = np.isfinite(per)
            counts = valid.sum(axis=-1)
            return np.where(counts > 0, np.where(valid, per, 0).sum(axis=-1) / np.maximum(counts, 1), np.nan)

        return [Stat("iou", cols, mean_iou), Stat("pixel_agreement", ("same", "pixels"), ratio)]

    def maps(self, arrays: dict, b: int) -> np.ndarray:
        a = take(arrays, self.options["output"], self.options.get("slice"), self.name)
        if a.ndim < 2:
            raise shape_error(self.name, f"a map needs a batch axis and at least one more; got shape {list(a.shape)}")
        return a[b]

    def update_item(self, item, index, f, q, b):
        fm, qm = self.maps(f, b), self.maps(q, b)
        if "class_axis" in self.options:
            axis = int(self.options["class_axis"])
            axis = (axis % (fm.ndim + 1)) - 1  # declared on the batched output
            if axis < 0:
                raise shape_error(self.name, "class_axis cannot be the batch axis 0")
            c = fm.shape[axis]
            if self.classes is None:
                self.classes = c
                self.columns = ("same", "pixels") + tuple(f"inter{i}" for i in range(c)) + tuple(f"union{i}" for i in range(c))
            lf, lq = fm.argmax(axis=axis), qm.argmax(axis=axis)
            confusion = np.bincount((lf * c + lq).ravel(), minlength=c * c).reshape(c, c)
            inter = np.diag(confusion).astype(np.float64)
            union = confusion.sum(axis=0) + confusion.sum(axis=1) - inter
            comps = {"same": float(inter.sum()), "pixels": float(lf.size)}
            per = []
            for i in range(c):
                comps[f"inter{i}"], comps[f"union{i}"] = float(inter[i]), float(union[i])
                per.append(None if union[i] == 0 else round(float(inter[i] / union[i]), 4))
            return comps, {"class_iou": per}
        thr = float(self.options.get("threshold", 0.5))
        inter, union = binary_iou(fm, qm, thr)
        same = int(((fm >= thr) == (qm >= thr)).sum())
        details = {"float_foreground": round(float((fm >= thr).mean()), 4),
                   "quant_foreground": round(float((qm >= thr).mean()), 4)}
        return {"inter": inter, "union": union, "same": same, "pixels": fm.size}, details

    def result(self) -> dict:
        out = super().result()
        if self.classes is not None and self.rows:
            comps = np.asarray(self.rows).sum(axis=0)
            c = self.classes
            inter, union = comps[2:2 + c], comps[2 + c:]
            out["per_class_iou"] = [None if u == 0 else float(i / u) for i, u in zip(inter, union)]
        return out
