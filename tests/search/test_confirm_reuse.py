"""A search's confirmed candidates are built with `quantize.reuse` (the weights' parameters and quantized copies kept
from earlier builds of the same float model): every candidate's model is the same bytes as ORT's quantizer alone
builds for its recipe, whatever kind of change it carries and whatever was built before it.

Each change set is built twice, by ORT's quantizer alone and with one BuildReuse shared by every build in the
sequence (so later builds take what earlier ones computed, including under other settings: int16 weights, per
tensor, a16w8); the two files must be equal byte for byte (node lists, initializer bytes, everything). The small
model has a skip connection (a tensor read by two nodes: a tensor group), biases (ORT adjusts a weight's scale
for its int32 bias after computing it: a kept value must not carry that edit into the next build) and an early
output. The real one is PP-OCR's direction classifier (181 nodes), fetched from its wheel.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import residual_cnn, write_npy_samples, write_policy

from qcheck.data.readers import open_data
from qcheck.model.fetch import fetch_model
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.policy.spec import DataSource, FetchSpec, Preprocess, QuantizationSpec, SearchBudget
from qcheck.quantize.calibrate import Recipe, build_quantized, calibrate
from qcheck.quantize.reuse import BuildReuse
from qcheck.search.space import MODEL, Change, Graph, apply_changes


def _prepared(tmp, src, shape):
    write_npy_samples(tmp / "calib", 4, shape=shape, seed=2)
    pm = prepare_model(load_onnx(src), src, {}, tmp)
    ranges = calibrate(pm.path, open_data(DataSource(tmp / "calib"), pm.inputs, Preprocess()), QuantizationSpec())
    fm = onnx.load(str(pm.path))
    graph = Graph(fm, set(ranges.ranges), Recipe())
    graph.calibrated = dict(ranges.ranges)  # as run_search sets it (a16w8 and widen_range read it)
    return pm.path, ranges, fm, graph


def _same_both_ways(path, ranges, graph, sets, tmp) -> BuildReuse:
    reuse = BuildReuse()
    for changes in sets:
        recipe = apply_changes(Recipe(), tuple(sorted(changes)), graph)
        alone = build_quantized(path, ranges, recipe, tmp / "alone.onnx").read_bytes()
        reused = build_quantized(path, ranges, recipe, tmp / "reused.onnx", reuse=reuse).read_bytes()
        assert reused == alone, changes
    return reuse


def test_every_kind_of_change_builds_the_same_model_with_reuse(tmp_path):
    path, ranges, fm, graph = _prepared(tmp_path, residual_cnn(tmp_path / "model.onnx"), (1, 3, 16, 16))
    lo, hi = ranges.ranges["r2"]
    graph.reach = {"r2": (lo - 1.0, hi * 3)}  # the evaluation data reach past the calibrated range: widen_range
    sets = [(), (Change("keep_float", "conv2"),), (Change("keep_float", "group:r1"),),
            (Change("int16_activations", "relu2"),), (Change("int16_weights", "conv3"),),
            (Change("widen_range", "relu2"),), (Change("per_channel", MODEL),),
            (Change("scheme", MODEL, "a16w8"),), (Change("scheme", MODEL, "a16w8"), Change("keep_float", "conv1")),
            (Change("keep_float", "conv2"), Change("int16_weights", "conv1"), Change("widen_range", "relu2")),
            (Change("per_channel", MODEL), Change("keep_float", "skip")),
            (Change("keep_float", "conv2"),)]  # again, after everything else was kept
    assert apply_changes(Recipe(), (Change("widen_range", "relu2"),), graph).overrides  # the change does something
    reuse = _same_both_ways(path, ranges, graph, sets, tmp_path)
    # reuse happened: most tensors' parameters were taken from earlier builds, and so were quantized weights
    assert reuse.hits > reuse.misses > 0 and len(reuse.weights) >= 3
    int8 = build_quantized(path, ranges, Recipe(), tmp_path / "int8.onnx").read_bytes()
    a16w8 = build_quantized(path, ranges, apply_changes(Recipe(), (Change("scheme", MODEL, "a16w8"),), graph),
                            tmp_path / "a16.onnx").read_bytes()
    assert int8 != a16w8  # the kinds build different models: equality above is not one model compared with itself


def test_weights_beyond_max_bytes_are_not_kept_and_the_models_are_the_same(tmp_path):
    path, ranges, fm, graph = _prepared(tmp_path, residual_cnn(tmp_path / "model.onnx"), (1, 3, 16, 16))
    unbounded = BuildReuse()
    build_quantized(path, ranges, Recipe(), tmp_path / "u.onnx", reuse=unbounded)
    size = {key[1]: t.ByteSize() for key, t in unbounded.weights.items()}  # key: (opsets, weight name, arguments)
    assert set(size) == {"w1", "w2", "w3", "c"} and size["w2"] > size["w3"] + size["c"]  # c: the Mul's constant
    # room for all but w2: w2 (quantized second, the largest) does not fit after w1; the others then do
    bounded = BuildReuse(max_bytes=size["w1"] + size["w3"] + size["c"])
    for recipe in (Recipe(), Recipe(exclude_nodes=["conv1"])):
        alone = build_quantized(path, ranges, recipe, tmp_path / "alone.onnx").read_bytes()
        assert build_quantized(path, ranges, recipe, tmp_path / "b.onnx", reuse=bounded).read_bytes() == alone
    assert sorted(key[1] for key in bounded.weights) == ["c", "w1", "w3"] and bounded.kept_bytes == bounded.max_bytes


def test_kept_weights_belong_to_one_float_model(tmp_path):
    # a BuildReuse given a build of another float model forgets what it kept (weights are kept by name)
    a_path, a_ranges, _, _ = _prepared(tmp_path / "a", residual_cnn(_folder(tmp_path / "a") / "m.onnx", seed=0),
                                       (1, 3, 16, 16))
    b_path, b_ranges, _, _ = _prepared(tmp_path / "b", residual_cnn(_folder(tmp_path / "b") / "m.onnx", seed=1),
                                       (1, 3, 16, 16))
    reuse = BuildReuse()
    build_quantized(a_path, a_ranges, Recipe(), tmp_path / "a.onnx", reuse=reuse)
    reused = build_quantized(b_path, b_ranges, Recipe(), tmp_path / "b.onnx", reuse=reuse).read_bytes()
    assert reused == build_quantized(b_path, b_ranges, Recipe(), tmp_path / "b2.onnx").read_bytes()
    assert reuse.hits == 0  # the second model's names matched the first's, and nothing was taken from it


def test_a_weight_scale_ort_adjusts_for_its_bias_is_not_kept_adjusted(tmp_path):
    # ORT widens a weight's scale when its int32 bias would overflow at input scale x weight scale; it edits the
    # parameters it computed, so what is kept must be a copy: a later build whose input range needs no widening
    # gets the weight's own scale
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 4, 1, 1)) * 1e-3).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(4, 1.0, np.float32), "b")])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(src))
    write_npy_samples(tmp_path / "calib", 2, shape=(1, 4, 4, 4), scale=1e-3)
    pm = prepare_model(load_onnx(src), src, {}, tmp_path)
    ranges = calibrate(pm.path, open_data(DataSource(tmp_path / "calib"), pm.inputs, Preprocess()), QuantizationSpec())
    recipes = [Recipe(), Recipe(overrides={"x": {"rmin": -100.0, "rmax": 100.0}})]
    alone = [build_quantized(pm.path, ranges, r, tmp_path / f"a{i}.onnx").read_bytes() for i, r in enumerate(recipes)]
    scales = [numpy_helper.to_array(next(i for i in onnx.load_from_string(b).graph.initializer if i.name == "w_scale"))
              for b in alone]
    assert not np.array_equal(scales[0], scales[1])  # ORT widened the first build's weight scale, not the second's
    reuse = BuildReuse()
    assert [build_quantized(pm.path, ranges, r, tmp_path / f"r{i}.onnx", reuse=reuse).read_bytes()
            for i, r in enumerate(recipes)] == alone
    assert reuse.hits > 0


def _folder(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


CLS = FetchSpec(pip="rapidocr-onnxruntime==1.4.4", member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c")


@pytest.mark.real_model
def test_the_real_classifier_builds_the_same_models_with_reuse(tmp_path):
    src = fetch_model(CLS, tmp_path / "cls.onnx", log=lambda m: None)
    path, ranges, fm, graph = _prepared(tmp_path, src, (1, 3, 48, 192))
    convs = [n.name for n in fm.graph.node if n.op_type == "Conv"]
    shared = next(t for t, users in _readers(fm).items() if len(users) > 1 and t in ranges.ranges)
    sets = [(), (Change("keep_float", convs[5]),), (Change("keep_float", f"group:{shared}"),),
            (Change("int16_activations", convs[9]),), (Change("int16_weights", convs[12]),),
            (Change("per_channel", MODEL),), (Change("scheme", MODEL, "a16w8"),), (Change("keep_float", convs[20]),)]
    reuse = _same_both_ways(path, ranges, graph, sets, tmp_path)
    assert reuse.hits > reuse.misses


def _readers(model) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n.name)
    return out


def test_a_search_confirms_the_same_candidates_with_and_without_reuse(tmp_path):
    # the Evaluator builds its confirmed candidates with reuse: every record (figures, sizes, which recipes
    # build the same model) equals an Evaluator's that builds each with ORT's quantizer alone
    from qcheck.policy.loader import load_policy
    from qcheck.search.evaluate import Evaluator

    path, ranges, fm, graph = _prepared(tmp_path, residual_cnn(tmp_path / "model.onnx"), (1, 3, 16, 16))
    write_npy_samples(tmp_path / "eval", 6, shape=(1, 3, 16, 16), seed=5)
    policy = load_policy(write_policy(tmp_path / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
        "metrics": {"y_err": {"output": "y", "metric": "max_abs"}}, "require": ["y_err <= 0.01", "model.cosine >= 0.9999"]}))
    pm_inputs = prepare_model(load_onnx(tmp_path / "model.onnx"), tmp_path / "model.onnx", {}, tmp_path / "p").inputs
    evaluation = open_data(policy.data.evaluation, pm_inputs, Preprocess())
    samples = [evaluation[i] for i in range(len(evaluation))]
    sets = [(), (Change("keep_float", "conv2"),), (Change("int16_activations", "relu2"),),
            (Change("int16_weights", "conv3"),), (Change("per_channel", MODEL),), (Change("scheme", MODEL, "a16w8"),),
            (Change("keep_float", "conv2"), Change("int16_weights", "conv1"))]
    records = []
    for reuse in (True, False):
        ev = Evaluator(path, fm, lambda method: ranges, Recipe(), samples, policy.metrics, policy.require, {},
                       policy.target, graph, SearchBudget(max_trials=20), _folder(tmp_path / f"w{reuse}"), workers=2)
        if not reuse:
            ev.reuse = None  # build_quantized(reuse=None): ORT's quantizer as it is
        ev.evaluate_many(sets)
        records.append(ev.candidates)
        assert not reuse or ev.reuse.hits > 0
    assert records[0] == records[1] and len(records[0]) == len(sets)
    assert len({c["metrics"]["model.cosine"] for c in records[0]}) > 3  # the candidates differ: not one model
