"""Errors blame the right party: qcheck's own bugs exit 3 with a traceback, the user's mistakes exit 2.

Neither kind of message names one of qcheck's temporary files: the user never saw them.
"""

import tempfile

import onnx
import pytest
from helpers import basic_policy, small_cnn

from qcheck.cli.main import main
from qcheck.cli.progress import Reporter
from qcheck.model.runtime import ModelBuildError, make_session

TEMP = tempfile.gettempdir() + "/qcheck-"  # the prefix of every working folder qcheck makes


def test_a_bug_in_qcheck_during_calibration_is_exit_3_with_its_traceback(tmp_path, monkeypatch, capsys):
    """The progress callback is qcheck's code that ORT's calibrator calls back into: its bug is not ORT's."""
    policy = basic_policy(tmp_path)
    shown = Reporter.progress

    def broken(self, stage, done, total):
        if stage == "calibrate":
            raise RuntimeError("progress bar bug")
        shown(self, stage, done, total)

    monkeypatch.setattr(Reporter, "progress", broken)
    assert main(["run", str(policy)]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: progress bar bug" in err
    assert "in broken" in err  # the traceback reaches the line that raised
    assert "please report it" in err
    assert "ONNX Runtime" not in err and TEMP not in err
    assert not (tmp_path / "out").exists()


def test_a_truncated_user_model_is_exit_2_naming_the_users_file(tmp_path, capsys):
    policy = basic_policy(tmp_path)
    model = tmp_path / "model.onnx"
    model.write_bytes(model.read_bytes()[:700])
    for command in ("validate", "run"):
        assert main([command, str(policy)]) == 2
        err = capsys.readouterr().err
        assert f"qcheck: error: {model}: the ONNX file is truncated or corrupt" in err
        assert "Traceback" not in err and TEMP not in err


def test_onnx_runtime_refusing_a_model_qcheck_built_is_a_bug_not_the_users(tmp_path):
    """Every session qcheck opens is on a model it built; ORT refusing one is reported as qcheck's bug."""
    model = onnx.load(str(small_cnn(tmp_path / "m.onnx")))
    model.graph.node[0].op_type = "NoSuchOp"  # what a faulty graph rewrite in qcheck would leave
    with pytest.raises(ModelBuildError, match="cannot load the emulation model qcheck built: .*NoSuchOp") as info:
        make_session(model, "emulation model")
    assert info.value.__cause__ is not None  # ORT's own exception is kept for the traceback
