"""A run cannot destroy a user's files, run code it was not given, or leave debris (issue: trust).

Signals to a real `python -m qcheck run` process, a full disk, leftovers of killed runs, output folders
that would swallow the user's home, and a model whose input name tries to write policy lines into
`qcheck init`'s output. Each test checks what must (not) be on disk afterwards.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import yaml
from helpers import REPO, basic_policy, write_npy_samples
from onnx import TensorProto, helper

from qcheck.cli.main import main
from qcheck.results.files import write_layer_stats
from qcheck.run.output_folder import MANIFEST, read_manifest
from qcheck.scratch import MARK


def _previous_run(tmp: Path) -> bytes:
    """A finished run in tmp/out; returns its results.json bytes."""
    policy = tmp / "qcheck.yaml"
    assert main(["run", str(policy), "--quiet"]) in (0, 1)
    return (tmp / "out" / "results.json").read_bytes()


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".qcheck-" in p.name or p.name.startswith("qcheck-"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_run_keeps_the_previous_output_and_leaves_nothing(tmp_path, signum):
    """The metric function announces it is running (the run is mid-measurement), then waits to be stopped."""
    (tmp_path / "slow.py").write_text(
        "import pathlib, time\n"
        f"def f(a, b):\n    pathlib.Path({str(tmp_path / 'started')!r}).touch()\n    time.sleep(60)\n    return 1.0\n")
    basic_policy(tmp_path, analyses=False)
    before = _previous_run(tmp_path)
    policy = yaml.safe_load((tmp_path / "qcheck.yaml").read_text())
    policy["metrics"] = {"slow": {"task": "python", "function": "slow:f"}}
    (tmp_path / "qcheck.yaml").write_text(yaml.safe_dump(policy))
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-m", "qcheck", "run", str(tmp_path / "qcheck.yaml"), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the metric"
        time.sleep(0.05)
    assert _debris(tmp_path) and _debris(scratch)  # mid-run: a staging folder and a temporary folder exist
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines() == [f"qcheck: stopped by {signal.Signals(signum).name}; the previous output folder "
                                        "is unchanged and the unfinished one was removed"]
    assert (tmp_path / "out" / "results.json").read_bytes() == before
    assert _debris(tmp_path) == [] and _debris(scratch) == []


def test_leftovers_of_killed_runs_are_swept_and_nothing_else(tmp_path, monkeypatch):
    basic_policy(tmp_path, analyses=False)
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    def leftover(path: Path, pid: int, marked: bool = True) -> Path:
        path.mkdir()
        (path / "model.onnx").write_bytes(b"x" * 1000)
        if marked:
            (path / MARK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
        return path

    stale_staging = leftover(tmp_path / ".out.qcheck-staging-1-deadbeef", dead.pid)
    stale_temp = leftover(scratch / "qcheck-run-1-deadbeef", dead.pid)
    live = leftover(scratch / "qcheck-run-2-cafe", os.getppid())  # made by a process that still runs
    unmarked = leftover(scratch / "qcheck-mine", dead.pid, marked=False)  # not qcheck's: the user's
    assert main(["run", str(tmp_path / "qcheck.yaml"), "--quiet"]) in (0, 1)
    assert not stale_staging.exists() and not stale_temp.exists()
    assert live.exists() and unmarked.exists()


def test_disk_full_while_staging_names_the_folder_and_keeps_the_previous_run(tmp_path, monkeypatch, capsys):
    basic_policy(tmp_path, analyses=False)
    before = _previous_run(tmp_path)
    import qcheck.run.pipeline as pipeline

    def full(results, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(pipeline, "write_json", full)
    assert main(["run", str(tmp_path / "qcheck.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"qcheck.yaml:7: report.out: cannot write the outputs next to {tmp_path / 'out'}: No space left on device" \
           in err and "Traceback" not in err and ".qcheck-staging" not in err
    assert (tmp_path / "out" / "results.json").read_bytes() == before
    assert _debris(tmp_path) == []


def test_home_and_its_parents_are_never_an_output_folder(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    (home / "thesis.tex").write_text("precious")
    monkeypatch.setenv("HOME", str(home))
    basic_policy(tmp_path, analyses=False)
    for out in (str(home), str(home.parent)):
        assert main(["run", str(tmp_path / "qcheck.yaml"), "--quiet", "--out", out]) == 2
        err = capsys.readouterr().err
        assert "--out: refusing to use" in err and "home folder" in err
    assert (home / "thesis.tex").read_text() == "precious"


def test_out_flag_refuses_the_policy_folder(tmp_path, capsys):
    basic_policy(tmp_path, analyses=False)
    assert main(["run", str(tmp_path / "qcheck.yaml"), "--quiet", "--out", str(tmp_path)]) == 2
    assert f"--out: refusing to use {tmp_path} as the output folder: it contains the policy file" in \
        capsys.readouterr().err
    assert (tmp_path / "qcheck.yaml").exists() and (tmp_path / "model.onnx").exists()


def test_a_run_writes_a_manifest_of_exactly_its_files_and_replaces_only_that(tmp_path):
    basic_policy(tmp_path, analyses=False)
    _previous_run(tmp_path)
    listed = read_manifest(tmp_path / "out")
    on_disk = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert sorted(listed + [MANIFEST]) == on_disk and "results.json" in listed and MARK not in listed
    _previous_run(tmp_path)  # replaced: it holds only what the manifest lists


def test_two_runs_at_once_into_one_folder_never_share_a_staging_folder(tmp_path):
    from qcheck.run.output_folder import OutputDir

    a, b = OutputDir(tmp_path / "out"), OutputDir(tmp_path / "out")
    assert a.staging != b.staging and a.staging.is_dir() and b.staging.is_dir()
    (a.path("results.json")).write_text("a")
    b.discard()
    assert a.path("results.json").read_text() == "a"  # b's cleanup left a's work alone
    a.commit()
    assert (tmp_path / "out" / "results.json").read_text() == "a" and _debris(tmp_path) == []


def _hostile_model(folder: Path) -> Path:
    """A model whose input name carries a newline and a `metrics:` entry naming a .py shipped beside it."""
    name = 'x"\nmetrics:\n  evil: {task: python, function: "evil:run"}\n#'
    graph = helper.make_graph([helper.make_node("Relu", [name], ["y"])], "g",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "evil.py").write_text(f"open({str(folder / 'pwned')!r}, 'w').close()\ndef run(f, q):\n    return 1.0\n")
    return folder / "model.onnx"


def test_init_keeps_a_hostile_input_name_a_string(tmp_path):
    model = _hostile_model(tmp_path)
    write_npy_samples(tmp_path / "calib", 4, shape=(1, 4))
    assert main(["init", str(model), "-o", str(tmp_path / "qcheck.yaml"), "--data", "calib"]) == 0
    doc = yaml.safe_load((tmp_path / "qcheck.yaml").read_text())
    name = onnx.load(str(model)).graph.input[0].name
    assert list(doc["inputs"]) == [name]
    assert all(m.get("task") != "python" for m in (doc.get("metrics") or {}).values())  # only init's top-1 metric
    assert main(["validate", str(tmp_path / "qcheck.yaml")]) == 0
    assert main(["run", str(tmp_path / "qcheck.yaml"), "--quiet"]) in (0, 1)
    assert not (tmp_path / "pwned").exists()


def test_csv_cells_that_would_be_formulas_stay_text(tmp_path):
    rows = [{"name": '=HYPERLINK("http://x","y")', "node": "+cmd", "op_type": "@SUM", "kind": "activation",
             "scale": -0.5}]
    write_layer_stats(rows, tmp_path / "layer_stats.csv")
    with open(tmp_path / "layer_stats.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["name"] == "'=HYPERLINK(\"http://x\",\"y\")" and row["node"] == "'+cmd" and row["op_type"] == "'@SUM"
    assert row["scale"] == "-0.5"  # numbers are numbers, negative ones included


def test_report_never_overwrites_a_report_it_did_not_write(tmp_path, capsys):
    basic_policy(tmp_path, analyses=False)
    _previous_run(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("my own page")
    assert main(["report", str(tmp_path / "out" / "results.json"), "--out", str(mine), "--formats", "html"]) == 2
    assert "already holds report.html, which qcheck did not write" in capsys.readouterr().err
    assert (mine / "report.html").read_text() == "my own page"
    assert main(["report", str(tmp_path / "out" / "results.json"), "--formats", "html"]) == 0  # its own folder: fine
    assert "report.html" in read_manifest(tmp_path / "out")
