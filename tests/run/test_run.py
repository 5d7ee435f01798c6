"""End to end on a small real model: numbers agree with an independent computation, files are right."""

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import basic_policy, write_npy_samples
from onnx import numpy_helper

from qcheck.cli.main import main


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One run of small_cnn with held-out evaluation data; shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    write_npy_samples(tmp / "eval", 6, seed=7)
    policy = basic_policy(tmp, data={"calibration": "calib", "evaluation": "eval"},
                          report={"out": "out", "formats": ["html", "pdf"]})
    code = run_cli("run", policy, "--quiet")
    results = json.loads((tmp / "out" / "results.json").read_text())
    return tmp, code, results


def eval_samples(tmp):
    return [np.load(tmp / "eval" / f"{i}.npy") for i in range(6)]


def test_writes_every_output(finished_run):
    tmp, code, results = finished_run
    assert code == 0 and results["verdict"]["status"] == "pass"
    names = {p.name for p in (tmp / "out").iterdir()}
    assert {"model.quant.onnx", "layer_stats.csv", "results.json", "report.html", "report.pdf", "ranges.json"} <= names
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out.")]  # no staging left behind


def test_model_metrics_match_plain_onnxruntime(finished_run):
    tmp, _, results = finished_run
    f = ort.InferenceSession(str(tmp / "model.onnx"))
    q = ort.InferenceSession(str(tmp / "out" / "model.quant.onnx"))
    fo = np.concatenate([f.run(None, {"x": x})[0] for x in eval_samples(tmp)]).astype(np.float64)
    qo = np.concatenate([q.run(None, {"x": x})[0] for x in eval_samples(tmp)]).astype(np.float64)
    out = results["model_metrics"]["outputs"][0]
    cos = float((fo * qo).sum() / np.sqrt((fo * fo).sum() * (qo * qo).sum()))
    assert out["cosine"] == pytest.approx(cos, rel=1e-9)
    assert out["mse"] == pytest.approx(float(((fo - qo) ** 2).mean()), rel=1e-9)
    assert out["max_abs"] == pytest.approx(float(np.abs(fo - qo).max()), rel=1e-9)
    assert out["top1"] == pytest.approx(float((fo.argmax(1) == qo.argmax(1)).mean()))
    assert results["model_metrics"]["aggregate"]["cosine"] == out["cosine"]


def test_input_tensor_statistics_match_numpy_quantization(finished_run):
    """x is quantized with ORT's uint8 rule from its calibrated range; redo it in numpy."""
    tmp, _, results = finished_run
    lo, hi = json.loads((tmp / "out" / "ranges.json").read_text())["ranges"]["x"]
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32((hi - lo) / 255)
    zp = int(np.rint(-lo / scale))
    xs = np.concatenate([x.ravel() for x in eval_samples(tmp)]).astype(np.float32)
    deq = (np.clip(np.rint(xs / scale) + zp, 0, 255) - zp).astype(np.float32) * scale
    err = xs.astype(np.float64) - deq
    row = next(t for t in results["tensors"] if t["name"] == "x")
    assert row["scale"] == pytest.approx(float(scale), rel=1e-6)
    assert row["zero_point"] == zp
    assert row["mean_squared_error"] == pytest.approx(float((err ** 2).mean()), rel=1e-6)
    assert row["rmse_scale"] == pytest.approx(math.sqrt((err ** 2).mean()) / float(scale), rel=1e-6)
    assert row["max_abs_error"] == pytest.approx(float(np.abs(err).max()), rel=1e-6)
    assert row["range"] == pytest.approx(255 * float(scale), rel=1e-6)


def test_weight_statistics_match_numpy_per_channel_quantization(finished_run):
    """Per-channel symmetric int8 weights: scale_c = max|w_c| / 127, values rounded to that grid."""
    tmp, _, results = finished_run
    w = numpy_helper.to_array(next(i for i in onnx.load(str(tmp / "model.onnx")).graph.initializer if i.name == "w2"))
    w = w.astype(np.float64)
    scale = np.abs(w).reshape(8, -1).max(axis=1).astype(np.float32).astype(np.float64) / 127
    s = scale.reshape(8, 1, 1, 1).astype(np.float32)
    deq = np.clip(np.rint(w / s), -127, 127) * s
    err = w - deq
    row = next(t for t in results["tensors"] if t["name"] == "w2")
    assert row["kind"] == "weight" and row["per_channel"] is True and row["op_type"] == "Conv"
    assert row["mean_squared_error"] == pytest.approx(float((err ** 2).mean()), rel=1e-4)
    assert row["rmse_scale"] == pytest.approx(float(np.sqrt(((err / s) ** 2).mean())), rel=1e-4)
    assert row["rmse_scale"] < 0.5  # rounding never errs by more than half a step


