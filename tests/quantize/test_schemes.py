"""Every post-training scheme: built with ONNX Runtime, measured, compared, recommended for a target."""

import json
from itertools import product

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import REPO, cnn_with_float_ops, small_cnn, weight_heavy_mlp, write_npy_samples, write_policy
from onnx import TensorProto, helper, numpy_helper

from qcheck.cli.main import main
from qcheck.data.readers import open_data
from qcheck.errors import ModelError
from qcheck.measure.latency import quantize_feed
from qcheck.model.prepare import prepare_model
from qcheck.policy.schemes import SCHEMES
from qcheck.policy.spec import DataSource, Preprocess, QuantizationSpec
from qcheck.policy.targets import builtin_names, builtin_profile
from qcheck.quantize.calibrate import Recipe, calibrate
from qcheck.quantize.schemes import build_scheme, size_bytes
from qcheck.rules.engine import evaluate
from qcheck.rules.packs import load_pack
from qcheck.run.compare import preference, recommend


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def prepared(tmp, model_fn, shape, n=4):
    path = model_fn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", n, shape=shape)
    prep = prepare_model(onnx.load(str(path)), path, {"x": list(shape)}, tmp)
    data = open_data(DataSource(tmp / "calib"), prep.inputs, Preprocess())
    q = QuantizationSpec()
    return prep, data, q, calibrate(prep.path, data, q)


# --------------------------------------------------------------------------- sizes


@pytest.fixture(scope="module")
def mlp_builds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlp")
    prep, data, q, ranges = prepared(tmp, weight_heavy_mlp, (1, 256))
    built = {s: build_scheme(s, prep.path, tmp / f"{s}.onnx", Recipe.from_policy(q), ranges) for s in SCHEMES}
    return prep, data, built


def test_sizes_follow_from_the_parameter_count(mlp_builds):
    """256*256 + 256*64 = 81,920 weights and nothing else of size: float32 stores 4 bytes each,
    float16 2, every int8-weight scheme 1 plus one float scale and one int8 zero point per output
    channel (256 + 64 channels, 5 bytes each). The graph itself is < 4 KB. So float16 is 1/2 of
    float32, and int8 (81,920 + 1,600) / 327,680 = 0.255 of it."""
    prep, _, built = mlp_builds
    n, channels, overhead = 256 * 256 + 256 * 64, 256 + 64, 4096
    f32 = size_bytes(prep.path)
    assert 4 * n <= f32 <= 4 * n + overhead
    f16 = size_bytes(built["float16"].path)
    assert 2 * n <= f16 <= 2 * n + overhead
    assert 0.49 <= f16 / f32 <= 0.5 + overhead / (4 * n)
    for scheme in ("int8", "int8-only", "a16w8", "dynamic"):
        size = size_bytes(built[scheme].path)
        assert n <= size <= n + 5 * channels + overhead, scheme
        assert 0.25 <= size / f32 <= (n + 5 * channels + overhead) / (4 * n), scheme


def test_weights_are_stored_in_the_scheme_type(mlp_builds):
    _, _, built = mlp_builds
    for scheme, want in [("int8", onnx.TensorProto.INT8), ("a16w8", onnx.TensorProto.INT8),
                         ("dynamic", onnx.TensorProto.INT8), ("float16", onnx.TensorProto.FLOAT16)]:
        model = onnx.load(str(built[scheme].path))
        big = [i for i in model.graph.initializer if np.prod(i.dims) >= 64 * 256]
        assert len(big) == 2 and all(i.data_type == want for i in big), scheme
    a16 = onnx.load(str(built["a16w8"].path))
    q_types = {numpy_helper.to_array(next(i for i in a16.graph.initializer if i.name == n.input[2])).dtype.name
               for n in a16.graph.node if n.op_type == "QuantizeLinear"}
    assert q_types == {"int16"}


