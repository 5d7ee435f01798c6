"""Screening candidates on the grid emulation model: what it agrees with, and that it never decides alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import residual_cnn, write_npy_samples

from qcheck.analyses.run_all import build_emulation
from qcheck.analyses.switchable import SWITCH_INPUT
from qcheck.data.readers import open_data
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.model.runtime import make_session
from qcheck.policy.spec import DataSource, Preprocess, QuantizationSpec
from qcheck.quantize.calibrate import Recipe, build_quantized, calibrate
from qcheck.quantize.grids import GridCalculator
from qcheck.quantize.schemes import scheme_recipe
from qcheck.search.base import select
from qcheck.search.screen import Screener, build_grid_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("screen")
    src = residual_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 6, seed=5)
    write_npy_samples(tmp / "eval", 6, seed=9, scale=2.0)  # reaches beyond the calibrated ranges
    pm = prepare_model(load_onnx(src), src, {}, tmp)
    calib = open_data(DataSource(tmp / "calib"), pm.inputs, Preprocess())
    evaluation = open_data(DataSource(tmp / "eval"), pm.inputs, Preprocess())
    ranges = calibrate(pm.path, calib, QuantizationSpec())
    fm = onnx.load(str(pm.path))
    samples = [evaluation[i] for i in range(len(evaluation))]
    sw = build_grid_model(pm.path, fm, ranges, Recipe(), tmp)
    screener = Screener(sw, pm.path, lambda method: ranges, Recipe(), samples)
    return tmp, pm, fm, ranges, samples, screener


def _real(tmp, pm, ranges, recipe, samples):
    path = build_quantized(pm.path, ranges, recipe, tmp / f"real-{recipe.key()}.onnx")
    sess = make_session(path)
    names = [o.name for o in sess.get_outputs()]
    out = [dict(zip(names, sess.run(names, s))) for s in samples]
    return out, onnx.load(str(path))


def test_the_grid_model_computes_what_the_qdq_switchable_model_computes_bit_for_bit(setup):
    tmp, pm, fm, ranges, samples, screener = setup
    sw = build_emulation(pm.path, fm, ranges, Recipe())  # Q/DQ operators in its Ifs
    plain = sw.session()
    for s, got in zip(samples, screener.run(screener.base_config)):
        want = plain.run(None, {**s, SWITCH_INPUT: sw.mask(default=True)})
        for name, w in zip([o.name for o in sw.model.graph.output], want):
            assert np.array_equal(got[name], w)


def test_grids_computed_with_ort_equal_the_grids_of_the_model_ort_builds(setup):
    tmp, pm, fm, ranges, samples, screener = setup
    sw = screener.sw
    calc = GridCalculator(pm.path, ranges, Recipe())
    for k, t in enumerate(sw.switches):
        if sw.kinds[k] == "activation":
            g = calc.grid(t, {})
            assert (np.float32(g.scale), g.lo, g.hi) == (sw.grids.scale[k], sw.grids.lo[k], sw.grids.hi[k]), t


def _step(qmodel: onnx.ModelProto, output: str) -> float:
    """The quantization step of a model output's grid in the real model (the scale of the Q node writing it)."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    for n in qmodel.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] == output:
            return float(onnx.numpy_helper.to_array(inits[n.input[1]]))
    raise AssertionError(output)


