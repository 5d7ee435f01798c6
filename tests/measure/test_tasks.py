"""Task metrics against hand-computed examples: IoU, NMS, matching, CTC decoding, CER, IoU of maps, PSNR,
bootstrap intervals, and how sure a requirement is."""

import math

import numpy as np
import pytest

from qcheck.errors import DataError
from qcheck.measure.tasks.base import Stat, bootstrap_weights, evaluate_stat, ratio
from qcheck.measure.tasks.classification import Classification
from qcheck.measure.tasks.ctc import CTC, edit_distance, greedy_decode
from qcheck.measure.tasks.detection import Detection, detect, iou_matrix, match, nms
from qcheck.measure.tasks.regression import Regression
from qcheck.measure.tasks.segmentation import Segmentation
from qcheck.policy.expr import Expression
from qcheck.policy.spec import Requirement
from qcheck.rules.requirements import judge, sureness

# --------------------------------------------------------------------------- detection


def test_iou_of_hand_built_boxes():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]])
    # overlap 5x10 = 50 over 100 + 100 - 50; identical; disjoint; contained 25 / 100
    assert iou_matrix(a, b)[0] == pytest.approx([50 / 150, 1.0, 0.0, 0.25])


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 6]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # box 1 overlaps box 0 with IoU 90/110 = 0.82 (> 0.45): suppressed; box 0 overlaps box 3 with
    # IoU 60/100 = 0.6: suppressed by box 3, which scores higher
    assert nms(boxes, scores, 0.45).tolist() == [3, 2]
    # at 0.85 every overlap (0.82, 0.6, and 1 vs 3: 54/106) is allowed: all four stay, best first
    assert nms(boxes, scores, 0.85).tolist() == [3, 0, 1, 2]


def test_matching_is_one_to_one_and_per_class():
    ref = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    got = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10]], dtype=float)
    pairs = match(ref, [0, 0], got, [0, 0, 1], 0.5)
    assert [(r, q) for r, q, _ in pairs] == [(0, 0)]  # box 2 is another class; box 1 has no partner left


def yolo_output(boxes_cxcywh: list, scores: list) -> np.ndarray:
    """[1, 4 + 1, N] like a one-class YOLOv8 head."""
    a = np.concatenate([np.asarray(boxes_cxcywh, dtype=np.float32).T, np.asarray(scores, dtype=np.float32)[None]])
    return a[None]


def test_detection_f1_with_one_detection_shifted():
    """Two float detections; in the quantized output the second moves 5 px: IoU 50/150 < 0.5, so it is lost
    (a false negative) and its shifted copy is a false positive: precision = recall = F1 = 1/2."""
    f = yolo_output([[5, 5, 10, 10], [25, 5, 10, 10], [60, 60, 4, 4]], [0.9, 0.8, 0.1])
    q = yolo_output([[5, 5, 10, 10], [30, 5, 10, 10], [60, 60, 4, 4]], [0.85, 0.8, 0.2])
    m = Detection("dets", {"output": "y", "axis": 1})
    m.update("s0", {"y": f}, {"y": q})
    r = m.result()
    v = {k: r["values"][k]["value"] for k in r["values"]}
    assert v["precision"] == 0.5 and v["recall"] == 0.5 and v["f1"] == 0.5
    assert v["score_max_error"] == pytest.approx(0.1, abs=1e-6)
    assert v["score_mean_error"] == pytest.approx((0.05 + 0 + 0.1) / 3, abs=1e-6)
    assert r["worst"][0]["lost"][0]["box"] == [20, 0, 30, 10]
    assert r["worst"][0]["added"][0]["box"] == [25, 0, 35, 10]


def test_detection_shift_within_match_iou_keeps_f1_at_one():
    f = yolo_output([[5, 5, 10, 10], [25, 5, 10, 10]], [0.9, 0.8])
    q = yolo_output([[5, 5, 10, 10], [27, 5, 10, 10]], [0.9, 0.8])  # IoU 80/120 = 0.67
    m = Detection("dets", {"output": "y"})
    m.update("s0", {"y": f}, {"y": q})
    assert m.result()["values"]["f1"]["value"] == 1.0


