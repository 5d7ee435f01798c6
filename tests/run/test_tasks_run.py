"""Task metrics in whole runs on tiny real models: a classifier where int8 flips a known sample, and a
detector whose output cosine stays above 0.999 while half its detections are lost."""

import json

import numpy as np
import pytest
from helpers import passthrough_model, write_arrays, write_policy

from qcheck.cli.main import main

# Input and output are quantized to uint8 over [-100, 100]: scale 200/255 = 0.784, zero point 128.
# Sample 2's logits (0.30, 0.35) both round to the zero point, a tie that argmax breaks to class 0,
# while the float model picks class 1. The other samples are far apart.
CLASSIFIER_EVAL = [[[50, -40]], [[-30, 60]], [[0.30, 0.35]], [[20, 10]]]


def classifier_run(tmp, require, labels=True, extra=None):
    passthrough_model(tmp / "model.onnx", [1, 2], out_name="logits")
    write_arrays(tmp / "calib", [[[100, -100]], [[-100, 100]]])
    write_arrays(tmp / "eval", CLASSIFIER_EVAL)
    (tmp / "labels.txt").write_text("0\n1\n1\n0\n")
    metric = {"task": "classification", "output": "logits", "k": 1}
    if labels:
        metric["labels"] = "labels.txt"
    doc = {"model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
           "metrics": {"cls": metric, **(extra or {})}, "require": require,
           "report": {"out": "out", "formats": ["html"]}}
    code = main(["run", str(write_policy(tmp / "qcheck.yaml", doc)), "--quiet"])
    results = json.loads((tmp / "out" / "results.json").read_text()) if (tmp / "out" / "results.json").exists() else None
    return code, results


