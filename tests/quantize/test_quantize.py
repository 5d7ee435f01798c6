"""Calibrate once, build variants from recipes; types and calibration methods do what they say."""

import numpy as np
import onnx
import pytest
from helpers import small_cnn, write_npy_samples

from qcheck.data.readers import open_data
from qcheck.model.prepare import graph_inputs, load_onnx, prepare_model
from qcheck.policy.spec import DataSource, Preprocess, QuantizationSpec
from qcheck.quantize.calibrate import Ranges, Recipe, build_quantized, calibrate
from qcheck.quantize.qdq import read_qdq


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("q")
    src = small_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 16, seed=2)
    raw = load_onnx(src)
    pm = prepare_model(raw, src, {}, tmp)
    data = open_data(DataSource(tmp / "calib"), pm.inputs, Preprocess())
    return tmp, pm, data


def test_ranges_round_trip_through_json(prepared, tmp_path):
    _, pm, data = prepared
    r = calibrate(pm.path, data, QuantizationSpec())
    r.save(tmp_path / "ranges.json")
    again = Ranges.load(tmp_path / "ranges.json")
    assert again.ranges == r.ranges and again.sha256() == r.sha256()
    lo, hi = r.ranges["x"]
    xs = np.concatenate([s["x"].ravel() for s in data])
    assert lo == pytest.approx(float(xs.min())) and hi == pytest.approx(float(xs.max()))  # minmax is min and max


def test_recipes_reuse_one_calibration(prepared):
    tmp, pm, data = prepared
    ranges = calibrate(pm.path, data, QuantizationSpec())
    float_model = onnx.load(str(pm.path))
    full = read_qdq(onnx.load(str(build_quantized(pm.path, ranges, Recipe(), tmp / "full.onnx"))), float_model)
    conv2 = next(n.name for n in float_model.graph.node if n.op_type == "Conv" and n.input[1] == "w2")
    partial = read_qdq(onnx.load(str(build_quantized(pm.path, ranges, Recipe(exclude_nodes=[conv2]), tmp / "p.onnx"))),
                       float_model)
    assert conv2 in full.quantized_nodes and conv2 not in partial.quantized_nodes
    assert "w2" in full.tensors and "w2" not in partial.tensors
    no_gemm = read_qdq(onnx.load(str(build_quantized(pm.path, ranges, Recipe(exclude_op_types=["Gemm"]), tmp / "g.onnx"))),
                       float_model)
    assert "wf" in full.tensors and "wf" not in no_gemm.tensors


def test_builds_from_one_model_share_its_shape_inference_and_match_a_fresh_build(prepared, tmp_path):
    # a search builds candidate after candidate: the shape-inferred float model is kept (one, by path, mtime
    # and size) and copied, since the quantizer edits it; a build after a different one is byte-identical to
    # the first, and a changed file is read again
    from qcheck.quantize import calibrate as cal

    tmp, pm, data = prepared
    ranges = calibrate(pm.path, data, QuantizationSpec())
    first = build_quantized(pm.path, ranges, Recipe(), tmp_path / "a.onnx").read_bytes()
    build_quantized(pm.path, ranges, Recipe(per_channel=True), tmp_path / "b.onnx")
    assert build_quantized(pm.path, ranges, Recipe(), tmp_path / "c.onnx").read_bytes() == first
    assert len(cal._INFERRED) == 1
    copy = tmp_path / "model.onnx"
    copy.write_bytes(pm.path.read_bytes())
    build_quantized(copy, ranges, Recipe(), tmp_path / "d.onnx")
    assert [k[0] for k in cal._INFERRED] == [str(copy.resolve())]


