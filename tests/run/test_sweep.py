"""`qcheck sweep`: policies × overrides as ordinary runs, on a local process pool and on a real local Ray cluster.

Three tiny policies (tests/helpers.py models), two schemes each. The Ray tests start a real
cluster on this machine (no mock; bound to 127.0.0.1, as qcheck starts one: qcheck/compute/ray_cluster.py) and kill a worker
process in the middle of a sweep.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import matmul_stack, residual_cnn, small_cnn, write_npy_samples, write_policy
from pypdf import PdfReader

from qcheck.cli.main import main
from qcheck.errors import PolicyError
from qcheck.run.sweep import ExecutorSpec, load_sweep, run_sweep
from qcheck.run.sweep.spec import job_policy
from qcheck.run.sweep.summary import comparable

SWEEP = """policies: [small.yaml, "models/*.yaml"]
matrix:
  quantization.scheme: [int8, float16]
out: out
"""


def _policy(path: Path, model: str, require: str, calib: str = "calib") -> Path:
    return write_policy(path, {"model": model, "data": {"calibration": calib}, "require": [require],
                               "analyses": False, "report": {"out": "ignored", "formats": ["html"]}})


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """small.yaml passes; models/wide.yaml fails int8 against its strict requirement, float16 passes it; models/residual.yaml passes."""
    tmp = tmp_path_factory.mktemp("zoo")
    small_cnn(tmp / "small.onnx")
    small_cnn(tmp / "wide.onnx", seed=3, classes=20)
    residual_cnn(tmp / "residual.onnx", seed=1)
    write_npy_samples(tmp / "calib", 6)
    (tmp / "models").mkdir()
    _policy(tmp / "small.yaml", "small.onnx", "model.cosine >= 0.99")
    _policy(tmp / "models" / "wide.yaml", "../wide.onnx", "model.cosine >= 0.999999", calib="../calib")
    write_policy(tmp / "models" / "residual.yaml", {"model": "../residual.onnx", "data": {"calibration": "../calib"},
                                                    "analyses": False, "report": {"formats": ["html"]}})
    (tmp / "sweep.yaml").write_text(SWEEP)
    return tmp


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary" / "summary.json").read_text())


@pytest.fixture(scope="module")
def local_sweep(zoo):
    code = main(["sweep", str(zoo / "sweep.yaml"), "--workers", "2", "--quiet"])
    return code, _summary(zoo / "out")


def test_local_sweep_runs_every_combination_as_an_ordinary_run(zoo, local_sweep):
    code, summary = local_sweep
    rows = {r["run"]: r for r in summary["runs"]}
    assert sorted(rows) == sorted(f"{p}/scheme-{s}" for p in ("small", "wide", "residual") for s in ("int8", "float16"))
    for r in rows.values():  # each row is what its own run's results.json says
        results = json.loads((Path(r["folder"]) / "results.json").read_text())
        assert results["quantization"]["scheme"] == r["scheme"] == r["settings"]["quantization.scheme"]
        assert r["cosine"] == results["model_metrics"]["aggregate"]["cosine"]
        assert r["status"] == results["verdict"]["status"]
        assert (Path(r["folder"]) / "report.html").is_file()
    assert rows["wide/scheme-int8"]["status"] == "fail" and rows["small/scheme-int8"]["status"] == "pass"
    assert code == 1 == summary["exit_code"]  # the worst run: a failed requirement
    # float16 is far closer to float than int8 on the same model
    assert 1 - rows["small/scheme-float16"]["cosine"] < 1 - rows["small/scheme-int8"]["cosine"]
    # recommended for cpu: the first scheme in cpu's order of preference whose run passed
    assert rows["small/scheme-float16"]["recommended"] == "int8"
    assert rows["wide/scheme-int8"]["recommended"] == "float16"  # int8 failed there, float16 passed


def test_summary_files_agree(zoo, local_sweep):
    _, summary = local_sweep
    folder = zoo / "out" / "summary"
    csv_rows = (folder / "summary.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(summary["runs"]) and csv_rows[0].startswith("run,policy,model")
    html = (folder / "summary.html").read_text()
    assert html.count('href="../runs/') == 6 and "FAIL (model.cosine)" in html
    text = " ".join(p.extract_text() for p in PdfReader(folder / "summary.pdf").pages)
    assert "wide" in text and "residual" in text and "FAIL" in text


def test_second_sweep_reuses_finished_runs_and_reruns_what_changed(zoo, local_sweep):
    first = {r["run"]: r for r in local_sweep[1]["runs"]}
    stamp = (zoo / "out/runs/small/scheme-int8/results.json").stat().st_mtime_ns
    write_npy_samples(zoo / "calib", 6)  # same files, same bytes: same fingerprint
    small_cnn(zoo / "wide.onnx", seed=4, classes=20)  # the wide model changed: its two runs are redone
    try:
        assert main(["sweep", str(zoo / "sweep.yaml"), "--workers", "1", "--quiet"]) == 1
        again = {r["run"]: r for r in _summary(zoo / "out")["runs"]}
        assert {k for k, r in again.items() if not r["reused"]} == {"wide/scheme-int8", "wide/scheme-float16"}
        assert again["wide/scheme-int8"]["fingerprint"] != first["wide/scheme-int8"]["fingerprint"]
        assert again["small/scheme-int8"]["cosine"] == first["small/scheme-int8"]["cosine"]
        assert (zoo / "out/runs/small/scheme-int8/results.json").stat().st_mtime_ns == stamp  # not redone
        # a run with no record (interrupted before it finished) is the only one run again
        (zoo / "out/state/residual__scheme-float16.json").unlink()
        assert main(["sweep", str(zoo / "sweep.yaml"), "--workers", "1", "--quiet"]) == 1
        assert [r["run"] for r in _summary(zoo / "out")["runs"] if not r["reused"]] == ["residual/scheme-float16"]
    finally:  # the same bytes as before, for the tests that compare with the first sweep
        small_cnn(zoo / "wide.onnx", seed=3, classes=20)


def test_bad_override_is_an_error_at_the_sweep_line(zoo, capsys):
    (zoo / "bad.sweep.yaml").write_text("policies: [small.yaml]\nmatrix:\n  quantization.scheme:\n"
                                        "    - int8\n    - int9\n  quantization.calibraton: [minmax]\n")
    spec = load_sweep(zoo / "bad.sweep.yaml")
    with pytest.raises(PolicyError) as exc:
        job_policy(next(j for j in spec.jobs if j.settings["quantization.scheme"] == "int9"))
    lines = {p.line: p.message for p in exc.value.problems}
    assert all(p.file == str(zoo / "bad.sweep.yaml") for p in exc.value.problems)
    assert "got 'int9'" in lines[5] and "unknown key 'calibraton'" in lines[6]
    assert main(["validate", str(zoo / "bad.sweep.yaml")]) == 2
    err = capsys.readouterr().err
    assert "bad.sweep.yaml:5:" in err and "Traceback" not in err


def test_matrix_mistakes_are_refused_at_their_line_before_any_run(zoo):
    """A repeated value would give two runs one folder; a matrix that multiplies out to 4**8 runs is a typo, not a
    plan: both refused at the sweep file's line, in well under a second (nothing is expanded first)."""
    (zoo / "dup.sweep.yaml").write_text("policies: [small.yaml]\nmatrix:\n  quantization.scheme: [int8, a16w8, int8]\n")
    with pytest.raises(PolicyError) as info:
        load_sweep(zoo / "dup.sweep.yaml")
    assert "dup.sweep.yaml:3:" in str(info.value) and "non-unique" in str(info.value)
    keys = "".join(f"  k{i}.x: [1, 2, 3, 4]\n" for i in range(8))
    (zoo / "big.sweep.yaml").write_text("policies: [small.yaml]\nmatrix:\n" + keys)
    with pytest.raises(PolicyError) as info:
        load_sweep(zoo / "big.sweep.yaml")
    assert "big.sweep.yaml:2:" in str(info.value) and f"{4 ** 8:,} runs" in str(info.value)  # line 2: matrix:


def test_a_recursive_glob_over_too_many_folders_is_refused_at_its_line(zoo, monkeypatch):
    """`/**/*.yaml` would walk the whole disk (it hung a sweep before): a recursive glob over more folders than
    the limit is refused at its line; the same glob over a tree within the limit still finds the policy."""
    import qcheck.run.sweep.spec as spec

    tree = zoo / "tree"
    for i in range(6):
        (tree / f"d{i}").mkdir(parents=True)
    (tree / "d3" / "p.yaml").write_text((zoo / "small.yaml").read_text().replace("model: ", "model: ../../"))
    (zoo / "wide.sweep.yaml").write_text("out: wide\npolicies:\n  - tree/**/*.yaml\n")
    monkeypatch.setattr(spec, "MAX_GLOB_FOLDERS", 5)  # the tree holds 7 folders: tree and d0..d5
    with pytest.raises(PolicyError) as info:
        load_sweep(zoo / "wide.sweep.yaml")
    assert "wide.sweep.yaml:3:" in str(info.value) and "more than 5 folders" in str(info.value)
    monkeypatch.setattr(spec, "MAX_GLOB_FOLDERS", 7)
    assert [Path(j.policy).name for j in load_sweep(zoo / "wide.sweep.yaml").jobs] == ["p.yaml"]


