"""`qcheck run` with node sensitivity in shards (`--executor`, `analyses.executor`): the results.json analyses equal
the in-process run's, task metric scores included (the accumulators travel to the workers)."""

import json
from pathlib import Path

import pytest
from helpers import small_cnn, write_npy_samples, write_policy

import qcheck.analyses.sensitivity as sensitivity
from qcheck.cli.main import main
from qcheck.policy.loader import load_policy
from qcheck.policy.spec import ExecutorSpec

ANALYSES = {"sensitivity": {"metric": "cls", "detail": 2}, "curves": False, "distributions": False, "confirm": False}


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sharded")
    small_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 8)
    return write_policy(tmp / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib"},
        "metrics": {"cls": {"task": "classification", "output": "logits", "k": 3}},
        "require": ["cls >= 0.5"], "analyses": ANALYSES, "report": {"out": "out", "formats": ["html"]}})


@pytest.fixture
def many_groups(monkeypatch):
    """Five nodes are too few runs to pay for suffix sessions; plan groups anyway, as a large model would."""
    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 1)
    monkeypatch.setattr(sensitivity, "MAX_GROUPS", 3)


def _analyses(policy: Path, out: str, *flags: str) -> dict:
    assert main(["run", str(policy), "--out", str(policy.parent / out), "--quiet", *flags]) in (0, 1)
    return json.loads((policy.parent / out / "results.json").read_text())["analyses"]


@pytest.fixture(scope="module")
def in_process(policy) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sensitivity, "RUNS_PER_GROUP", 1)
        mp.setattr(sensitivity, "MAX_GROUPS", 3)
        return _analyses(policy, "threads")


def _same(got: dict, want: dict) -> None:
    a, b = dict(got["sensitivity"]), dict(want["sensitivity"])
    a.pop("seconds"), b.pop("seconds")
    assert a == b and a["metric"] == "cls" and "cls" in a["nodes"][0]["views"]["node"]
    assert got["runs"] == want["runs"] and got["notes"] == want["notes"] == []
    assert got["shards"]["groups"] == want["shards"]["groups"] >= 2
    # --shards 2: two shards per group (one for a group of one configuration)
    assert got["shards"]["groups"] < got["shards"]["tasks"] <= 2 * got["shards"]["groups"]


def test_in_process_run_records_where_its_shards_ran(in_process):
    assert in_process["shards"]["kind"] == "threads" and in_process["shards"]["groups"] >= 2


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sharded_run_gives_the_in_process_analyses(policy, in_process, many_groups, executor):
    if executor == "ray":
        pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")
    got = _analyses(policy, executor, "--executor", executor, "--workers", "2", "--shards", "2")
    assert got["shards"]["kind"] == executor and got["shards"]["workers"] == 2
    _same(got, in_process)
    report = (policy.parent / executor / "report.html").read_text()
    where = "a Ray cluster" if executor == "ray" else "a local process pool"
    assert f"ran in {got['shards']['tasks']} shards of {got['shards']['groups']} groups on {where} of 2 workers" in report


def test_policy_asks_for_shards(policy, tmp_path):
    doc = policy.read_text().replace("confirm: false", "confirm: false\n  executor: {kind: ray, address: auto}\n"
                                                       "  shards: 8")
    (policy.parent / "ray.yaml").write_text(doc)
    spec = load_policy(policy.parent / "ray.yaml").analyses
    assert spec.executor == ExecutorSpec(kind="ray", address="auto") and spec.shards == 8
    assert load_policy(policy).analyses.executor is None  # left out: threads of this process


def test_a_misspelt_executor_is_refused_at_its_line(policy, capsys):
    (policy.parent / "bad.yaml").write_text(policy.read_text().replace("confirm: false",
                                                                       "confirm: false\n  executor: rey"))
    assert main(["validate", str(policy.parent / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and "executor" in err and "Traceback" not in err


def test_workers_without_an_executor_is_a_usage_error(policy, capsys):
    assert main(["run", str(policy), "--workers", "2", "--out", str(policy.parent / "no"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--workers need an executor" in err and "--executor local" in err
    assert not (policy.parent / "no").exists()


def test_ray_executor_without_ray_says_how_to_install_it_before_anything_runs(policy, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):  # Ray not installed: its import fails, as on a machine without the extra
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["run", str(policy), "--executor", "ray", "--out", str(policy.parent / "noray")]) == 2
    assert 'pip install "qcheck[ray]"' in capsys.readouterr().err
    assert not (policy.parent / "noray").exists()