def test_quantization_flips_the_known_sample(tmp_path):
    code, results = classifier_run(tmp_path, ["cls.top1 >= 0.9"])
    t = results["model_metrics"]["tasks"]["cls"]
    assert t["values"]["top1"]["value"] == 0.75
    assert t["values"]["top1"]["per_sample"] == [1.0, 1.0, 0.0, 1.0]
    assert t["worst"][0]["sample"] == "2.npy" and t["worst"][0]["float_class"] == 1 and t["worst"][0]["quant_class"] == 0
    assert t["values"]["accuracy_float"]["value"] == 1.0
    assert t["values"]["accuracy_quant"]["value"] == 0.75
    assert t["values"]["accuracy_drop"]["value"] == 0.25
    lo, hi = t["values"]["top1"]["ci"]
    assert lo <= 0.75 <= hi and hi == 1.0
    assert code == 1 and results["verdict"]["failing_metrics"] == ["cls.top1"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="tasks"' in html and "(cls.top1)" in html and "2.npy" in html


def test_bare_name_is_the_primary_value_and_sureness_is_reported(tmp_path):
    code, results = classifier_run(tmp_path, ["cls >= 0.5"], labels=False)
    line = results["verdict"]["requirements"][0]
    assert code == 0 and line["values"] == {"cls": 0.75}
    lo = results["model_metrics"]["tasks"]["cls"]["values"]["top1"]["ci"][0]
    # four samples: the interval's low end (some resamples draw sample 2 three or four times) is below 0.5
    assert (line["sure"] is True) == (lo >= 0.5)
    assert "4 samples" in line["how_sure"]


def test_detector_keeps_its_cosine_but_loses_a_detection(tmp_path):
    """One output [1, 5, 8]: 4 box channels in pixels (0..320) and one class score (0..1), through a
    uint8 grid of 320/255 = 1.25: the score 0.6 rounds to 0 (lost), 0.7 to 1.25 (kept)."""
    boxes = np.array([[60, 60, 40, 40], [200, 100, 40, 40]] + [[10 + 30 * i, 300, 20, 20] for i in range(6)],
                     dtype=np.float32)
    scores = np.array([0.7, 0.6] + [0.05] * 6, dtype=np.float32)
    sample = np.concatenate([boxes.T, scores[None]])[None]  # [1, 5, 8]
    calib = sample.copy()
    calib[0, 0, 0] = 320.0
    passthrough_model(tmp_path / "det.onnx", [1, 5, 8], out_name="output0")
    write_arrays(tmp_path / "calib", [calib[0][None], sample[0][None]])
    write_arrays(tmp_path / "eval", [sample[0][None]])
    doc = {"model": "det.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
           "metrics": {"dets": {"task": "detection", "output": "output0", "axis": 1, "boxes": "0:4", "scores": "4:"}},
           "require": ["model.cosine >= 0.999", "dets.f1 >= 0.9"], "report": {"out": "out", "formats": ["html"]}}
    code = main(["run", str(write_policy(tmp_path / "qcheck.yaml", doc)), "--quiet"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["model_metrics"]["aggregate"]["cosine"] > 0.999
    v = results["model_metrics"]["tasks"]["dets"]["values"]
    assert v["recall"]["value"] == 0.5 and v["precision"]["value"] == 1.0
    assert v["f1"]["value"] == pytest.approx(2 / 3)
    assert v["score_max_error"]["value"] == pytest.approx(0.6, abs=1e-6)
    lost = results["model_metrics"]["tasks"]["dets"]["worst"][0]["lost"]
    assert [d["box"] for d in lost] == [[180, 80, 220, 120]] and lost[0]["score"] == pytest.approx(0.6)
    assert code == 1 and results["verdict"]["failing_metrics"] == ["dets.f1"]
    assert [q["holds"] for q in results["verdict"]["requirements"]] == [True, False]


def test_python_metric_next_to_the_policy(tmp_path):
    (tmp_path / "mymetrics.py").write_text(
        "import numpy as np\n"
        "def margin(f, q):\n"
        "    return {'gap': float(np.abs(f['logits'] - q['logits']).max()), 'same': float(f['logits'].argmax() == q['logits'].argmax())}\n")
    extra = {"custom": {"task": "python", "function": "mymetrics:margin", "values": ["gap", "same"]}}
    code, results = classifier_run(tmp_path, ["custom.same >= 0.7"], labels=False, extra=extra)
    t = results["model_metrics"]["tasks"]["custom"]
    assert t["values"]["same"]["value"] == 0.75 and t["values"]["same"]["per_sample"] == [1.0, 1.0, 0.0, 1.0]
    assert code == 0


def test_python_metric_errors_are_reported_with_where(tmp_path, capsys):
    (tmp_path / "bad.py").write_text("def broken(f, q):\n    return 1 / 0\n")
    extra = {"custom": {"task": "python", "function": "bad:broken"}}
    code, _ = classifier_run(tmp_path, ["custom >= 0"], labels=False, extra=extra)
    err = capsys.readouterr().err
    assert code == 2 and "ZeroDivisionError" in err and "bad.py:2" in err and "Traceback" not in err
    assert "qcheck.yaml:" in err and "sample 0.npy" in err


def test_task_metric_policy_mistakes_name_the_line(tmp_path, capsys):
    extra = {"ocr": {"task": "ctc", "output": "logits", "threshold": 0.5},
             "m": {"task": "python", "function": "nowhere:fn"}}
    code, _ = classifier_run(tmp_path, ["ocr.string_agreemnt >= 0.9"], labels=False, extra=extra)
    err = capsys.readouterr().err
    assert code == 2
    assert "'threshold' does not apply to task ctc" in err
    assert "did you mean 'ocr.string_agreement'" in err


def test_missing_output_and_wrong_label_count(tmp_path, capsys):
    (tmp_path / "short.txt").write_text("0\n1\n")
    extra = {"other": {"task": "segmentation", "output": "nope"}}
    code, _ = classifier_run(tmp_path, ["cls >= 0.5"], labels=False, extra=extra)
    assert code == 2 and "the model has no output named 'nope'" in capsys.readouterr().err
    extra = {"short": {"task": "classification", "output": "logits", "labels": "short.txt"}}
    code, _ = classifier_run(tmp_path, ["cls >= 0.5"], labels=False, extra=extra)
    assert code == 2 and "2 labels, but the evaluation data gave 4" in capsys.readouterr().err


def test_report_renders_again_from_results_json_with_text_that_looks_like_a_number(tmp_path):
    """Strings such as 'nan' read by an OCR model stay strings when results.json is read back."""
    code, results = classifier_run(tmp_path, ["cls >= 0.5"], labels=False)
    path = tmp_path / "out" / "results.json"
    data = json.loads(path.read_text())
    data["model_metrics"]["tasks"]["cls"]["worst"][0]["quant_text"] = "nan"
    data["model_metrics"]["tasks"]["cls"]["worst"][0]["float_text"] = "inf"
    path.write_text(json.dumps(data))
    assert main(["report", str(path), "--out", str(tmp_path / "again"), "--formats", "html"]) == 0
    html = (tmp_path / "again" / "report.html").read_text()
    assert "<code>nan</code>" in html and "<code>inf</code>" in html and 'id="tasks"' in html


def ctc_logits(path_classes: list[int], near_tie: dict[int, tuple[int, int]]) -> np.ndarray:
    """[1, T, 4] logits: 5.0 on each step's class, -10 elsewhere; near_tie {step: (winner, runner-up)} puts
    the winner at 5.02 and the runner-up at 5.00, closer than the uint8 grid step 20/255 = 0.078."""
    a = np.full((1, len(path_classes), 4), -10.0, dtype=np.float32)
    for t, c in enumerate(path_classes):
        a[0, t, c] = 5.0
    for t, (win, other) in near_tie.items():
        a[0, t, win], a[0, t, other] = 5.02, 5.0
    return a


def test_ocr_string_changes_while_most_steps_agree(tmp_path):
    """Input and output quantized over [-10, 10]: 5.00 and 5.02 both round to 64 steps, a tie argmax breaks
    to the lower class, so 'c' (class 3) at step 2 reads 'b' (class 2): 'acb' becomes 'abb'."""
    passthrough_model(tmp_path / "rec.onnx", [1, 6, 4], out_name="probs")
    calib = np.full((1, 6, 4), -10.0, dtype=np.float32)
    calib[0, 0, 0] = 10.0
    write_arrays(tmp_path / "calib", [calib])
    write_arrays(tmp_path / "eval", [ctc_logits([1, 0, 3, 0, 2, 2], {2: (3, 2)}), ctc_logits([1, 1, 0, 2, 0, 3], {})])
    (tmp_path / "keys.txt").write_text("a\nb\nc\n")
    (tmp_path / "texts.txt").write_text("acb\nabc\n")
    doc = {"model": "rec.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
           "metrics": {"ocr": {"task": "ctc", "output": "probs", "blank": 0, "time_axis": 1, "class_axis": 2,
                               "charset": "keys.txt", "labels": "texts.txt"}},
           "require": ["ocr.step_agreement >= 0.9", "ocr.string_agreement >= 0.95"],
           "report": {"out": "out", "formats": ["html"]}}
    code = main(["run", str(write_policy(tmp_path / "qcheck.yaml", doc)), "--quiet"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    t = results["model_metrics"]["tasks"]["ocr"]
    v = {k: x["value"] for k, x in t["values"].items()}
    assert v["step_agreement"] == pytest.approx(11 / 12) and v["string_agreement"] == 0.5
    assert v["cer"] == pytest.approx(1 / 6)  # one substitution over 3 + 3 float characters
    assert v["cer_float"] == 0.0 and v["cer_quant"] == pytest.approx(1 / 6)
    assert v["accuracy_float"] == 1.0 and v["accuracy_quant"] == 0.5
    assert t["worst"] == [{"sample": "0.npy", "value": 0.0, "float_text": "acb", "quant_text": "abb", "label": "acb"}]
    assert code == 1 and results["verdict"]["failing_metrics"] == ["ocr.string_agreement"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<code>acb</code>" in html and "<code>abb</code>" in html


def test_a_task_metric_as_the_ranking_metric_scores_each_node(tmp_path):
    # one node (the MatMul): quantizing it alone is the whole int8 model, which flips sample 2 of 4
    passthrough_model(tmp_path / "model.onnx", [1, 2], out_name="logits")
    write_arrays(tmp_path / "calib", [[[100, -100]], [[-100, 100]]])
    write_arrays(tmp_path / "eval", CLASSIFIER_EVAL)
    doc = {"model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
           "metrics": {"cls": {"task": "classification", "output": "logits", "k": 1}},
           "analyses": {"sensitivity": {"metric": "cls", "detail": 1}, "curves": False, "distributions": False},
           "report": {"out": "out", "formats": ["html"]}}
    assert main(["run", str(write_policy(tmp_path / "qcheck.yaml", doc)), "--quiet"]) == 0
    a = json.loads((tmp_path / "out" / "results.json").read_text())["analyses"]
    assert a["metric"] == "cls"
    (row,) = a["sensitivity"]["nodes"]
    assert row["node"] == "matmul" and row["views"]["node"]["cls"] == 0.75
    assert a["sensitivity"]["all_quantized"]["cls"] == 0.75
    # the real int8 model agrees with the emulation on the task metric; with the node kept float
    # nothing is quantized and every sample keeps its class
    assert [(r["emulated"], r["real"]) for r in a["confirm"]["rows"]] == [(0.75, 0.75), (1.0, 1.0)]
    # results written before the suffix copies (no notes, activations, float runs) and with parts
    # missing rather than null still render: `qcheck report` re-renders old runs
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    for key in ("notes", "activations", "float_runs", "workers", "curves", "distributions"):
        r["analyses"].pop(key, None)
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text(json.dumps(r))
    assert main(["report", str(old / "results.json")]) == 0
    assert "Which nodes hurt" in (old / "report.html").read_text()


def test_time_major_ctc_output_with_batch_axis(tmp_path):
    """PyTorch's CTC layout [time, batch, classes]: the same logits as above, transposed, give the same values."""
    passthrough_model(tmp_path / "rec.onnx", [6, 1, 4], out_name="probs")
    calib = np.full((1, 6, 4), -10.0, dtype=np.float32)
    calib[0, 0, 0] = 10.0
    write_arrays(tmp_path / "calib", [calib.transpose(1, 0, 2)])
    write_arrays(tmp_path / "eval", [ctc_logits([1, 0, 3, 0, 2, 2], {2: (3, 2)}).transpose(1, 0, 2),
                                     ctc_logits([1, 1, 0, 2, 0, 3], {}).transpose(1, 0, 2)])
    (tmp_path / "keys.txt").write_text("a\nb\nc\n")
    doc = {"model": "rec.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
           "metrics": {"ocr": {"task": "ctc", "output": "probs", "time_axis": 0, "batch_axis": 1, "class_axis": 2,
                               "charset": "keys.txt"}},
           "require": ["ocr.step_agreement >= 0.9"], "report": {"out": "out", "formats": ["html"]}}
    assert main(["run", str(write_policy(tmp_path / "qcheck.yaml", doc)), "--quiet"]) == 0
    t = json.loads((tmp_path / "out" / "results.json").read_text())["model_metrics"]["tasks"]["ocr"]
    v = {k: x["value"] for k, x in t["values"].items()}
    assert v["step_agreement"] == pytest.approx(11 / 12) and v["string_agreement"] == 0.5
    assert t["worst"][0]["float_text"] == "acb" and t["worst"][0]["quant_text"] == "abb"