def test_detection_with_separate_box_and_score_outputs_and_threshold():
    boxes = np.array([[[0, 0, 10, 10], [20, 0, 30, 10]]], dtype=np.float32)
    fs = np.array([[[0.1, 0.9], [0.7, 0.2]]], dtype=np.float32)  # classes 1 and 0
    qs = np.array([[[0.1, 0.9], [0.2, 0.2]]], dtype=np.float32)  # the second falls below 0.25
    m = Detection("dets", {"boxes_output": "b", "scores_output": "s", "box_format": "xyxy"})
    m.update("s0", {"b": boxes, "s": fs}, {"b": boxes, "s": qs})
    v = m.result()["values"]
    assert v["precision"]["value"] == 1.0 and v["recall"]["value"] == 0.5
    assert v["f1"]["value"] == pytest.approx(2 / 3)
    kept = detect(boxes[0].astype(float), fs[0].astype(float), 0.25, 0.45)
    assert kept[2].tolist() == [1, 0]


# --------------------------------------------------------------------------- CTC


def test_greedy_ctc_decoding_collapses_repeats_and_drops_blanks():
    assert greedy_decode([0, 1, 1, 0, 1, 2, 2, 0], blank=0) == [1, 1, 2]
    assert greedy_decode([3, 3, 1, 3, 2], blank=3) == [1, 2]
    assert greedy_decode([0, 0, 0], blank=0) == []


def test_edit_distance_of_known_strings():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("abd", "abcd") == 1
    assert edit_distance("", "abc") == 3


def one_hot_steps(classes: list[int], n_classes: int) -> np.ndarray:
    a = np.full((1, len(classes), n_classes), -5.0, dtype=np.float32)
    a[0, np.arange(len(classes)), classes] = 5.0
    return a


def test_ctc_metric_on_two_strings_with_a_charset():
    """Float reads 'abcd' and 'xy'; quantized reads 'abd' (one deletion) and 'xy': CER = 1 / (4 + 2)."""
    charset = list("abcdxy")  # class 0 is the blank, 'a' is class 1
    m = CTC("ocr", {"output": "y", "blank": 0}, labels=None, charset=charset)
    steps = {"abcd": [1, 1, 0, 2, 3, 0, 4], "abd": [1, 1, 0, 2, 2, 0, 4], "xy": [5, 0, 6, 6, 0, 0, 0]}
    m.update("s0", {"y": one_hot_steps(steps["abcd"], 7)}, {"y": one_hot_steps(steps["abd"], 7)})
    m.update("s1", {"y": one_hot_steps(steps["xy"], 7)}, {"y": one_hot_steps(steps["xy"], 7)})
    r = m.result()
    v = {k: r["values"][k]["value"] for k in r["values"]}
    assert v["cer"] == pytest.approx(1 / 6)
    assert v["string_agreement"] == 0.5
    assert v["step_agreement"] == pytest.approx(13 / 14)  # one step of 14 changed (3 -> 2)
    assert r["values"]["cer"]["per_sample"] == [0.25, 0.0]
    assert r["worst"][0] == {"sample": "s0", "value": 0.0, "float_text": "abcd", "quant_text": "abd"}


def test_ctc_against_labels():
    charset = list("abcdxy")
    m = CTC("ocr", {"output": "y"}, labels=["abcd", "xz"], charset=charset)
    m.update("s0", {"y": one_hot_steps([1, 2, 3, 4], 7)}, {"y": one_hot_steps([1, 2, 0, 4], 7)})
    m.update("s1", {"y": one_hot_steps([5, 6], 7)}, {"y": one_hot_steps([5, 6], 7)})
    v = {k: x["value"] for k, x in m.result()["values"].items()}
    assert v["cer_float"] == pytest.approx(1 / 6)  # 'xy' vs 'xz'
    assert v["cer_quant"] == pytest.approx(2 / 6)  # plus 'abd' vs 'abcd'
    assert v["accuracy_float"] == 0.5 and v["accuracy_quant"] == 0.0