RECIPES = {
    "policy's recipe": Recipe(),
    "conv2 float": Recipe(exclude_nodes=["conv2"]),
    "c2 and r2 int16": Recipe(overrides={"c2": {"quant_type": "int16"}, "r2": {"quant_type": "int16"}}),
    "x widened": Recipe(overrides={"x": {"rmin": -9.0, "rmax": 9.0}}),
    "a16w8": scheme_recipe("a16w8", Recipe()),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_screened_candidate_is_within_three_output_steps_of_the_real_model(setup, name):
    """The emulation rounds every tensor onto the same grids as the real model, in float arithmetic; ORT's integer
    kernels (QLinearConv, fused Relu) round their accumulator once, to the output grid, where the emulation
    rounds the float result: a value that lands near the middle between two steps can go either way, and such a
    one-step difference moves on through the rest of the graph (measured here: at most 2.0 steps, with a16w8,
    whose int16 steps are 256 times finer than int8's; 1 step elsewhere). So the bound is three steps of the
    output's own grid, and the mean difference must stay below half a step."""
    tmp, pm, fm, ranges, samples, screener = setup
    recipe = RECIPES[name]
    cfg = screener.config(recipe)
    assert cfg is not None
    screened = screener.run(cfg)
    real, qmodel = _real(tmp, pm, ranges, recipe, samples)
    for output in ("y", "early"):
        step = _step(qmodel, output)
        diff = np.concatenate([np.abs(s[output] - r[output]).ravel() for s, r in zip(screened, real)])
        assert diff.max() <= 3 * step, (name, output, diff.max() / step)
        assert diff.mean() <= 0.5 * step, (name, output, diff.mean() / step)


def test_a_late_change_runs_on_a_suffix_and_gives_the_full_models_values(setup):
    tmp, pm, fm, ranges, samples, screener = setup
    cfg = screener.config(Recipe(overrides={"c3": {"quant_type": "int16"}}))
    assert screener.cuts and max(screener.first[k] for k in cfg.differs(screener.base_config)) >= min(screener.cuts)
    runs = screener.node_runs
    on_suffix = screener.run(cfg)
    assert screener.node_runs - runs < len(samples) / screener.batch  # less than one full pass per batch
    full = [dict(zip(screener.outputs, screener.session.run(None, {**feed, **cfg.feed()}))) for feed in screener.feeds]
    want = np.concatenate([f["y"] for f in full])
    assert np.allclose(np.concatenate([g["y"] for g in on_suffix]), want, rtol=1e-5, atol=1e-6)


def _straightforward(screener, cfg):
    """Per sample, what the full grid emulation model (every switch an If, every grid fed) computes for `cfg`."""
    per_batch = [dict(zip(screener.outputs, screener.session.run(None, {**feed, **cfg.feed()})))
                 for feed in screener.feeds]
    return screener._per_sample(per_batch)


FAST = {  # (the candidate's recipe, its reference's recipe): early and late changes, on the base or on a16w8
    "conv1 float": (Recipe(exclude_nodes=["conv1"]), Recipe()),
    "conv3 float": (Recipe(exclude_nodes=["conv3"]), Recipe()),
    "c3 int16": (Recipe(overrides={"c3": {"quant_type": "int16"}}), Recipe()),
    "r1 widened": (Recipe(overrides={"r1": {"rmin": 0.0, "rmax": 20.0}}), Recipe()),
    "conv2 float, c3 int16": (Recipe(exclude_nodes=["conv2"], overrides={"c3": {"quant_type": "int16"}}), Recipe()),
    "a16w8": (scheme_recipe("a16w8", Recipe()), Recipe()),
    "a16w8, conv2 float": (scheme_recipe("a16w8", Recipe(exclude_nodes=["conv2"])), scheme_recipe("a16w8", Recipe())),
}


@pytest.mark.parametrize("workers", [1, 2])
def test_the_fast_path_gives_the_full_emulation_models_values_bit_for_bit(setup, workers):
    """Screening runs each candidate from the reference's cached values at the cut before its first change, on a
    suffix with every switch fixed (no If, weights constant again), over `workers` threads: what it computes is
    what the full emulation model computes for the same setting, bit for bit, whatever the cut (focused or not)."""
    tmp, pm, fm, ranges, samples, base = setup
    screener = Screener(base.sw, pm.path, lambda method: ranges, Recipe(), samples, workers=workers)
    for focus in (None, "conv2"):
        if focus:
            cfg = screener.config(Recipe(exclude_nodes=[focus]))
            screener.focus(screener.base_config, set(cfg.differs(screener.base_config).tolist()))
        for name, (recipe, reference) in FAST.items():
            cfg, ref = screener.config(recipe), screener.config(reference)
            assert len(cfg.differs(ref)), name
            runs = screener.node_runs
            got = screener.run(cfg, ref)
            for g, w in zip(got, _straightforward(screener, cfg)):
                for output in screener.outputs:
                    assert np.array_equal(g[output], w[output]), (name, output, focus)
            if name in ("conv3 float", "c3 int16"):  # a late change: less than one full pass per batch
                assert screener.node_runs - runs < len(screener.feeds), name


def test_a_focused_cut_is_where_candidates_start(setup):
    """Focused on conv3 (the last Conv), a candidate that changes only conv3 runs from the first node reading
    its switches, not from an earlier fixed cut."""
    tmp, pm, fm, ranges, samples, base = setup
    screener = Screener(base.sw, pm.path, lambda method: ranges, Recipe(), samples, workers=1)
    cfg = screener.config(Recipe(exclude_nodes=["conv3"]))
    start = min(screener.first[k] for k in cfg.differs(screener.base_config))
    screener.focus(screener.base_config, set(cfg.differs(screener.base_config).tolist()))
    screener.run(cfg)  # computes the reference's values, with the focused cut among its cuts
    assert start in screener._reference.cuts
    runs = screener.node_runs
    screener.run(cfg)
    n = len(screener.sw.model.graph.node)
    assert screener.node_runs - runs == pytest.approx(len(screener.feeds) * (n - start) / n)


def test_recipes_a_grid_cannot_express_are_not_screened(setup):
    screener = setup[-1]
    assert screener.config(Recipe(per_channel=False)) is None
    assert screener.config(Recipe(exclude_op_types=["Conv"])) is None


def test_a_screened_pass_is_never_chosen():
    rows = [{"id": 0, "figure": "confirmed", "passes": False, "cost": 0.0, "n_changes": 0},
            {"id": 1, "figure": "screened", "passes": True, "cost": 1.0, "n_changes": 1},
            {"id": 2, "figure": "confirmed", "passes": True, "cost": 5.0, "n_changes": 3}]
    assert select(rows)["id"] == 2
    assert select(rows[:2]) is None
