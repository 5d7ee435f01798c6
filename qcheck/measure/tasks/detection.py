"""Detection: are the quantized model's detections the float model's?

Both models' raw outputs are decoded the same way: boxes and class scores
(one output with box and score slices along `axis`, YOLO-style [1, 4+C, N];
or `boxes_output` [1, N, 4] and `scores_output` [1, N, C]), scores at or
above `score_threshold`, non-maximum suppression per class at `nms_iou`.
The float detections are the reference: a quantized detection of the same
class with IoU >= `match_iou` matches one (greedily, best IoU first).
Values: `f1`, `precision`, `recall` (micro, over all detections), and
`score_max_error`, `score_mean_error` over every raw score.
"""

from __future__ import annotations

import numpy as np

from qcheck.measure.tasks.base import Stat, TaskMetric, ratio, shape_error, take
from qcheck.policy.slices import SliceError, parse_slice


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [n, 4] with every box in b [m, 4], both x1 y1 x2 y2."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    if order.size <= 3000:  # one IoU matrix, then a greedy pass over rows
        m = iou_matrix(boxes[order], boxes[order])
        alive = np.ones(order.size, dtype=bool)
        keep = []
        for i in range(order.size):
            if alive[i]:
                keep.append(int(order[i]))
                alive[i + 1:] &= m[i, i + 1:] <= iou
        return np.asarray(keep, dtype=np.int64)
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if order.size == 1:
            break
        overlaps = iou_matrix(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][overlaps <= iou]
    return np.asarray(keep, dtype=np.int64)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def detect(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_iou: float,
           max_detections: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """boxes [N, 4] xyxy, scores [N, C] -> kept (boxes, scores, classes), best first, NMS per class."""
    if scores.ndim == 1:
        scores = scores[:, None]
    cls = scores.argmax(axis=1)
    best = scores[np.arange(scores.shape[0]), cls]
    sel = np.nonzero(best >= score_threshold)[0]
    if sel.size:
        # per-class NMS in one pass: move each class's boxes apart so boxes of different classes never overlap
        span = float(np.abs(boxes[sel]).max()) * 2 + 1
        shifted = boxes[sel] + (cls[sel] * span)[:, None]
        kept = sel[nms(shifted, best[sel], nms_iou)][:max_detections]
    else:
        kept = sel
    return boxes[kept], best[kept], cls[kept]


def match(ref_boxes, ref_cls, boxes, cls, iou: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching, best IoU first, same class only: [(ref index, index, iou)]."""
    if len(ref_boxes) == 0 or len(boxes) == 0:
        return []
    m = iou_matrix(ref_boxes, boxes)
    m[np.asarray(ref_cls)[:, None] != np.asarray(cls)[None, :]] = 0.0
    pairs = []
    used_r, used_q = set(), set()
    for flat in np.argsort(-m, axis=None, kind="stable"):
        r, q = divmod(int(flat), m.shape[1])
        if m[r, q] < iou or m[r, q] <= 0:
            break
        if r in used_r or q in used_q:
            continue
        used_r.add(r)
        used_q.add(q)
        pairs.append((r, q, float(m[r, q])))
    return pairs


def _f1(a: np.ndarray) -> np.ndarray:
    tp, fp, fn = a[..., 0], a[..., 1], a[..., 2]
    return ratio(np.stack([2 * tp, 2 * tp + fp + fn], axis=-1))


def _first(a: np.ndarray) -> np.ndarray:
    return a[..., 0]


class Detection(TaskMetric):
    task = "detection"
    columns = ("tp", "fp", "fn", "score_abs", "score_n", "score_max")

    def stats(self) -> list[Stat]:
        return [Stat("f1", ("tp", "fp", "fn"), _f1),
                Stat("precision", ("tp", "fp"), lambda a: ratio(np.stack([a[..., 0], a[..., 0] + a[..., 1]], -1))),
                Stat("recall", ("tp", "fn"), lambda a: ratio(np.stack([a[..., 0], a[..., 0] + a[..., 1]], -1))),
                Stat("score_max_error", ("score_max",), _first, kind="max"),
                Stat("score_mean_error", ("score_abs", "score_n"), ratio)]

    def batch_size(self, f: dict) -> int:
        out = self.options.get("output") or self.options.get("scores_output")
        return int(np.shape(f[out])[0])

    def decode_inputs(self, arrays: dict, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw boxes [N, 4] (as the model writes them) and scores [N, C] of batch element b."""
        o = self.options
        if o.get("output"):
            a = take(arrays, o["output"], o.get("slice"), self.name)
            axis = int(o.get("axis", 1))
            axis = axis if axis >= 0 else a.ndim + axis
            if a.ndim != 3 or axis == 0:
                raise shape_error(self.name, f"a single detection output must be [batch, channels, N] or "
                                  f"[batch, N, channels] with the channels on `axis` 1 or 2; got shape {list(a.shape)} "
                                  f"and axis {o.get('axis', 1)}")
            a = np.moveaxis(a[b], axis - 1, -1)  # [N, channels]
            try:
                boxes = a[:, parse_slice(f"[{o.get('boxes', '0:4')}]")[0]]
                scores = a[:, parse_slice(f"[{o.get('scores', '4:')}]")[0]]
            except (SliceError, IndexError) as exc:
                raise shape_error(self.name, f"boxes/scores slices do not fit {a.shape[1]} channels: {exc}") from None
        else:
            boxes = take(arrays, o["boxes_output"], None, self.name)[b]
            scores = take(arrays, o["scores_output"], None, self.name)[b]
            boxes = boxes.reshape(-1, boxes.shape[-1])
            scores = scores[:, None] if scores.ndim == 1 else scores.reshape(-1, scores.shape[-1])
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise shape_error(self.name, f"boxes must have 4 coordinates; got {boxes.shape[-1]}",
                              hint="set `boxes:` to the 4 box channels, e.g. \"0:4\"")
        if scores.shape[0] != boxes.shape[0]:
            raise shape_error(self.name, f"{boxes.shape[0]} boxes but {scores.shape[0]} score rows")
        return boxes.astype(np.float64), scores.astype(np.float64)

    def detections(self, boxes, scores):
        o = self.options
        xyxy = cxcywh_to_xyxy(boxes) if o.get("box_format", "cxcywh") == "cxcywh" else boxes
        return detect(xyxy, scores, float(o.get("score_threshold", 0.25)), float(o.get("nms_iou", 0.45)),
                      int(o.get("max_detections", 300)))

    def update_item(self, item, index, f, q, b):
        fb, fs = self.decode_inputs(f, b)
        qb, qs = self.decode_inputs(q, b)
        f_boxes, f_scores, f_cls = self.detections(fb, fs)
        q_boxes, q_scores, q_cls = self.detections(qb, qs)
        pairs = match(f_boxes, f_cls, q_boxes, q_cls, float(self.options.get("match_iou", 0.5)))
        tp = len(pairs)
        err = np.abs(fs - qs)
        matched_f = {r for r, _, _ in pairs}
        matched_q = {c for _, c, _ in pairs}

        def det(boxes, scores, cls, i):
            return {"box": [round(float(v), 2) for v in boxes[i]], "class": int(cls[i]), "score": round(float(scores[i]), 4)}

        details = {
            "float_detections": int(len(f_boxes)), "quant_detections": int(len(q_boxes)),
            "lost": [det(f_boxes, f_scores, f_cls, i) for i in range(len(f_boxes)) if i not in matched_f][:10],
            "added": [det(q_boxes, q_scores, q_cls, i) for i in range(len(q_boxes)) if i not in matched_q][:10],
        }
        comps = {"tp": tp, "fp": len(q_boxes) - tp, "fn": len(f_boxes) - tp,
                 "score_abs": float(err.sum()), "score_n": float(err.size), "score_max": float(err.max()) if err.size else 0.0}
        return comps, details
