"""Classification: does the quantized model pick the float model's class (and, with labels, the right one)?

Values: `top1` (same top class), `topk` (the float top class is among the
quantized model's top k, k = 5 by default); with labels, `accuracy_float`,
`accuracy_quant` and `accuracy_drop` (float minus quantized top-1 accuracy).
"""

from __future__ import annotations

import numpy as np

from qcheck.errors import DataError, Problem
from qcheck.measure.tasks.base import Stat, TaskMetric, ratio, shape_error, take


def _drop(a: np.ndarray) -> np.ndarray:
    return ratio(np.stack([a[..., 0] - a[..., 1], a[..., 2]], axis=-1))


class Classification(TaskMetric):
    task = "classification"
    columns = ("top1", "topk", "rows", "correct_f", "correct_q", "labeled")

    def stats(self) -> list[Stat]:
        out = [Stat("top1", ("top1", "rows"), ratio), Stat("topk", ("topk", "rows"), ratio)]
        if self.labels is not None:
            out += [Stat("accuracy_float", ("correct_f", "labeled"), ratio),
                    Stat("accuracy_quant", ("correct_q", "labeled"), ratio),
                    Stat("accuracy_drop", ("correct_f", "correct_q", "labeled"), _drop)]
        return out

    def rows_of(self, arrays: dict, b: int) -> np.ndarray:
        a = take(arrays, self.options["output"], self.options.get("slice"), self.name)
        axis = int(self.options.get("class_axis", -1))
        if a.ndim < 2:
            raise shape_error(self.name, f"classification needs a [batch, classes] output; got shape {list(a.shape)}")
        a = np.moveaxis(a, axis, -1)[b]
        return a.reshape(-1, a.shape[-1])

    def update_item(self, item, index, f, q, b):
        fr, qr = self.rows_of(f, b), self.rows_of(q, b)
        k = min(int(self.options.get("k", 5)), fr.shape[1])
        top_f, top_q = fr.argmax(axis=1), qr.argmax(axis=1)
        top_k = np.argpartition(-qr, k - 1, axis=1)[:, :k]
        comps = {"top1": float((top_f == top_q).sum()), "topk": float((top_k == top_f[:, None]).any(axis=1).sum()),
                 "rows": float(fr.shape[0])}
        details = {"float_class": int(top_f[0]), "quant_class": int(top_q[0])}
        label = self.label(index)
        if label is not None:
            if fr.shape[0] != 1:
                raise shape_error(self.name, f"labels need one prediction per sample; this output gives {fr.shape[0]}")
            if not 0 <= label < fr.shape[1]:  # it could never be right: labels made for another model or set
                raise DataError(Problem(f"metric '{self.name}': label {index + 1} is {label}, but the output has "
                                        f"{fr.shape[1]} classes (0 to {fr.shape[1] - 1})",
                                        file=self.options.get("labels"),
                                        line=index + 1 if str(self.options.get("labels")).endswith(".txt") else None,
                                        hint="the labels must be class indices of this model's output"))
            comps.update(correct_f=float(top_f[0] == label), correct_q=float(top_q[0] == label), labeled=1.0)
            details["label"] = label
        return comps, details