# --------------------------------------------------------------------------- int8-only


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_int8_only_has_integer_io_equal_to_the_qdq_model(tmp_path, io):
    """Feeding quantize(x) and dequantizing the integer output gives the float-io QDQ model's output."""
    prep, data, q, ranges = prepared(tmp_path, small_cnn, (1, 3, 16, 16))
    b = build_scheme("int8-only", prep.path, tmp_path / "q.onnx", Recipe.from_policy(q), ranges, io=io)
    sess = ort.InferenceSession(str(b.path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == f"tensor({io})" and sess.get_outputs()[0].type == f"tensor({io})"
    ref = ort.InferenceSession(str(b.measure_path), providers=["CPUExecutionProvider"])
    out = b.io_params["logits"]
    for i in range(len(data)):
        (qy,) = sess.run(None, quantize_feed(data[i], b.io_params))
        assert qy.dtype == np.dtype(io)
        got = (qy.astype(np.float64) - out["zero_point"]) * out["scale"]
        (want,) = ref.run(None, data[i])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_int8_only_with_unquantizable_ops_fails_naming_every_one(tmp_path):
    prep, _, q, ranges = prepared(tmp_path, cnn_with_float_ops, (1, 3, 8, 8))
    with pytest.raises(ModelError) as exc:
        build_scheme("int8-only", prep.path, tmp_path / "q.onnx", Recipe.from_policy(q), ranges)
    msg = str(exc.value)
    assert "gate" in msg and "HardSigmoid" in msg and "soft" in msg and "Erf" in msg
    assert "conv1" not in msg and "conv2" not in msg
    # int8 builds the same model, with the two ops computing in float, and says so
    b = build_scheme("int8", prep.path, tmp_path / "f.onnx", Recipe.from_policy(q), ranges)
    assert {(f["node"], f["op_type"]) for f in b.float_ops} == {("gate", "HardSigmoid"), ("soft", "Erf")}


def test_int8_only_cli_exits_2_with_the_op_names(tmp_path, capsys):
    cnn_with_float_ops(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 4, shape=(1, 3, 8, 8))
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"calibration": "calib"},
                                                "quantization": {"scheme": "int8-only"},
                                                "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 2
    err = capsys.readouterr().err
    assert "int8-only" in err and "gate" in err and "HardSigmoid" in err and "Traceback" not in err


def test_a16w8_lists_the_ops_that_stay_float(tmp_path):
    prep, _, q, ranges = prepared(tmp_path, cnn_with_float_ops, (1, 3, 8, 8))
    b = build_scheme("a16w8", prep.path, tmp_path / "q.onnx", Recipe.from_policy(q), ranges)
    assert sorted(f["op_type"] for f in b.float_ops) == ["Erf", "HardSigmoid"]


def test_a16w8_keeps_a_policys_16_bit_overrides_and_drops_its_8_bit_ones(tmp_path):
    """scheme a16w8 with `overrides: {w1: {quant_type: int16}}` built w1 in int8 without a word (the scheme dropped
    every override's type). A 16-bit type is asked on top of the scheme and stays; an 8-bit one would undo the
    scheme on that tensor and goes."""
    from dataclasses import replace

    prep, _, q, ranges = prepared(tmp_path, small_cnn, (1, 3, 16, 16))
    recipe = replace(Recipe.from_policy(q), overrides={"w1": {"quant_type": "int16", "axis": 0},
                                                       "r1": {"quant_type": "uint8"}})
    b = build_scheme("a16w8", prep.path, tmp_path / "q.onnx", recipe, ranges)
    inits = {i.name: i.data_type for i in onnx.load(str(b.path)).graph.initializer}
    assert inits["w1_quantized"] == TensorProto.INT16 and inits["w2_quantized"] == TensorProto.INT8
    assert inits["r1_zero_point"] == TensorProto.INT16  # not the uint8 of the int8 policy
    assert [n for n in b.notes if "overrides" in n] == [
        "quantization.overrides: the quant_type of r1 is not used under this scheme (int16 activations, int8 "
        "weights; an 8-bit type would undo it on that tensor)"]


# --------------------------------------------------------------------------- dynamic and float16


def test_dynamic_runs_without_calibration_data(tmp_path):
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "eval", 3, seed=5)
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"evaluation": "eval"},
                                                "quantization": {"scheme": "dynamic"},
                                                "require": ["model.cosine >= 0.99"],
                                                "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 0
    out = tmp_path / "out"
    r = json.loads((out / "results.json").read_text())
    assert r["data"]["calibration"] is None and not (out / "ranges.json").exists()
    assert r["quantization"]["scheme"] == "dynamic"
    qmodel = onnx.load(str(out / "model.quant.onnx"))
    assert {"DynamicQuantizeLinear", "ConvInteger"} <= {n.op_type for n in qmodel.graph.node}
    # whole-model output metrics equal plain ONNX Runtime's
    f = ort.InferenceSession(str(tmp_path / "model.onnx"))
    d = ort.InferenceSession(str(out / "model.quant.onnx"))
    xs = [np.load(tmp_path / "eval" / f"{i}.npy") for i in range(3)]
    fo = np.concatenate([f.run(None, {"x": x})[0] for x in xs]).astype(np.float64)
    do = np.concatenate([d.run(None, {"x": x})[0] for x in xs]).astype(np.float64)
    assert r["model_metrics"]["outputs"][0]["max_abs"] == pytest.approx(float(np.abs(fo - do).max()), rel=1e-6)
    # intermediate tensors matched by name, e.g. the first conv's output
    names = {t["name"] for t in r["tensors"] if t["kind"] == "activation"}
    assert {"c1", "r1", "c2", "r2"} <= names
    assert "id=\"scheme\"" in (out / "report.html").read_text()


