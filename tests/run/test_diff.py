"""`qcheck diff`: metric changes, findings that appear or go, recipe changes, and the exit code that gates."""

import json
import shutil

import pytest
from helpers import outlier_head_cnn, small_cnn, write_npy_samples, write_policy

from qcheck.cli.main import main
from qcheck.policy.loader import load_policy
from qcheck.run.diff import diff_runs, load_run
from qcheck.run.pipeline import run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A: the search keeps `fc` float and passes. B: the same policy without the search (a real regression)."""
    tmp = tmp_path_factory.mktemp("diff")
    outlier_head_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 8)
    doc = {"model": "model.onnx", "data": {"calibration": "calib"},
           "metrics": {"scores": {"output": "logits", "slice": "[:, 1:]", "metric": "max_abs"}},
           "require": ["scores <= 0.05"], "report": {"out": "a", "formats": ["html"]},
           "search": {"remedies": ["keep_float"], "budget": {"max_float_nodes": 1}}}
    run(load_policy(write_policy(tmp / "a.yaml", doc)))
    doc.pop("search")
    doc["report"]["out"] = "b"
    run(load_policy(write_policy(tmp / "b.yaml", doc)))
    return tmp / "a", tmp / "b"


def test_same_run_has_no_changes_and_passes(two_runs, capsys):
    a, _ = two_runs
    assert main(["diff", str(a), str(a / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "REGRESSION" not in out and "recipe changes: 0" in out and "result: ok" in out


def test_real_regression_is_reported_and_exits_non_zero(two_runs, capsys):
    a, b = two_runs
    d = diff_runs(load_run(a), load_run(b))
    scores = next(m for m in d["metrics"] if m["name"] == "scores")
    ra, rb = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    chosen = ra["search"]["candidates"][ra["search"]["chosen"]]
    assert scores["a"] == pytest.approx(chosen["metrics"]["scores"])  # A ends with the search's model
    assert scores["b"] == pytest.approx(rb["model_metrics"]["user"]["scores"]["value"])
    assert scores["regression"] and scores["worse_by"] == pytest.approx((scores["b"] - scores["a"]) / scores["a"])
    assert {"field": "exclude_nodes", "a": ["fc"], "b": []} in d["recipe_changes"]
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "scores regressed" in out and "verdict went from pass to fail" in out
    assert main(["diff", str(b), str(a)]) == 0  # the other way round it is an improvement


def test_injected_error_finding_and_tolerance(two_runs, tmp_path):
    a, _ = two_runs
    shutil.copytree(a, tmp_path / "c")
    r = json.loads((tmp_path / "c" / "results.json").read_text())
    r["findings"].append({"code": "QC999", "rule": "injected", "severity": "error", "tensor": "logits",
                          "op_type": "Gemm", "message": "injected for the test"})
    cand = r["search"]["candidates"][r["search"]["chosen"]]
    cand["metrics"]["model.cosine"] -= 0.0005  # worse by 0.0005 in absolute terms
    (tmp_path / "c" / "results.json").write_text(json.dumps(r))
    d = diff_runs(load_run(a), load_run(tmp_path / "c"), tolerance=0.001)
    assert [f["code"] for f in d["findings_appeared"]] == ["QC999"] and d["fails"]
    assert not next(m for m in d["metrics"] if m["name"] == "model.cosine")["regression"]
    d = diff_runs(load_run(a), load_run(tmp_path / "c"), tolerance=0.0001)
    cos = next(m for m in d["metrics"] if m["name"] == "model.cosine")
    assert cos["regression"] and cos["worse_by"] == pytest.approx(0.0005, rel=1e-6)
    back = diff_runs(load_run(tmp_path / "c"), load_run(a))
    assert [f["code"] for f in back["findings_gone"]] == ["QC999"] and not back["fails"]


def test_unreadable_input_is_a_user_error(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["diff", str(tmp_path / "x"), str(tmp_path / "x")]) == 2
    assert "no results.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def task_run(tmp_path_factory):
    """small_cnn with a classification task metric (top1: higher is better) and an mse metric (lower is better)."""
    tmp = tmp_path_factory.mktemp("directions")
    small_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 8)
    doc = {"model": "model.onnx", "data": {"calibration": "calib"},
           "metrics": {"cls": {"task": "classification", "output": "logits", "k": 1},
                       "err": {"output": "logits", "metric": "mse"}},
           "require": ["cls >= 0.5"], "report": {"out": "out", "formats": ["html"]}}
    run(load_policy(write_policy(tmp / "qcheck.yaml", doc)))
    return tmp / "out"


def _edited(folder, tmp_path, cls_by: float, err_times: float):
    r = json.loads((folder / "results.json").read_text())
    r["model_metrics"]["tasks"]["cls"]["value"] += cls_by
    r["model_metrics"]["user"]["err"]["value"] *= err_times
    (tmp_path / "results.json").write_text(json.dumps(r))
    return tmp_path


def test_direction_of_each_metric_decides_what_regresses(task_run, tmp_path):
    """A drop of the task's top1 (absolute, a rate) and a rise of mse (relative) regress; the opposite does not."""
    base = load_run(task_run)
    worse = diff_runs(base, load_run(_edited(task_run, tmp_path, cls_by=-0.25, err_times=1.5)))
    rows = {m["name"]: m for m in worse["metrics"]}
    assert rows["cls"]["regression"] and rows["cls"]["worse_by"] == pytest.approx(0.25)
    assert rows["err"]["regression"] and rows["err"]["worse_by"] == pytest.approx(0.5)
    assert worse["fails"]
    better = diff_runs(load_run(tmp_path), base)  # the same change the other way round
    rows = {m["name"]: m for m in better["metrics"]}
    assert not rows["cls"]["regression"] and rows["cls"]["worse_by"] == pytest.approx(-0.25)
    assert not rows["err"]["regression"] and rows["err"]["worse_by"] == pytest.approx(-1 / 3)
