"""Sequence recognition (CTC): does the quantized model read the same strings?

Greedy CTC decoding: the best class at each time step, repeats collapsed,
the blank removed. Values: `string_agreement` (whole decoded strings equal),
`step_agreement` (same best class per time step), `cer` (edit distance of the
quantized string to the float one, over the float strings' length); with
labels, `cer_float`, `cer_quant`, `accuracy_float`, `accuracy_quant` against them.

`charset:` names a text file with one character per line for the classes
other than the blank, in class order (PaddleOCR's and CRNN's dictionaries);
without it, strings are written as class indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcheck.errors import DataError, Problem
from qcheck.measure.tasks.base import Stat, TaskMetric, ratio, shape_error, take


def greedy_decode(classes: np.ndarray, blank: int) -> list[int]:
    """Best-path CTC decoding of per-step class indices: collapse repeats, drop blanks."""
    out, prev = [], None
    for c in np.asarray(classes).tolist():
        if c != prev and c != blank:
            out.append(int(c))
        prev = c
    return out


def edit_distance(a, b) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    a, b = list(a), list(b)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def load_charset(path: Path, metric: str) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(Problem(f"metric '{metric}': cannot read the charset ({exc})", file=str(path))) from None
    if lines and lines[-1] == "":
        lines = lines[:-1]
    return [line.rstrip("\r") for line in lines]


class CTC(TaskMetric):
    task = "ctc"
    columns = ("steps_same", "steps", "str_same", "one", "edits", "ref_len",
               "edits_f", "edits_q", "label_len", "correct_f", "correct_q", "labeled")

    def __init__(self, name, options, labels=None, charset: list[str] | None = None):
        super().__init__(name, options, labels)
        self.charset = charset
        self.blank = int(options.get("blank", 0))

    def stats(self) -> list[Stat]:
        out = [Stat("string_agreement", ("str_same", "one"), ratio),
               Stat("step_agreement", ("steps_same", "steps"), ratio),
               Stat("cer", ("edits", "ref_len"), ratio)]
        if self.labels is not None:
            out += [Stat("cer_float", ("edits_f", "label_len"), ratio), Stat("cer_quant", ("edits_q", "label_len"), ratio),
                    Stat("accuracy_float", ("correct_f", "labeled"), ratio),
                    Stat("accuracy_quant", ("correct_q", "labeled"), ratio)]
        return out

    def steps(self, arrays: dict, b: int) -> np.ndarray:
        """[T, C] scores of batch element b."""
        a = take(arrays, self.options["output"], self.options.get("slice"), self.name)
        t_axis, c_axis = int(self.options.get("time_axis", 1)), int(self.options.get("class_axis", 2))
        t_axis, c_axis = (t_axis % a.ndim, c_axis % a.ndim) if a.ndim else (t_axis, c_axis)
        if a.ndim != 3 or 0 in (t_axis, c_axis) or t_axis == c_axis:
            raise shape_error(self.name, f"CTC needs a 3-D output with batch, time and class axes (declared with "
                              f"batch_axis, time_axis and class_axis; all different); got shape {list(a.shape)}, "
                              f"time_axis {t_axis}, class_axis {c_axis}",
                              hint="for PyTorch's [time, batch, classes] give time_axis: 0, batch_axis: 1")
        if not 0 <= self.blank < a.shape[c_axis]:
            raise shape_error(self.name, f"blank index {self.blank} is outside the {a.shape[c_axis]} classes")
        return np.moveaxis(a[b], (t_axis - 1, c_axis - 1), (0, 1))

    def text(self, tokens: list[int]) -> str:
        if self.charset is None:
            return " ".join(str(t) for t in tokens)
        chars = []
        for t in tokens:
            i = t - 1 if t > self.blank else t
            chars.append(self.charset[i] if 0 <= i < len(self.charset) else f"⟨{t}⟩")
        return "".join(chars)

    def label_tokens(self, label: str) -> list:
        if self.charset is not None:
            return list(label)
        try:
            return [int(t) for t in label.split()]
        except ValueError:
            raise DataError(Problem(f"metric '{self.name}': without a charset, labels are class indices separated by "
                                    f"spaces; got {label!r}", file=str(self.options.get("labels")),
                                    hint="add `charset:` (one character per line) to compare with text labels")) from None

    def update_item(self, item, index, f, q, b):
        fs, qs = self.steps(f, b), self.steps(q, b)
        fa, qa = fs.argmax(axis=1), qs.argmax(axis=1)
        ft, qt = greedy_decode(fa, self.blank), greedy_decode(qa, self.blank)
        f_text, q_text = self.text(ft), self.text(qt)
        f_seq, q_seq = (list(f_text), list(q_text)) if self.charset is not None else (ft, qt)
        comps = {"steps_same": float((fa == qa).sum()), "steps": float(len(fa)), "str_same": float(f_seq == q_seq),
                 "one": 1.0, "edits": float(edit_distance(q_seq, f_seq)), "ref_len": float(len(f_seq))}
        details = {"float_text": f_text, "quant_text": q_text}
        label = self.label(index)
        if label is not None:
            ref = self.label_tokens(label)
            comps.update(edits_f=float(edit_distance(f_seq, ref)), edits_q=float(edit_distance(q_seq, ref)),
                         label_len=float(len(ref)), correct_f=float(f_seq == ref), correct_q=float(q_seq == ref),
                         labeled=1.0)
            details["label"] = label
        return comps, details