def test_float16_weight_error_is_numpy_rounding_to_half(tmp_path):
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "eval", 2)
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"evaluation": "eval"},
                                                "quantization": {"scheme": "float16"},
                                                "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 0
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    rows = {t["name"]: t for t in r["tensors"]}
    for name in ("w1", "w2", "wf"):
        err = w[name].astype(np.float64) - w[name].astype(np.float16).astype(np.float64)
        assert rows[name]["max_abs_error"] == pytest.approx(float(np.abs(err).max()), rel=1e-12, abs=0)
        assert rows[name]["dtype"] == "float16"
    sess = ort.InferenceSession(str(tmp_path / "out" / "model.quant.onnx"))
    assert sess.get_inputs()[0].type == "tensor(float)"  # float32 io kept by default


def test_calibrated_scheme_without_calibration_data_is_a_policy_error(tmp_path, capsys):
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "eval", 2)
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"evaluation": "eval"},
                                                "compare": ["dynamic", "a16w8"]})
    assert run_cli("run", policy, "--quiet") == 2
    err = capsys.readouterr().err
    assert "a16w8" in err and "data.calibration" in err and f"{policy}:" in err


# --------------------------------------------------------------------------- recommendation


def _row(scheme, holds=True, built=True):
    return {"scheme": scheme, "built": built, "requirements_hold": holds if built else None,
            "failed_requirements": [] if holds else ["model.cosine >= 0.99"], "size_ratio": 0.5}


@pytest.mark.parametrize("target", builtin_names())
def test_a_scheme_the_target_cannot_run_is_never_recommended(target):
    """Every combination of built / passing for the five schemes, on every built-in target."""
    profile = builtin_profile(target)
    for states in product(["pass", "fail", "unbuilt"], repeat=len(SCHEMES)):
        rows = [_row(s, st == "pass", st != "unbuilt") for s, st in zip(SCHEMES, states)]
        rec = recommend(rows, profile)
        if rec["scheme"] is not None:
            assert profile.can_run(rec["scheme"])
            assert states[SCHEMES.index(rec["scheme"])] == "pass"
        else:
            assert not any(profile.can_run(s) and st == "pass" for s, st in zip(SCHEMES, states))
        assert rec["reason"]


def test_recommendation_follows_the_target_and_the_requirements():
    everything = [_row(s) for s in SCHEMES]
    assert recommend(everything, builtin_profile("cpu"))["scheme"] == "int8"
    assert recommend(everything, builtin_profile("gpu"))["scheme"] == "float16"  # a GPU favours float16
    assert recommend(everything, builtin_profile("npu"))["scheme"] == "int8-only"
    assert recommend(everything, builtin_profile("mcu"))["scheme"] == "int8-only"
    # on a CPU, int8 losing too much falls to dynamic range, then 16x8
    rows = [_row("int8", holds=False), _row("dynamic", holds=False), _row("a16w8"), _row("float16")]
    rec = recommend(rows, builtin_profile("cpu"))
    assert rec["scheme"] == "a16w8" and "int8 fails model.cosine >= 0.99" in rec["reason"]
    # an integer-only target never takes float16 or dynamic, even when only they pass
    rows = [_row("int8-only", holds=False), _row("int8", holds=False), _row("float16"), _row("dynamic")]
    assert recommend(rows, builtin_profile("npu"))["scheme"] is None
    assert "float16" not in preference(builtin_profile("npu")) and "dynamic" not in preference(builtin_profile("npu"))