# --------------------------------------------------------------------------- segmentation, regression, classification


def test_iou_of_thresholded_maps():
    f = np.array([[[[0.9, 0.9], [0.1, 0.1]]]], dtype=np.float32)
    q = np.array([[[[0.9, 0.2], [0.4, 0.1]]]], dtype=np.float32)
    m = Segmentation("map", {"output": "y", "threshold": 0.3})
    m.update("s0", {"y": f}, {"y": q})
    m.update("s1", {"y": f}, {"y": f})
    v = m.result()["values"]
    # s0: foreground {00, 01} vs {00, 10}: 1 / 3; s1: 2 / 2; overall (1 + 2) / (3 + 2)
    assert v["iou"]["per_sample"] == pytest.approx([1 / 3, 1.0])
    assert v["iou"]["value"] == pytest.approx(3 / 5)
    assert v["pixel_agreement"]["value"] == pytest.approx(6 / 8)


def test_per_class_iou_of_argmax_maps():
    f = np.zeros((1, 3, 1, 4), dtype=np.float32)
    q = np.zeros((1, 3, 1, 4), dtype=np.float32)
    for i, c in enumerate([0, 1, 1, 2]):
        f[0, c, 0, i] = 1
    for i, c in enumerate([0, 1, 2, 2]):
        q[0, c, 0, i] = 1
    m = Segmentation("seg", {"output": "y", "class_axis": 1})
    m.update("s0", {"y": f}, {"y": q})
    r = m.result()
    assert r["per_class_iou"] == pytest.approx([1.0, 0.5, 0.5])
    assert r["values"]["iou"]["value"] == pytest.approx(2 / 3)


def test_regression_errors_and_psnr():
    f = np.array([[0.0, 1.0, 2.0, 4.0]], dtype=np.float32)
    q = np.array([[0.0, 1.5, 2.0, 3.0]], dtype=np.float32)
    m = Regression("sig", {"output": "y"})
    m.update("s0", {"y": f}, {"y": q})
    v = {k: x["value"] for k, x in m.result()["values"].items()}
    assert v["max_abs"] == 1.0 and v["mean_abs"] == pytest.approx(1.5 / 4)
    assert v["relative"] == pytest.approx(1.5 / 7)
    mse = (0.25 + 1.0) / 4
    assert v["psnr"] == pytest.approx(10 * math.log10(4.0 ** 2 / mse))  # peak = float range 0..4


def test_classification_agreement_and_label_accuracy():
    f = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    q = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    m = Classification("cls", {"output": "y", "k": 2}, labels=[0, 1, 0])
    m.update("batch", {"y": f}, {"y": q})  # a batch of 3: three items
    r = m.result()
    v = {k: x["value"] for k, x in r["values"].items()}
    assert v["top1"] == pytest.approx(2 / 3) and v["topk"] == 1.0
    assert v["accuracy_float"] == pytest.approx(2 / 3) and v["accuracy_quant"] == pytest.approx(1 / 3)
    assert v["accuracy_drop"] == pytest.approx(1 / 3)
    assert r["samples"] == ["batch[0]", "batch[1]", "batch[2]"]
    assert r["worst"][0]["sample"] == "batch[1]"


def test_label_count_is_checked():
    from qcheck.errors import DataError

    m = Classification("cls", {"output": "y", "labels": "labels.txt"}, labels=[0, 1])
    m.update("s0", {"y": np.ones((1, 3))}, {"y": np.ones((1, 3))})
    with pytest.raises(DataError, match="2 labels, but the evaluation data gave 1"):
        m.result()


# --------------------------------------------------------------------------- bootstrap and sureness

MEAN = Stat("mean", ("x", "n"), ratio)


def bernoulli(n: int) -> np.ndarray:
    x = (np.arange(n) % 5 != 0).astype(float)  # 80 % ones
    return np.stack([x, np.ones(n)], axis=1)