def test_builds_starting_at_once_infer_shapes_once(prepared, tmp_path, monkeypatch):
    # ORT's shape inference writes "<model>-inferred.onnx" beside the model and deletes it: a search's workers
    # building their first candidates at once (evaluate_many) removed each other's file (FileNotFoundError,
    # recorded as a candidate ORT "could not quantize"). Inference is slowed here so that the threads overlap.
    import threading
    import time

    from onnxruntime.quantization import quant_utils

    tmp, pm, data = prepared
    ranges = calibrate(pm.path, data, QuantizationSpec())
    model = tmp_path / "model.onnx"
    model.write_bytes(pm.path.read_bytes())  # a file no build has inferred yet
    inner, calls = quant_utils.load_model_with_shape_infer, []

    def slow(path):
        calls.append(path)
        time.sleep(0.3)
        return inner(path)

    monkeypatch.setattr(quant_utils, "load_model_with_shape_infer", slow)
    built = [None] * 3

    def build(i):
        built[i] = build_quantized(model, ranges, Recipe(), tmp_path / f"{i}.onnx").read_bytes()

    threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and built[0] == built[1] == built[2] is not None


def test_activation_types_and_overrides(prepared):
    tmp, pm, data = prepared
    ranges = calibrate(pm.path, data, QuantizationSpec())
    fm = onnx.load(str(pm.path))
    signed = read_qdq(onnx.load(str(build_quantized(pm.path, ranges, Recipe(activations="int8"), tmp / "s.onnx"))), fm)
    assert signed.tensors["x"].dtype == "int8"
    wide = read_qdq(onnx.load(str(build_quantized(pm.path, ranges, Recipe(overrides={"x": {"quant_type": "int16"}}),
                                                  tmp / "w.onnx"))), fm)
    assert wide.tensors["x"].dtype == "int16"
    # the same range on a 65535-step grid: the step is 257 times finer than on 255 steps
    assert wide.tensors["x"].summary_scale() == pytest.approx(signed.tensors["x"].summary_scale() * 255 / 65535, rel=1e-3)
    fixed = read_qdq(onnx.load(str(build_quantized(pm.path, ranges, Recipe(overrides={"x": {"rmin": -8.0, "rmax": 8.0}}),
                                                   tmp / "r.onnx"))), fm)
    assert fixed.tensors["x"].summary_scale() == pytest.approx(16.0 / 255, rel=1e-6)


def test_percentile_and_entropy_ranges_are_narrower_than_minmax(prepared):
    _, pm, data = prepared
    mm = calibrate(pm.path, data, QuantizationSpec())
    pc = calibrate(pm.path, data, QuantizationSpec(calibration="percentile", percentile=99.0))
    en = calibrate(pm.path, data, QuantizationSpec(calibration="entropy", num_bins=2048))
    width = lambda r, t: r.ranges[t][1] - r.ranges[t][0]  # noqa: E731
    assert width(pc, "x") < width(mm, "x")
    assert any(width(en, t) < 0.99 * width(mm, t) for t in mm.ranges if t in en.ranges)