# --------------------------------------------------------------------------- compare mode, end to end


def test_compare_mode_builds_measures_and_recommends(tmp_path):
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 6)
    write_npy_samples(tmp_path / "eval", 3, seed=9)
    policy = write_policy(tmp_path / "p.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"}, "target": "npu",
        "compare": ["int8", "a16w8", "float16", "dynamic"], "require": ["model.cosine >= 0.99"],
        "metrics": {"logit_err": {"output": "logits", "metric": "max_abs"}},
        "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 0
    out = tmp_path / "out"
    r = json.loads((out / "results.json").read_text())
    c = r["compare"]
    rows = {s["scheme"]: s for s in c["schemes"]}
    assert list(rows) == ["int8", "a16w8", "float16", "dynamic"]
    assert [rows[s]["target_can_run"] for s in rows] == [True, True, False, False]
    assert c["recommendation"]["scheme"] in ("int8", "a16w8")
    # the main run's int8 is the comparison's int8
    assert rows["int8"]["metrics"]["cosine"] == r["model_metrics"]["aggregate"]["cosine"]
    # each row's metrics are those of its own model, computed here independently
    f = ort.InferenceSession(str(tmp_path / "model.onnx"))
    xs = [np.load(tmp_path / "eval" / f"{i}.npy") for i in range(3)]
    fo = np.concatenate([f.run(None, {"x": x})[0] for x in xs]).astype(np.float64)
    for scheme in ("a16w8", "float16", "dynamic"):
        s = ort.InferenceSession(str(out / "schemes" / f"{scheme}.onnx"))
        so = np.concatenate([s.run(None, {"x": x})[0] for x in xs]).astype(np.float64)
        assert rows[scheme]["user_metrics"]["logit_err"] == pytest.approx(float(np.abs(fo - so).max()), rel=1e-6)
        assert rows[scheme]["size_bytes"] == (out / "schemes" / f"{scheme}.onnx").stat().st_size
        assert rows[scheme]["latency"]["runs"] == c["latency_runs"] and rows[scheme]["latency"]["median_ms"] > 0
    html = (out / "report.html").read_text()
    assert 'id="compare"' in html and "Recommended for target npu" in html


def test_compare_all_records_a_scheme_that_cannot_be_built(tmp_path):
    cnn_with_float_ops(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 4, shape=(1, 3, 8, 8))
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"calibration": "calib"},
                                                "target": "edgetpu", "compare": "all",
                                                "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 0
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {s["scheme"]: s for s in r["compare"]["schemes"]}
    assert list(rows) == list(SCHEMES)
    assert not rows["int8-only"]["built"] and "HardSigmoid" in rows["int8-only"]["error"]
    # the Edge TPU runs only int8-only, which could not be built: nothing is recommended
    assert r["compare"]["recommendation"]["scheme"] is None


# --------------------------------------------------------------------------- rules per scheme


def test_rules_can_apply_to_some_schemes_only(tmp_path):
    pack = tmp_path / "pack.yaml"
    pack.write_text("""pack: test
rules:
  - code: QT001
    name: test.float16_only
    scope: tensor
    severity: info
    applies_to: {schemes: [float16]}
    when: cosine < 2
    message: "cosine {cosine}"
    summary: Fires on every tensor, for float16 only.
    why: A test.
    fix: Nothing.
""")
    rules = load_pack(pack)
    rows = [{"name": "t", "kind": "activation", "cosine": 0.5}]
    assert len(evaluate(rules, rows, scheme="float16")) == 1
    assert evaluate(rules, rows, scheme="int8") == []


