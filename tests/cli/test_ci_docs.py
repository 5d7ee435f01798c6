"""The CI examples in docs/ci/ work: their `qcheck` commands run as written on a small policy."""

import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

import yaml
from helpers import REPO, basic_policy

DOCS = REPO / "docs" / "ci"


def run_as_written(command: str, cwd, env: dict) -> subprocess.CompletedProcess:
    """Run a documented `qcheck ...` command with this checkout's qcheck (`python -m qcheck` for `qcheck`)."""
    args = shlex.split(command)
    assert args[0] == "qcheck", command
    return subprocess.run([sys.executable, "-m", "qcheck", *args[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _env(tmp_path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), GITHUB_STEP_SUMMARY=str(tmp_path / "step_summary.md"))
    env.pop("CI", None)
    return env


def test_github_workflow_steps_run(tmp_path):
    workflow = yaml.safe_load((DOCS / "qcheck-github-workflow.yml").read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    commands = [s["run"] for s in steps if str(s.get("run", "")).startswith("qcheck ")]
    assert commands, "the workflow runs qcheck"
    basic_policy(tmp_path, report={"out": "qcheck-out", "formats": ["html"]})
    for command in commands:
        done = run_as_written(command, tmp_path, _env(tmp_path))
        assert done.returncode == 0, done.stderr
    junit = next(s["with"]["report_paths"] for s in steps if "junit" in s.get("uses", ""))
    root = ET.parse(tmp_path / junit).getroot()
    assert root.tag == "testsuites" and int(root.get("tests")) >= 1
    artifact = next(s["with"]["path"] for s in steps if "upload-artifact" in s.get("uses", ""))
    assert (tmp_path / artifact / "report.html").is_file()
    assert "## qcheck:" in (tmp_path / "step_summary.md").read_text()


def test_pre_commit_hook_entry_runs_and_gates(tmp_path):
    config = yaml.safe_load((DOCS / "qcheck-pre-commit-hooks.yaml").read_text())
    hook = config["repos"][0]["hooks"][0]
    assert hook["language"] == "system" and hook["pass_filenames"] is False
    basic_policy(tmp_path, report={"out": "qcheck-out", "formats": ["html"]})
    assert run_as_written(hook["entry"], tmp_path, _env(tmp_path)).returncode == 0
    basic_policy(tmp_path, require=["model.sqnr >= 1000"],  # no int8 model comes near 1000 dB
                  report={"out": "qcheck-out", "formats": ["html"]})
    failed = run_as_written(hook["entry"], tmp_path, _env(tmp_path))
    assert failed.returncode == 1 and "FAIL" in (tmp_path / "qcheck-summary.md").read_text()