def test_bootstrap_interval_contains_the_mean_shrinks_with_n_and_is_deterministic():
    small, large = evaluate_stat(MEAN, bernoulli(20)), evaluate_stat(MEAN, bernoulli(320))
    for r in (small, large):
        assert r["value"] == pytest.approx(0.8)
        assert r["ci"][0] < 0.8 < r["ci"][1]
    width = lambda r: r["ci"][1] - r["ci"][0]  # noqa: E731
    assert width(large) < width(small) / 2  # about 1/sqrt(16) as wide
    # the normal approximation of a proportion's 95 % interval: 2 * 1.96 * sqrt(p (1 - p) / n)
    assert width(large) == pytest.approx(2 * 1.96 * math.sqrt(0.16 / 320), rel=0.2)
    assert evaluate_stat(MEAN, bernoulli(20)) == small
    assert np.array_equal(bootstrap_weights(7), bootstrap_weights(7)) and bootstrap_weights(7).sum(axis=1).tolist() == [7] * 1000


def test_max_statistic_interval_never_exceeds_the_max():
    comps = np.array([[0.1], [0.5], [0.2], [0.9]])
    r = evaluate_stat(Stat("m", ("v",), lambda a: a[..., 0], kind="max"), comps)
    assert r["value"] == 0.9 and r["ci"][1] == 0.9 and r["ci"][0] >= 0.2


def test_a_requirement_near_its_interval_is_not_sure():
    req = Requirement("ocr.string_agreement >= 0.95", Expression("ocr.string_agreement >= 0.95"), 3)
    env = {"ocr.string_agreement": 0.96}
    verdict = judge([req], env, {"ocr.string_agreement": {"ci": [0.90, 1.0], "n": 32, "confidence": 0.95}})
    line = verdict["requirements"][0]
    assert line["holds"] and line["sure"] is False and "32 samples" in line["how_sure"]
    sure, text = sureness(req, env, True, {"ocr.string_agreement": {"ci": [0.955, 0.97], "n": 400, "confidence": 0.95}})
    assert sure is True and text.startswith("sure: holds")
    assert verdict["failing_metrics"] == []


def test_batch_axis_reads_time_major_outputs_like_batch_first_ones():
    """[time, batch, classes] with batch_axis 1 and time_axis 0 gives what [batch, time, classes] gives."""
    charset = list("abcdxy")
    steps = {"abcd": [1, 1, 0, 2, 3, 0, 4], "abd": [1, 1, 0, 2, 2, 0, 4], "xy": [5, 0, 6, 6, 0, 0, 0]}
    f = np.concatenate([one_hot_steps(steps["abcd"], 7), one_hot_steps(steps["xy"], 7)])  # [2, 7, 7]
    q = np.concatenate([one_hot_steps(steps["abd"], 7), one_hot_steps(steps["xy"], 7)])
    batch_first = CTC("ocr", {"output": "y"}, charset=charset)
    batch_first.update("s", {"y": f}, {"y": q})
    time_major = CTC("ocr", {"output": "y", "time_axis": 0, "batch_axis": 1, "class_axis": -1}, charset=charset)
    time_major.update("s", {"y": f.transpose(1, 0, 2)}, {"y": q.transpose(1, 0, 2)})
    tm, bf = time_major.result(), batch_first.result()
    assert tm["options"]["time_axis"] == 0  # reported as the policy gives it
    assert {k: v for k, v in tm.items() if k != "options"} == {k: v for k, v in bf.items() if k != "options"}
    assert time_major.result()["values"]["cer"]["value"] == pytest.approx(1 / 6)
    bad = CTC("ocr", {"output": "y", "time_axis": 1, "batch_axis": 1}, charset=charset)
    with pytest.raises(DataError, match="time_axis 1 is the batch axis"):
        bad.update("s", {"y": f.transpose(1, 0, 2)}, {"y": q.transpose(1, 0, 2)})
