"""Progress on stderr: bars with time left, plain lines, JSON lines, or nothing; the summary on stdout."""

import io
import json

from helpers import basic_policy

from qcheck.cli.main import main
from qcheck.cli.progress import Reporter, eta_seconds, format_seconds


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def drive(mode, total=10, step=1.0):
    clock, out = Clock(), io.StringIO()
    rep = Reporter(mode, out, clock=clock, min_interval=0.0)
    rep.log("calibrate ...")
    for i in range(1, total + 1):
        rep.progress("calibrate", i, total)
        clock.t += step
    return out.getvalue()


def test_eta_is_the_average_pace_times_what_is_left():
    assert eta_seconds(6.0, 3, 10) == 14.0
    assert eta_seconds(0.0, 0, 10) is None
    assert format_seconds(75) == "1:15" and format_seconds(3725) == "1:02:05"


def test_json_lines_carry_done_total_and_eta():
    events = [json.loads(line) for line in drive("json").splitlines()]
    assert events[0] == {"event": "log", "message": "calibrate ..."}
    prog = [e for e in events if e["event"] == "progress"]
    assert [e["done"] for e in prog] == list(range(1, 11))
    # one second per sample, counted from the first report: after 4 samples, 3 s for 3, 6 left -> 6 s
    fourth = prog[3]
    assert fourth["elapsed_s"] == 3.0 and fourth["eta_s"] == 6.0
    assert prog[-1]["eta_s"] == 0.0


def test_bar_redraws_in_place_and_ends_the_line():
    text = drive("bar")
    assert text.count("\n") == 2  # the log line, and the finished bar
    assert "[############............] 5/10 samples  0:04, ~0:05 left" in text
    assert text.rstrip("\n").endswith("10/10 samples  0:09")


def test_plain_writes_one_line_per_stage_and_quiet_nothing():
    assert drive("plain").splitlines() == ["  calibrate ...", "    calibrate: 10 samples in 0:09"]
    assert drive("quiet") == ""


def test_run_json_mode_keeps_stdout_parseable(tmp_path, capsys):
    policy = basic_policy(tmp_path)
    assert main(["run", str(policy), "--json"]) == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["verdict"] == "pass" and summary["output_folder"].endswith("out")
    events = [json.loads(line) for line in cap.err.splitlines()]
    stages = {e["stage"] for e in events if e["event"] == "progress"}
    assert {"calibrate", "measure"} <= stages
    last = [e for e in events if e.get("stage") == "calibrate"][-1]
    assert last["done"] == last["total"] == 8 and last["eta_s"] == 0.0


def test_run_quiet_prints_nothing_and_the_summary_fits_a_screen(tmp_path, capsys):
    policy = basic_policy(tmp_path)
    assert main(["run", str(policy), "--quiet"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    assert main(["run", str(policy)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0] == "verdict: PASS" and len(lines) <= 24
    assert any(line.startswith("recipe: uint8 activations, int8 weights per channel") for line in lines)
    assert f"report: {tmp_path / 'out' / 'report.html'}" in out


def test_json_errors_reach_stdout(tmp_path, capsys):
    policy = basic_policy(tmp_path, model="missing.onnx")
    assert main(["run", str(policy), "--json"]) == 2
    err = json.loads(capsys.readouterr().out)
    assert err["exit_code"] == 2 and "model file not found" in err["error"][0]["message"]
    assert err["error"][0]["line"] == 1


def test_every_command_has_help_with_an_example(capsys):
    import pytest

    from qcheck.cli.parser import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"init", "validate", "run", "report", "rules", "docs"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "example" in text and f"qcheck {name}" in text.split("example", 1)[1], name


def test_a_bar_cut_short_is_ended_before_anything_else_is_printed():
    clock, out = Clock(), io.StringIO()
    rep = Reporter("bar", out, clock=clock, min_interval=0.0)
    rep.progress("calibrate", 1, 4)
    rep.progress("calibrate", 2, 4)
    rep.finish()  # the run failed on sample 3
    assert out.getvalue().endswith("2/4 samples  0:00, ~0:00 left\x1b[K\n")
    rep.finish()
    rep.log("next")
    assert out.getvalue().endswith("\x1b[K\n  next\n")


def test_plain_prints_progress_with_time_left_at_a_steady_interval():
    text = drive("plain", total=10, step=20.0)  # 20 s a sample: 3 minutes in all
    lines = text.splitlines()
    assert lines[0] == "  calibrate ..."
    # a line once PLAIN_INTERVAL (30 s) has passed since the last: after samples 3, 5, 7, 9
    assert lines[1] == "    calibrate: 3/10 samples, 0:40 so far, ~2:20 left"  # 40 s for 2 samples, 7 left
    assert [line.split(":")[1].split()[0] for line in lines[1:5]] == ["3/10", "5/10", "7/10", "9/10"]
    assert lines[-1] == "    calibrate: 10 samples in 3:00"


def test_plain_heartbeat_names_the_running_stage_when_nothing_reports():
    import time

    out = io.StringIO()
    rep = Reporter("plain", out)
    rep.log("quantize ...")
    rep.start_heartbeat(0.05)
    try:
        for _ in range(500):  # wait for the thread (at most 5 s)
            if "still working: quantize (" in out.getvalue():
                break
            time.sleep(0.01)
    finally:
        rep.close()
    assert "    still working: quantize (" in out.getvalue()


def test_non_tty_run_prints_plain_progress_lines(tmp_path, capsys, monkeypatch):
    import re

    from qcheck.cli import progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)  # every report is "an interval later"
    policy = basic_policy(tmp_path)
    assert main(["run", str(policy)]) == 0  # capsys: stderr is not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err  # no bar redraws in a log
    assert re.search(r"^    measure: [2-7]/8 samples, \d+:\d\d so far, ~\d+:\d\d left$", err, re.M), err
