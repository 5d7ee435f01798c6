"""`qcheck validate` lists every bad sample of a folder (up to a cap), not only the first."""

import numpy as np
from helpers import small_cnn, write_npy_samples, write_policy

from qcheck.cli.main import main
from qcheck.run.validate import MAX_SAMPLE_PROBLEMS


def _policy(tmp_path, n, nan_at=(), wrong_shape_at=()):
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", n)
    for i in nan_at:
        a = np.load(tmp_path / "calib" / f"{i}.npy")
        a.flat[3] = np.nan
        np.save(tmp_path / "calib" / f"{i}.npy", a)
    for i in wrong_shape_at:
        np.save(tmp_path / "calib" / f"{i}.npy", np.zeros((1, 3, 8, 8), np.float32))
    return write_policy(tmp_path / "qcheck.yaml", {"model": "model.onnx", "data": {"calibration": "calib"}})


def test_every_bad_sample_is_listed(tmp_path, capsys):
    policy = _policy(tmp_path, 12, nan_at=(0, 7), wrong_shape_at=(11,))
    assert main(["validate", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "sample 0.npy" in err and "sample 7.npy" in err and "11.npy" in err
    assert err.count("NaN") >= 2 and "Traceback" not in err


def test_the_list_is_capped_and_the_rest_counted(tmp_path, capsys):
    policy = _policy(tmp_path, MAX_SAMPLE_PROBLEMS + 5, nan_at=range(MAX_SAMPLE_PROBLEMS + 5))
    assert main(["validate", str(policy)]) == 2
    err = capsys.readouterr().err
    assert err.count("NaN value") == MAX_SAMPLE_PROBLEMS
    assert f"... and 5 more bad sample(s), {MAX_SAMPLE_PROBLEMS + 5} in all" in err