def test_values_whose_folder_names_would_collide_get_distinct_folders(zoo):
    """'a b', 'a-b' and 'a/b' all slug to 'a-b': each gets a short hash of its overrides; 'a_b' keeps its name."""
    (zoo / "names.sweep.yaml").write_text('policies: [small.yaml]\nmatrix:\n  report.title: ["a b", "a-b", "a/b", a_b]\n')
    jobs = load_sweep(zoo / "names.sweep.yaml").jobs
    outs = [j.out for j in jobs]
    assert len(set(outs)) == 4
    assert [Path(o).name for o in outs][3] == "title-a_b"
    assert all(Path(o).name.startswith("title-a-b-") and len(Path(o).name) == len("title-a-b-") + 8 for o in outs[:3])


def test_validate_checks_every_combination_with_its_model_and_data(zoo, capsys):
    assert main(["validate", str(zoo / "sweep.yaml")]) == 0
    assert "6 runs: 3 policies x 2 combinations" in capsys.readouterr().out


def test_a_policy_error_is_exit_2_and_the_other_runs_still_run(tmp_path):
    small_cnn(tmp_path / "m.onnx")
    write_npy_samples(tmp_path / "calib", 4)
    _policy(tmp_path / "good.yaml", "m.onnx", "model.cosine >= 0.9")
    write_policy(tmp_path / "broken.yaml", {"model": "m.onnx", "data": {"calibration": "missing"}})
    (tmp_path / "s.yaml").write_text("policies: '*.yaml'\nout: o\n")
    summary = run_sweep(load_sweep(tmp_path / "s.yaml"), ExecutorSpec(workers=1), formats=("html",))
    rows = {r["policy_name"]: r for r in summary["runs"]}
    assert summary["exit_code"] == 2 and rows["broken"]["exit_code"] == 2 and rows["good"]["status"] == "pass"
    assert "broken.yaml:3: calibration data not found" in rows["broken"]["message"]


def test_ray_executor_without_ray_says_how_to_install_it(zoo, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):  # Ray not installed: its import fails, as on a machine without the extra
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["sweep", str(zoo / "sweep.yaml"), "--executor", "ray", "--out", str(zoo / "noray")]) == 2
    assert 'pip install "qcheck[ray]"' in capsys.readouterr().err
    assert not (zoo / "noray").exists()


