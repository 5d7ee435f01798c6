"""Task metrics in the policy: keys checked per task with their line, names for `require:`, and Python
metrics found through entry points or next to the policy."""

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from helpers import small_cnn, write_npy_samples

from qcheck.errors import PolicyError, Problem, QcheckError
from qcheck.measure.tasks import python as pymetric
from qcheck.policy.loader import load_policy


def write(tmp_path: Path, metrics: str, require: str = "") -> Path:
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 2)
    p = tmp_path / "qcheck.yaml"
    p.write_text("model: model.onnx\ndata:\n  calibration: calib\nmetrics:\n" + metrics + require, encoding="utf-8")
    return p


def messages(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return [str(p) for p in info.value.problems]


def test_task_metric_names_are_known_to_require(tmp_path):
    p = write(tmp_path, "  ocr: {task: ctc, output: logits, blank: 0}\n",
              "require:\n  - ocr.cer <= 0.05\n  - ocr >= 0.9\n  - ocr.string_agreement >= 0.95\n")
    policy = load_policy(p)
    assert policy.metrics["ocr"].task == "ctc" and policy.metrics["ocr"].options == {"output": "logits", "blank": 0}
    assert [sorted(r.expression.names) for r in policy.require] == [["ocr.cer"], ["ocr"], ["ocr.string_agreement"]]


def test_keys_that_do_not_apply_to_the_task_point_at_their_line(tmp_path):
    p = write(tmp_path, "  ocr:\n    task: ctc\n    output: logits\n    threshold: 0.3\n"
                        "  seg: {task: segmentation, output: logits, metric: cosine}\n")
    msgs = messages(p)
    assert msgs[0].startswith(f"{p}:8: metric 'ocr': 'threshold' does not apply to task ctc")
    assert "task ctc takes: batch_axis, blank, charset, class_axis, labels, output, slice, time_axis" in msgs[0]
    assert msgs[1].startswith(f"{p}:9: metric 'seg': 'metric' does not apply to task segmentation")


def test_detection_needs_one_output_or_both_separate_ones(tmp_path):
    p = write(tmp_path, "  d: {task: detection, boxes_output: boxes}\n")
    (msg,) = messages(p)
    assert "detection needs either `output`" in msg and f"{p}:5:" in msg


def test_unknown_task(tmp_path):
    (msg,) = messages(write(tmp_path, "  a: {task: pose}\n"))
    assert "'metrics.a.task' must be one of: classification, detection, ctc" in msg


def test_generic_metric_without_output(tmp_path):
    p = write(tmp_path, "  a: {task: regression, output: logits}\n  b: {metric: cosine}\n")
    (msg,) = messages(p)
    assert msg.startswith(f"{p}:6: 'metrics.b' is missing the required key 'output'")


def test_python_values_become_require_names(tmp_path):
    p = write(tmp_path, "  mine: {task: python, function: 'm:f', values: [a, b]}\n", "require:\n  - mine.b > 0\n  - mine.c > 0\n")
    (msg,) = messages(p)
    assert "unknown name 'mine.c'" in msg


WHERE = Problem("", "qcheck.yaml", 7)


def test_entry_point_is_found_by_name_or_value(tmp_path, monkeypatch):
    (tmp_path / "qcheck_ep_metrics.py").write_text("def agree(f, q):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint("agree", "qcheck_ep_metrics:agree", pymetric.GROUP)
    monkeypatch.setattr(pymetric, "entry_points", lambda group: [ep] if group == pymetric.GROUP else [])
    assert pymetric.resolve("agree", tmp_path / "elsewhere", WHERE)({}, {}) == 1.0
    assert pymetric.resolve("qcheck_ep_metrics:agree", tmp_path / "elsewhere", WHERE).__name__ == "agree"
    sys.modules.pop("qcheck_ep_metrics", None)


def test_function_file_next_to_the_policy_and_its_problems(tmp_path):
    (tmp_path / "m.py").write_text("import numpy as np\ndef gap(f, q):\n    return float(np.abs(f['y'] - q['y']).max())\n"
                                   "def text(f, q):\n    return 'high'\n")
    fn = pymetric.resolve("m:gap", tmp_path, WHERE)
    metric = pymetric.PythonMetric("g", {"function": "m:gap"}, fn, WHERE)
    metric.update("s0", {"y": np.zeros(3)}, {"y": np.array([0.0, 0.5, -1.0])})
    metric.update("s1", {"y": np.zeros(3)}, {"y": np.zeros(3)})
    r = metric.result()
    assert r["values"]["value"]["value"] == 0.5 and r["values"]["value"]["per_sample"] == [1.0, 0.0]
    with pytest.raises(QcheckError, match="qcheck.yaml:7: function 'm:nope': .*m.py has no 'nope'"):
        pymetric.resolve("m:nope", tmp_path, WHERE)
    with pytest.raises(QcheckError, match="no entry point in group qcheck.metrics has that name"):
        pymetric.resolve("absent:fn", tmp_path, WHERE)
    bad = pymetric.PythonMetric("t", {"function": "m:text"}, pymetric.resolve("m:text", tmp_path, WHERE), WHERE)
    with pytest.raises(QcheckError, match="returned 'high' for 'value' on sample s0; expected a finite number"):
        bad.update("s0", {}, {})