def test_local_and_whole_model_statistics_are_both_there(finished_run):
    _, _, results = finished_run
    acts = [t for t in results["tensors"] if t["kind"] == "activation"]
    assert len(acts) >= 5
    for t in acts:
        assert t["cosine"] is not None and t["whole_cosine"] is not None, t["name"]
    # errors accumulate along the graph: the last activation's whole-model error is at least its local error
    last = max(acts, key=lambda t: t["order"])
    assert last["whole_mean_squared_error"] >= last["mean_squared_error"] * 0.99


def test_layer_stats_csv_has_one_row_per_tensor(finished_run):
    import csv

    tmp, _, results = finished_run
    with open(tmp / "out" / "layer_stats.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results["tensors"])
    assert [r["name"] for r in rows] == [t["name"] for t in results["tensors"]]
    assert float(rows[0]["rmse_scale"]) == pytest.approx(results["tensors"][0]["rmse_scale"])


def test_report_re_renders_identically_from_results_alone(finished_run, tmp_path):
    tmp, _, _ = finished_run
    assert run_cli("report", tmp / "out" / "results.json", "--out", tmp_path, "--formats", "html") == 0
    assert (tmp_path / "report.html").read_text() == (tmp / "out" / "report.html").read_text()


def test_requirements_decide_the_exit_code(tmp_path):
    policy = basic_policy(tmp_path, require=["model.cosine >= 0.9", "model.sqnr >= 1000"])
    assert run_cli("run", policy, "--quiet") == 1
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    first, second = results["verdict"]["requirements"]
    assert first["holds"] and not second["holds"]
    assert second["values"]["model.sqnr"] < 1000


def test_clipping_is_flagged_and_reported_in_the_pdf(tmp_path):
    """Calibrate on small inputs, evaluate on large ones: activations clip, QC101 fires, the PDF names them."""
    from pypdf import PdfReader

    write_npy_samples(tmp_path / "loud", 4, scale=10.0, seed=5)
    policy = basic_policy(tmp_path, data={"calibration": "calib", "evaluation": "loud"},
                          report={"out": "out", "formats": ["pdf"]})
    assert run_cli("run", policy, "--quiet") in (0, 1)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    flagged = {f["tensor"] for f in results["findings"] if f["code"] == "QC101"}
    assert "x" in flagged  # the input itself is 10x beyond its calibrated range
    x = next(t for t in results["tensors"] if t["name"] == "x")
    assert x["clip_fraction"] > 0.5 and x["rmse_scale"] > 0.7
    text = "\n".join(page.extract_text() for page in PdfReader(tmp_path / "out" / "report.pdf").pages)
    for heading in ("Verdict", "Model and run", "Float vs quantized model outputs", "Error per layer", "Findings"):
        assert heading in text
    for name in flagged:
        assert name in text


def test_data_error_exits_2_and_keeps_the_previous_run(tmp_path, capsys):
    policy = basic_policy(tmp_path)
    assert run_cli("run", policy, "--quiet") == 0
    before = (tmp_path / "out" / "results.json").read_bytes()
    np.save(tmp_path / "calib" / "3.npy", np.zeros((1, 3, 9, 9), np.float32))
    assert run_cli("run", policy, "--quiet") == 2
    err = capsys.readouterr().err
    assert "3.npy" in err and "[1, 3, 9, 9]" in err and "Traceback" not in err
    assert (tmp_path / "out" / "results.json").read_bytes() == before


def test_policy_error_exits_2_with_file_and_line(tmp_path, capsys):
    policy = basic_policy(tmp_path, quantization={"calibraton": "minmax"})
    assert run_cli("run", policy) == 2
    err = capsys.readouterr().err
    assert f"{policy}:" in err and "unknown key 'calibraton'" in err and "Traceback" not in err


def test_refuses_to_replace_a_folder_that_is_not_a_run(tmp_path, capsys):
    policy = basic_policy(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    assert run_cli("run", policy) == 2
    assert "refusing to replace it" in capsys.readouterr().err
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_metric_on_a_slice_of_an_output(tmp_path):
    policy = basic_policy(tmp_path, metrics={"first3": {"output": "logits", "slice": "[:, :3]", "metric": "max_abs"}},
                          require=["first3 <= 100"])
    assert run_cli("run", policy, "--quiet") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    f = ort.InferenceSession(str(tmp_path / "model.onnx"))
    q = ort.InferenceSession(str(tmp_path / "out" / "model.quant.onnx"))
    worst = max(float(np.abs(f.run(None, {"x": x})[0][:, :3] - q.run(None, {"x": x})[0][:, :3]).max())
                for x in (np.load(tmp_path / "calib" / f"{i}.npy") for i in range(8)))
    assert results["model_metrics"]["user"]["first3"]["value"] == pytest.approx(worst, rel=1e-6)


def test_metric_naming_a_missing_output_points_at_the_policy_line(tmp_path, capsys):
    policy = basic_policy(tmp_path, metrics={"m": {"output": "nope", "metric": "max_abs"}})
    assert run_cli("run", policy) == 2
    err = capsys.readouterr().err
    assert f"{policy}:" in err and "no output named 'nope'" in err and "logits" in err


def test_intermediate_activation_statistics_match_numpy(finished_run):
    """Whole-model statistics of an inner activation: the float model's tensor against the quantized run's
    integer tensor dequantized in numpy, over every evaluation sample (the measurement sums in float32)."""
    from qcheck.model.runtime import with_outputs
    from qcheck.quantize.qdq import read_qdq

    tmp, _, results = finished_run
    fm, qm = onnx.load(str(tmp / "model.onnx")), onnx.load(str(tmp / "out" / "model.quant.onnx"))
    outputs = {o.name for o in fm.graph.output}
    row = max((t for t in results["tensors"] if t["kind"] == "activation" and t["name"] not in outputs
               and t["op_type"] != "Input"), key=lambda t: t["order"])
    t = read_qdq(qm, fm).tensors[row["name"]]
    f_sess = ort.InferenceSession(with_outputs(fm, [t.name]).SerializeToString())
    q_sess = ort.InferenceSession(with_outputs(qm, [t.q_output]).SerializeToString())
    fs, qs = [], []
    for x in eval_samples(tmp):
        fs.append(f_sess.run([t.name], {"x": x})[0].astype(np.float64).ravel())
        q = q_sess.run([t.q_output], {"x": x})[0]
        # DequantizeLinear as ONNX defines it: (q - zero_point) * scale in float32
        qs.append(((q.astype(np.int32) - int(t.zero_point)).astype(np.float32) * np.float32(t.scale)).ravel())
    f, q = np.concatenate(fs), np.concatenate(qs).astype(np.float64)
    e = f - q
    assert row["whole_mean_error"] == pytest.approx(e.mean(), abs=1e-6 * np.abs(e).mean())
    assert row["whole_max_abs_error"] == pytest.approx(np.abs(e).max(), rel=1e-5)
    assert row["whole_mean_squared_error"] == pytest.approx((e * e).mean(), rel=1e-5)
    assert row["whole_rmse_scale"] == pytest.approx(math.sqrt((e * e).mean()) / float(t.scale), rel=1e-5)
    assert 1 - row["whole_cosine"] == pytest.approx(1 - f @ q / math.sqrt((f @ f) * (q @ q)), rel=1e-3)
    assert row["whole_sqnr"] == pytest.approx(10 * math.log10((f @ f) / (e @ e)), rel=1e-5)
    assert (row["float_min"], row["float_max"]) == pytest.approx((f.min(), f.max()), rel=1e-6)


def test_peak_memory_is_stated_per_stage(finished_run):
    tmp, _, results = finished_run
    peaks, method = results["peak_memory_mb"], results["peak_memory_method"]
    assert {"load", "calibrate", "quantize", "measure", "rules"} <= set(peaks)
    assert all(v > 0 for v in peaks.values())
    from qcheck.run.memory import PER_STAGE, SO_FAR

    assert method in (PER_STAGE, SO_FAR)
    if method == SO_FAR:  # cumulative: never decreases from one stage to the next
        values = list(peaks.values())
        assert values == sorted(values)
    import html

    page = html.unescape((tmp / "out" / "report.html").read_text())
    assert "by stage: load" in page and method in page
