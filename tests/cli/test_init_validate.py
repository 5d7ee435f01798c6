"""`qcheck init` writes a policy that loads and validates; `qcheck validate` checks data without running."""

import json

import numpy as np
import pytest
import yaml
from bad_models import two_inputs
from helpers import passthrough_model, small_cnn, write_npy_samples

from qcheck.cli.main import main
from qcheck.policy.loader import load_policy


def write_images(folder, n, size=(20, 24)):
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_init_for_an_image_classifier_validates_and_runs(tmp_path, capsys):
    small_cnn(tmp_path / "cnn.onnx")
    write_images(tmp_path / "pics", 5)
    policy = tmp_path / "p" / "qcheck.yaml"
    assert main(["init", str(tmp_path / "cnn.onnx"), "-o", str(policy), "--data", "../pics"]) == 0
    doc = yaml.safe_load(policy.read_text())
    assert doc["model"] == "../cnn.onnx"
    assert doc["inputs"] == {"x": {"shape": [1, 3, 16, 16]}}
    assert doc["data"]["preprocess"]["size"] == [16, 16] and doc["data"]["preprocess"]["layout"] == "NCHW"
    assert doc["metrics"] == {"logits_top1": {"output": "logits", "metric": "top1"}}
    assert "logits_top1 >= 0.98" in doc["require"]
    assert "x: float32 [1, 3, 16, 16]" in policy.read_text()  # the inputs, as comments
    assert "It looks like an image classifier" in policy.read_text()
    load_policy(policy)
    capsys.readouterr()
    assert main(["validate", str(policy), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["valid"] and summary["data"]["calibration"]["samples"] == 5
    assert summary["data"]["calibration"]["format"] == "images"
    # and the starter policy is a real one: qcheck runs it
    doc["report"]["formats"] = ["html"]
    policy.write_text(yaml.safe_dump(doc))
    assert main(["run", str(policy), "--quiet"]) in (0, 1)
    assert (tmp_path / "p" / "qcheck-out" / "report.html").exists()


def test_init_for_a_two_input_model_asks_for_npy_per_input(tmp_path, capsys):
    two_inputs(tmp_path / "m.onnx")
    policy = tmp_path / "qcheck.yaml"
    assert main(["init", str(tmp_path / "m.onnx"), "-o", str(policy)]) == 0
    text = policy.read_text()
    doc = yaml.safe_load(text)
    assert "preprocess" not in doc["data"]  # not images
    assert doc["metrics"] == {"y_top1": {"output": "y", "metric": "top1"}}  # y [1, 3] may be class scores
    assert "One sub-folder per input (a, b)" in text
    assert "It looks like a classifier" in text  # y [1, 3]
    # without data the policy points at the placeholder, and says so
    assert main(["validate", str(policy)]) == 2
    assert "calibration data not found" in capsys.readouterr().err
    for name in ("a", "b"):
        write_npy_samples(tmp_path / "calibration" / name, 3, shape=(1, 4), seed=ord(name))
    assert main(["validate", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "3 samples (npy-per-input)" in out and "warning: only 3 calibration" in out


def test_init_claims_no_kind_for_a_model_it_does_not_recognise(tmp_path):
    passthrough_model(tmp_path / "m.onnx", [1, 1, 64])  # a signal in, a signal out: no image, no class scores
    policy = tmp_path / "qcheck.yaml"
    assert main(["init", str(tmp_path / "m.onnx"), "-o", str(policy)]) == 0
    assert "It looks like" not in policy.read_text()


def test_init_gives_dynamic_image_sizes_a_guess_and_says_so(tmp_path):
    import onnx

    small_cnn(tmp_path / "cnn.onnx")
    m = onnx.load(str(tmp_path / "cnn.onnx"))
    for axis, name in ((0, "N"), (2, "H"), (3, "W")):
        m.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save(m, str(tmp_path / "dyn.onnx"))
    policy = tmp_path / "qcheck.yaml"
    assert main(["init", str(tmp_path / "dyn.onnx"), "-o", str(policy)]) == 0
    text = policy.read_text()
    assert yaml.safe_load(text)["inputs"]["x"]["shape"] == [1, 3, 224, 224]
    assert "x: float32 [N, 3, H, W]" in text and "dynamic in the model" in text


def test_init_does_not_overwrite(tmp_path, capsys):
    small_cnn(tmp_path / "cnn.onnx")
    policy = tmp_path / "qcheck.yaml"
    policy.write_text("mine")
    assert main(["init", str(tmp_path / "cnn.onnx"), "-o", str(policy)]) == 2
    assert "already exists" in capsys.readouterr().err and policy.read_text() == "mine"
    assert main(["init", str(tmp_path / "cnn.onnx"), "-o", str(policy), "--force"]) == 0


def test_init_on_a_bad_model_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "m.onnx").write_text("not a model")
    assert main(["init", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.yaml")]) == 2
    assert "not an ONNX model" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [("nan", "NaN"), ("shape", "has shape [1, 3, 8, 8]")])
def test_validate_reads_every_sample(tmp_path, capsys, bad, message):
    """A bad sample at the end is found without running the model."""
    small_cnn(tmp_path / "cnn.onnx")
    write_npy_samples(tmp_path / "calib", 6)
    last = np.load(tmp_path / "calib" / "5.npy")
    if bad == "nan":
        last.flat[0] = np.nan
    else:
        last = last[:, :, :8, :8]
    np.save(tmp_path / "calib" / "5.npy", last)
    (tmp_path / "q.yaml").write_text("model: cnn.onnx\ndata: {calibration: calib}\n")
    assert main(["validate", str(tmp_path / "q.yaml")]) == 2
    err = capsys.readouterr().err
    assert "5.npy" in err and message in err and "Traceback" not in err


def test_init_quotes_odd_tensor_names_and_makes_safe_metric_names(tmp_path, capsys):
    import onnx

    small_cnn(tmp_path / "cnn.onnx")
    m = onnx.load(str(tmp_path / "cnn.onnx"))
    rename = {"x": "input:0", "logits": "prob: yes"}
    for n in m.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        n.output[:] = [rename.get(o, o) for o in n.output]
    m.graph.input[0].name, m.graph.output[0].name = "input:0", "prob: yes"
    onnx.save(m, str(tmp_path / "odd.onnx"))
    write_npy_samples(tmp_path / "calib", 3)
    policy = tmp_path / "qcheck.yaml"
    assert main(["init", str(tmp_path / "odd.onnx"), "-o", str(policy), "--data", "calib"]) == 0
    doc = yaml.safe_load(policy.read_text())
    assert list(doc["inputs"]) == ["input:0"]
    assert doc["metrics"] == {"prob_yes_top1": {"output": "prob: yes", "metric": "top1"}}
    assert main(["validate", str(policy)]) == 0