def test_compare_example_policy_is_valid():

    from qcheck.policy.loader import load_policy

    p = load_policy(REPO / "examples" / "ppocr-det" / "compare.yaml")
    assert p.compare == list(SCHEMES) and p.quantization.io == "uint8"


def test_float16_io_and_pdf_and_rerender(tmp_path):
    """float16 inputs and outputs when the policy says so; the report (PDF too) renders, and again from results.json."""
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "eval", 2)
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"evaluation": "eval"},
                                                "quantization": {"scheme": "float16", "io": "float16"},
                                                "compare": ["float16", "dynamic"],
                                                "report": {"out": "out", "formats": ["html", "pdf"]}})
    assert run_cli("run", policy, "--quiet") == 0
    out = tmp_path / "out"
    sess = ort.InferenceSession(str(out / "model.quant.onnx"))
    assert sess.get_inputs()[0].type == "tensor(float16)" and sess.get_outputs()[0].type == "tensor(float16)"
    r = json.loads((out / "results.json").read_text())
    assert r["quantization"]["io"] == "float16" and r["compare"]["recommendation"]["scheme"] == "dynamic"
    assert (out / "report.pdf").stat().st_size > 0
    assert run_cli("report", out / "results.json", "--out", tmp_path / "again", "--formats", "html") == 0
    assert 'id="compare"' in (tmp_path / "again" / "report.html").read_text()