# ---- a real local Ray cluster --------------------------------------------------------------------------------

def test_ray_sweep_gives_the_local_summary(zoo, local_sweep, ray_cluster):
    code = main(["sweep", str(zoo / "sweep.yaml"), "--executor", "ray", "--out", str(zoo / "ray-out"), "--quiet"])
    summary = _summary(zoo / "ray-out")
    assert code == 1 and summary["executor"]["kind"] == "ray" and summary["executor"]["cluster_cpus"] == 2
    assert not any(r["reused"] for r in summary["runs"])
    assert comparable(summary) == comparable(local_sweep[1])  # same rows, same numbers


def _stack_policy(folder: Path) -> Path:
    """A policy whose search screens: eight MatMuls, each adding a little int8 error (helpers.matmul_stack)."""
    folder.mkdir(parents=True, exist_ok=True)
    matmul_stack(folder / "model.onnx")
    write_npy_samples(folder / "calib", 16, shape=(1, 32))
    write_npy_samples(folder / "eval", 8, shape=(1, 32), seed=7, scale=0.5)
    return write_policy(folder / "stack.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
        "metrics": {"y_err": {"output": "y", "metric": "max_abs"}}, "require": ["y_err <= 0.01"],
        "analyses": {"samples": 4, "curves": False, "distributions": False, "confirm": False},
        "report": {"formats": ["html"]},
        "search": {"remedies": ["int16_activations", "keep_float"],
                   "budget": {"max_float_nodes": 8, "max_int16_tensors": 8, "max_trials": 40}}})


def test_a_ray_sweep_runs_each_runs_analyses_and_screening_on_its_cluster(tmp_path, ray_cluster):
    """`qcheck sweep --executor ray`: a run's node sensitivity and the search's screening go to the cluster its
    task runs on (not to threads of the task's process), with the numbers of the same run on this machine."""
    from qcheck.policy.loader import load_policy
    from qcheck.run.pipeline import run

    policy = _stack_policy(tmp_path)
    (tmp_path / "sweep.yaml").write_text("policies: [stack.yaml]\nout: out\n")
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--executor", "ray", "--quiet"]) == 0
    [path] = (tmp_path / "out" / "runs").glob("*/*/results.json")
    on_ray = json.loads(path.read_text())
    run(load_policy(policy), out=tmp_path / "here")
    here = json.loads((tmp_path / "here" / "results.json").read_text())  # as written: infinities as text
    assert on_ray["analyses"]["shards"]["kind"] == "ray" and here["analyses"]["shards"]["kind"] == "threads"
    screening = on_ray["search"]["screening"]["shards"]
    assert screening["kind"] == "ray" and screening["tasks"] > 0 and screening["groups"] > 0
    assert on_ray["analyses"]["sensitivity"]["nodes"] == here["analyses"]["sensitivity"]["nodes"]

    def by_recipe(results):
        return {c["recipe_key"]: {k: v for k, v in c.items() if k not in ("id", "latency_ms")}
                for c in results["search"]["candidates"]}

    ray_cands, local_cands = by_recipe(on_ray), by_recipe(here)
    common = set(ray_cands) & set(local_cands)
    assert len(common) > 10 and all(ray_cands[k] == local_cands[k] for k in common)
    chosen = [r["search"]["candidates"][r["search"]["chosen"]]["recipe_key"] for r in (on_ray, here)]
    assert chosen[0] == chosen[1] and on_ray["verdict"]["status"] == "pass"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process, seconds: float = 180.0) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"the Ray Client server did not listen on {port} in {seconds:.0f} s")