def test_external_data_models_load(tmp_path):
    src = small_cnn(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    loaded = load_onnx(tmp_path / "ext.onnx")
    assert [i.name for i in graph_inputs(loaded)] == ["x"]
    work = tmp_path / "work"
    work.mkdir()
    pm = prepare_model(loaded, tmp_path / "ext.onnx", {}, work)
    assert pm.node_count >= 5


def test_opset_11_is_upgraded_for_per_channel(tmp_path):
    src = small_cnn(tmp_path / "old.onnx", opset=11)
    work = tmp_path / "w"
    work.mkdir()
    pm = prepare_model(load_onnx(src), src, {}, work)
    assert pm.original_opset == 11 and pm.opset >= 13
    assert any("opset upgraded" in n for n in pm.notes)


def test_already_quantized_model_is_refused_with_a_reason(prepared, tmp_path):
    from qcheck.errors import ModelError

    tmp, pm, data = prepared
    ranges = calibrate(pm.path, data, QuantizationSpec())
    q = build_quantized(pm.path, ranges, Recipe(), tmp_path / "q.onnx")
    with pytest.raises(ModelError, match="already quantized"):
        prepare_model(load_onnx(q), q, {}, tmp_path)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibrators_print_nothing(prepared, capfd, method):
    """ORT's histogram calibrators print ("Collecting tensor data and making histogram ...") on stdout, which a
    user pipes into JSON or a CI log: qcheck keeps stdout for its own output."""
    _, pm, data = prepared
    calibrate(pm.path, data, QuantizationSpec(calibration=method))
    out, _ = capfd.readouterr()
    assert out == ""


def test_ort_refusing_a_build_is_a_model_error_but_a_bug_of_qchecks_stays_a_bug(prepared, monkeypatch, tmp_path):
    # ORT's quantizer asserts on a NaN range ("scale issue"): the candidate's or the user's problem, a ModelError.
    import dataclasses
    import math

    from qcheck.errors import ModelError
    from qcheck.quantize import calibrate as calibrate_module

    _, pm, data = prepared
    ranges = calibrate(pm.path, data, QuantizationSpec())
    broken = dataclasses.replace(ranges, ranges=dict(ranges.ranges, x=(math.nan, math.nan)))
    with pytest.raises(ModelError, match="ONNX Runtime could not quantize the model: AssertionError"):
        build_quantized(pm.path, broken, Recipe(), tmp_path / "nan.onnx")

    # The same `except` must not turn qcheck's own code (the overrides it hands ORT) into "ONNX Runtime failed".
    def bug(recipe):
        raise KeyError("a bug in qcheck")

    monkeypatch.setattr(calibrate_module, "ort_overrides", bug)
    with pytest.raises(KeyError, match="a bug in qcheck"):
        build_quantized(pm.path, ranges, Recipe(), tmp_path / "bug.onnx")


def test_a_bug_in_qchecks_chunked_calibration_is_not_reported_as_ort_failing(prepared, monkeypatch):
    from qcheck.quantize import calibrate as calibrate_module

    _, pm, data = prepared

    def bug(*args, **kwargs):
        raise KeyError("a bug in qcheck")

    monkeypatch.setattr(calibrate_module, "collect_streamed", bug)
    with pytest.raises(KeyError, match="a bug in qcheck"):
        calibrate(pm.path, data, QuantizationSpec(calibration="entropy"))


def test_weights_listed_as_graph_inputs_ir3_are_read_as_constants(tmp_path):
    """IR version 3 (ONNX's model zoo of 2017-18) lists every weight as a graph input too. The analyses' emulation
    model then failed to load (its new zero points were not inputs): exit 3 on real models. Prepared, the weights
    are plain initializers, and the whole run, analyses included, gives the numbers of the same model in IR 8."""
    from helpers import write_policy

    from qcheck.policy.loader import load_policy
    from qcheck.run.pipeline import run

    results = {}
    for ir in (3, 8):
        folder = tmp_path / f"ir{ir}"
        folder.mkdir()
        src = small_cnn(folder / "m.onnx", opset=9)
        model = onnx.load(str(src))
        model.ir_version = ir
        if ir == 3:
            model.graph.input.extend(onnx.helper.make_tensor_value_info(i.name, i.data_type, i.dims)
                                     for i in model.graph.initializer)
        onnx.save(model, str(src))
        write_npy_samples(folder / "calib", 4)
        policy = write_policy(folder / "qcheck.yaml", {
            "model": "m.onnx", "data": {"calibration": "calib"}, "require": ["model.cosine >= 0.9"],
            "analyses": {"sensitivity": True, "curves": False}, "report": {"out": "out", "formats": ["html"]}})
        results[ir] = run(load_policy(policy))
    assert any("listed as graph inputs" in n for n in results[3]["model"]["notes"])
    for key in ("rmse_scale", "cosine"):
        assert [t[key] for t in results[3]["tensors"]] == [t[key] for t in results[8]["tensors"]]
    timeless = [{k: v for k, v in r["analyses"]["sensitivity"].items() if k != "seconds"} for r in results.values()]
    assert timeless[0] == timeless[1] and timeless[0]["nodes"]