def test_policy_checks_scheme_io_and_compare_names(tmp_path):
    from qcheck.errors import PolicyError
    from qcheck.policy.loader import load_policy

    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 2)
    p = tmp_path / "p.yaml"
    p.write_text("model: model.onnx\ndata: {calibration: calib}\nquantization:\n  scheme: int8-only\n  io: float32\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert f"{p}:5:" in str(exc.value) and "int8 or uint8" in str(exc.value)
    p.write_text("model: model.onnx\ndata: {calibration: calib}\ncompare: [int8, fp16]\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    assert f"{p}:3:" in str(exc.value) and "float16" in str(exc.value)


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv with 3x3 kernels, stride 1, padding 1, in float64: x[1,C,H,W], w[O,C,3,3]."""
    _, _, h, wd = x.shape
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1)))
    out = np.zeros((w.shape[0], h, wd))
    for ki in range(3):
        for kj in range(3):
            out += np.einsum("oc,chw->ohw", w[:, :, ki, kj], xp[:, ki:ki + h, kj:kj + wd])
    return (out + b[:, None, None])[None]


def test_dynamic_per_tensor_error_matches_numpy_dynamic_quantization(tmp_path):
    """conv1's output under dynamic quantization, redone in numpy: x quantized per sample with ORT's
    DynamicQuantizeLinear rule (uint8, range widened to include 0), int8 weights from the model file."""
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "eval", 3, seed=11)
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"evaluation": "eval"},
                                                "quantization": {"scheme": "dynamic"},
                                                "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 0
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    f = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    q = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "out" / "model.quant.onnx")).graph.initializer}
    s_w = q["w1_scale"].astype(np.float64).reshape(-1, 1, 1, 1)
    w_deq = (q["w1_quantized"].astype(np.float64) - q["w1_zero_point"].astype(np.float64).reshape(-1, 1, 1, 1)) * s_w
    errors = []
    for i in range(3):
        x = np.load(tmp_path / "eval" / f"{i}.npy").astype(np.float64)
        lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
        scale = np.float32((hi - lo) / 255)
        zp = np.clip(np.rint(-lo / scale), 0, 255)
        xq = np.clip(np.rint(x / scale) + zp, 0, 255)
        ref = _conv3x3(x, f["w1"], f["b1"])
        got = _conv3x3((xq - zp) * float(scale), w_deq, f["b1"])
        errors.append((ref - got).ravel())
    e = np.concatenate(errors)
    row = next(t for t in r["tensors"] if t["name"] == "c1")
    # compared by name: whole-model columns; the per-layer ones are empty and say why
    assert row["whole_mean_squared_error"] == pytest.approx(float((e ** 2).mean()), rel=1e-3)
    assert row["whole_max_abs_error"] == pytest.approx(float(np.abs(e).max()), rel=1e-3)
    assert row["mean_squared_error"] is None and "by tensor name" in row["per_layer_missing"]
    assert row["scale"] is None and row["rmse_scale"] is None  # no integer grid on an activation here


def test_compare_with_a_task_metric_judges_it_for_every_scheme(tmp_path):
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 4)
    policy = write_policy(tmp_path / "p.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib"}, "analyses": False,
        "metrics": {"cls": {"task": "classification", "output": "logits", "k": 1}, "err": {"output": "logits"}},
        # fails for every scheme: each keeps the float model's top class on most of the 4 samples (a line that
        # cannot hold for any value, `cls.top1 >= 2`, is refused when the policy loads)
        "compare": ["int8", "float16", "dynamic"], "require": ["cls.top1 <= 0.2"],
        "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 1
    c = json.loads((tmp_path / "out" / "results.json").read_text())["compare"]
    assert c["user_metrics"] == ["err"]
    for row in c["schemes"]:
        assert row["requirements_hold"] is False and row["failed_requirements"] == ["cls.top1 <= 0.2"], row["scheme"]
    assert c["recommendation"]["scheme"] is None


def test_summary_counts_ops_without_integer_kernels_as_float(tmp_path):
    # conv1 -> gate (HardSigmoid) -> conv2: ORT quantizes conv1's output and conv2's input, so gate
    # sits between a DequantizeLinear and a QuantizeLinear; it has no integer kernel: it computes in float.
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c1"], ["g"], name="gate"),
             helper.make_node("Conv", ["g", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    weights = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n)
               for n, s in (("w1", (4, 3, 3, 3)), ("w2", (4, 4, 3, 3)))]
    graph = helper.make_graph(nodes, "sandwich", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8),
              str(tmp_path / "model.onnx"))
    write_npy_samples(tmp_path / "calib", 4, shape=(1, 3, 8, 8))
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"calibration": "calib"},
                                                "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 0
    out = tmp_path / "out"
    qmodel = onnx.load(str(out / "model.quant.onnx"))
    gate = next(n for n in qmodel.graph.node if n.name == "gate")
    producers = {o: n.op_type for n in qmodel.graph.node for o in n.output}
    readers = [n.op_type for n in qmodel.graph.node if gate.output[0] in n.input]
    assert producers[gate.input[0]] == "DequantizeLinear" and readers == ["QuantizeLinear"]  # the sandwich
    q = json.loads((out / "results.json").read_text())["quantization"]
    assert [f["node"] for f in q["float_ops"]] == ["gate"]
    assert q["float_nodes"] == ["gate"] and q["quantized_nodes"] == 2


def test_dynamic_per_channel_matmul_weights_are_read_per_column(tmp_path):
    """ORT scales a dynamic MatMul weight [K, N] per column; its error is then below half a step of its column."""
    weight_heavy_mlp(tmp_path / "model.onnx", width=16, out=8)
    rng = np.random.default_rng(0)
    (tmp_path / "eval").mkdir()
    for i in range(2):
        np.save(tmp_path / "eval" / f"{i}.npy", rng.standard_normal((1, 16)).astype(np.float32))
    policy = write_policy(tmp_path / "p.yaml", {"model": "model.onnx", "data": {"evaluation": "eval"},
                                                "quantization": {"scheme": "dynamic", "per_channel": True},
                                                "report": {"out": "out", "formats": ["html"]}})
    assert run_cli("run", policy, "--quiet") == 0
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    w2 = next(t for t in r["tensors"] if t["name"] == "w2")
    qmodel = onnx.load(str(tmp_path / "out" / "model.quant.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in qmodel.graph.initializer}
    scale = inits["w2_scale"].astype(np.float64)
    assert scale.size == 8  # one per column of the [16, 8] weight
    float_w2 = onnx.numpy_helper.to_array(next(i for i in onnx.load(str(tmp_path / "model.onnx")).graph.initializer
                                               if i.name == "w2")).astype(np.float64)
    deq = (inits["w2_quantized"].astype(np.float64) - inits["w2_zero_point"].astype(np.float64)) * scale
    assert w2["max_abs_error"] == pytest.approx(float(np.abs(float_w2 - deq).max()), rel=1e-6)
    assert np.all(np.abs(float_w2 - deq) <= scale / 2 + 1e-9)  # rounding within each column's own step