def test_ray_client_address_runs_the_sweep_on_a_started_cluster(zoo, local_sweep, tmp_path):
    """`ray start --head` with a Ray Client server, as a team runs a cluster; the sweep goes to it through
    --address ray://127.0.0.1:port. Ray turns token authentication on when a token exists (any earlier local
    cluster writes ~/.ray/auth_token), and the client must then send it: the same summary as the local run."""
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")
    import subprocess
    import sys

    ray_cli = str(Path(sys.executable).parent / "ray")
    client_port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    # --block: this process owns the cluster; ending it ends the cluster (`ray stop` would end every Ray
    # cluster on the machine, the other tests' included)
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--port", str(_free_port()), "--num-cpus", "2",
                             "--ray-client-server-port", str(client_port), "--include-dashboard", "false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mp = pytest.MonkeyPatch()
    mp.delenv("RAY_AUTH_MODE", raising=False)
    try:
        _wait_for_port(client_port, head)
        code = main(["sweep", str(zoo / "sweep.yaml"), "--executor", "ray", "--address",
                     f"ray://127.0.0.1:{client_port}", "--out", str(tmp_path / "client-out"), "--quiet"])
    finally:
        mp.undo()
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=120)
    summary = _summary(tmp_path / "client-out")
    assert code == 1 and summary["executor"]["address"] == f"ray://127.0.0.1:{client_port}"
    assert comparable(summary) == comparable(local_sweep[1])


def _kill_first_running_worker(runs: Path, killed: list, stop: threading.Event) -> None:
    """A run stages its outputs in a marked staging folder (qcheck/run/output_folder.py, qcheck/scratch.py) whose
    mark names the worker process running it. Kill it with SIGKILL, as the OOM killer would."""
    while not stop.is_set() and not killed:
        for mark in runs.glob("*/.*.qcheck-staging-*/.qcheck-scratch"):
            try:
                pid = json.loads(mark.read_text())["pid"]
            except (OSError, ValueError):  # being written: look again
                continue
            staging = mark.parent
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, staging.name))
            return
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["ray", "local"])
def test_a_worker_killed_mid_sweep_does_not_lose_a_run(zoo, local_sweep, kind, request):
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    spec = load_sweep(zoo / "sweep.yaml", out=zoo / f"killed-{kind}")
    killed, stop = [], threading.Event()
    watcher = threading.Thread(target=_kill_first_running_worker, args=(spec.out / "runs", killed, stop))
    watcher.start()
    try:
        summary = run_sweep(spec, ExecutorSpec(kind=kind, workers=2), formats=("html",))
    finally:
        stop.set()
        watcher.join()
    assert killed, "no run was seen running"
    pid, staging = killed[0]
    rows = summary["runs"]
    assert len(rows) == 6 and all(r["exit_code"] in (0, 1) for r in rows)  # every run has its result
    assert all(not r["worker"].endswith(f":{pid}") for r in rows)  # none came from the killed process
    assert comparable(summary) == comparable(local_sweep[1])


def test_interrupting_a_sweep_loses_only_the_runs_in_flight(zoo):
    """SIGINT to the driver (as `kill -INT` sends it; Ctrl-C reaches the workers too): exit 130, every finished run
    recorded, nothing started after the interrupt."""
    import subprocess
    import sys

    out = zoo / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "qcheck", "sweep", str(zoo / "sweep.yaml"), "--workers", "1",
                             "--out", str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("state/*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "qcheck: stopped by SIGINT; finished runs are kept" in err
    assert "internal error" not in err
    recorded = {p.stem for p in out.glob("state/*.json")}
    folders = {f"{p.parent.name}__{p.name}" for p in out.glob("runs/*/*") if not p.name.startswith(".")}
    assert recorded and recorded <= folders and len(recorded) < 6  # every finished run kept, with its record
    # at most the one run in flight (one worker) got further (finished, or its staging folder left when a signal
    # landed in its clean-up), and no run started after the interrupt
    assert len(folders - recorded) + len(list(out.glob("runs/*/.*"))) <= 1
