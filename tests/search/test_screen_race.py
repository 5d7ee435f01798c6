"""Racing (`Evaluator._screen_pairs`): a screened candidate is judged after a share of the samples and rejected there
when a requirement line fails even with every other sample given the float model's outputs.

Two things make that safe, and both are tested here:
- the bound: for every value a raced line can name, taking the unseen samples as the float model's outputs gives the
  best value all the samples can reach (random outputs, every prefix); cosine is the exception, shown by a
  counterexample, and is not raced;
- the search sees the same pass/fail decisions: on `helpers.matmul_stack` (20 samples, three batches of up to 8),
  candidates screened with and without racing pass alike, those not rejected have records equal to the unraced
  ones, the rejected ones are marked, ran fewer batches, and are completed on every sample when asked for figures.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import matmul_screening_setup

from qcheck.compute.shards import ProcessShards, ThreadShards
from qcheck.measure.outputs import aggregate_model_metrics, compare_outputs
from qcheck.measure.tasks.classification import Classification
from qcheck.measure.tasks.ctc import CTC
from qcheck.measure.tasks.detection import Detection
from qcheck.measure.tasks.regression import Regression
from qcheck.measure.tasks.segmentation import Segmentation
from qcheck.policy.expr import Expression
from qcheck.policy.metric_names import OUTPUT_METRICS, TASK_VALUES
from qcheck.policy.spec import MetricSpec, SearchBudget
from qcheck.quantize.calibrate import Recipe
from qcheck.rules.requirements import requirement_env
from qcheck.search.evaluate import Evaluator, race_stages, raceable, trial_line
from qcheck.search.screen import Screener, build_grid_model
from qcheck.search.space import MODEL, Change, Graph

# ----------------------------------------------------------------------------------------------- the bound

N = 6  # samples
USER = {f"u_{m}": MetricSpec(f"u_{m}", "map", metric=m) for m in ("sqnr", "mse", "rmse", "max_abs", "mean_abs")}
USER["u_top1"] = MetricSpec("u_top1", "cls", metric="top1")
USER["u_top5"] = MetricSpec("u_top5", "cls", metric="top5")
TASKS = {"c": ("classification", {"output": "cls", "k": 3}), "o": ("ctc", {"output": "seq", "blank": 0}),
         "s": ("segmentation", {"output": "map", "threshold": 0.0}),
         "m": ("segmentation", {"output": "mc", "class_axis": 1}), "r": ("regression", {"output": "map"}),
         "d": ("detection", {"boxes_output": "b", "scores_output": "sc", "box_format": "xyxy"})}
CLASSES = {"classification": Classification, "ctc": CTC, "segmentation": Segmentation, "regression": Regression,
           "detection": Detection}


def _outputs(rng, noise: float) -> tuple[dict, dict]:
    """One sample's float outputs and a quantized version `noise` away (some class, step and box choices flip)."""
    boxes = np.sort(rng.uniform(0, 60, (1, 6, 4)), axis=-1).astype(np.float32)[..., [0, 1, 2, 3]]
    boxes[..., 2:] = boxes[..., :2] + rng.uniform(5, 20, (1, 6, 2))
    f = {"cls": rng.standard_normal((1, 10)), "seq": rng.standard_normal((1, 12, 5)) * 2,
         "map": rng.standard_normal((1, 1, 8, 8)), "mc": rng.standard_normal((1, 3, 8, 8)), "b": boxes,
         "sc": rng.uniform(0, 1, (1, 6, 2))}
    q = {k: v + noise * rng.standard_normal(v.shape) * (10 if k == "b" else 1) for k, v in f.items()}
    q["sc"] = np.clip(q["sc"], 0, 1)
    return ({k: v.astype(np.float32) for k, v in f.items()}, {k: v.astype(np.float32) for k, v in q.items()})


def _env(f_outs: list[dict], q_outs: list[dict]) -> dict:
    metrics = {**USER, **{n: MetricSpec(n, o["output"] if "output" in o else None, task=t, options=o)
                          for n, (t, o) in TASKS.items()}}
    tasks = [CLASSES[t](n, dict(o)) for n, (t, o) in TASKS.items()]
    compared = compare_outputs(list(f_outs[0]), metrics, tasks)
    for i, (f, q) in enumerate(zip(f_outs, q_outs)):
        compared.update(str(i), f, q)
    return requirement_env(aggregate_model_metrics(compared.output_results()), compared.user_results(), {},
                           compared.task_results()), metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_the_float_models_outputs_for_the_unseen_samples_give_every_raced_value_at_its_best(seed):
    """For each prefix of the samples, the value with the rest taken as the float outputs is at least as good as the
    value on all the real outputs, for every name a `>=` (higher is better) or `<=` (lower is better) line races on."""
    rng = np.random.default_rng(seed)
    pairs = [_outputs(rng, noise) for noise in rng.uniform(0.05, 1.5, N)]
    f_outs, q_outs = [p[0] for p in pairs], [p[1] for p in pairs]
    full, metrics = _env(f_outs, q_outs)
    checked = set()
    for name, value in full.items():
        if not isinstance(value, float) or np.isnan(value):
            continue
        kind = (OUTPUT_METRICS.get(name.split(".")[-1]) if name.startswith("model.") else
                OUTPUT_METRICS[metrics[name].metric] if name in USER else
                TASK_VALUES.get(name.split(".")[1] if "." in name else None))
        if kind is None:
            continue
        line = f"{name} {'>=' if kind.higher_is_better else '<='} 0.5"
        if not raceable(Expression(line, requirement=True), metrics):
            assert kind.name == "cosine" or kind.ideal is None, line
            continue
        checked.add(name)
        for m in range(1, N):
            best, _ = _env(f_outs, q_outs[:m] + f_outs[m:])
            sign = 1 if kind.higher_is_better else -1
            assert sign * best[name] >= sign * value - 1e-12, (name, m, best[name], value)
    assert len(checked) >= 25  # every output metric but cosine, on model.* and the policy metrics, and task values
    assert {"o.string_agreement", "o.cer", "s.iou", "m.iou", "d.f1", "d.score_mean_error", "r.psnr",
            "c.top1"} <= checked


def test_cosine_is_not_raced_the_rest_of_the_samples_can_raise_it_above_the_float_outputs():
    """Pooled over the samples, the cosine of [1, 0], [1, 0] against [1, 1], [2, 0] (the second sample's output
    twice the float one) is 3 / sqrt(12) = 0.866, more than the 2 / sqrt(6) = 0.816 of [1, 1], [1, 0]."""
    f = [{"y": np.array([[1.0, 0.0]], np.float32)}] * 2
    real = [{"y": np.array([[1.0, 1.0]], np.float32)}, {"y": np.array([[2.0, 0.0]], np.float32)}]
    metrics = {"cos": MetricSpec("cos", "y", metric="cosine")}

    def cosine(q):
        compared = compare_outputs(["y"], metrics)
        for i, (a, b) in enumerate(zip(f, q)):
            compared.update(str(i), a, b)
        return compared.user_results()["cos"]["value"]

    assert cosine(real) == pytest.approx(3 / np.sqrt(12), abs=1e-6)
    assert cosine(real[:1] + f[1:]) == pytest.approx(2 / np.sqrt(6), abs=1e-6)
    assert not raceable(Expression("cos >= 0.85", requirement=True), metrics)
    assert not raceable(Expression("model.cosine >= 0.85", requirement=True), metrics)


@pytest.mark.parametrize("line, expected", [
    ("y_err <= 0.01", True), ("y_err < 0.01", True), ("0.01 >= y_err", True),
    ("y_err >= 0.01", False),  # lower is better: the float outputs are its worst case here, not its best
    ("2 * y_err <= 0.01", False),  # a formula of the value: not judged
    ("y_err <= 0.01 and y_err >= 0", False),
    ("model.sqnr >= 30", True), ("model.cosine >= 0.99", False),
    ("ocr.string_agreement >= 0.9", True), ("ocr >= 0.9", True), ("ocr.cer <= 0.1", True),
    ("ocr.accuracy_quant >= 0.9", False),  # against labels: the quantized model may beat the float one
    ("mine.score >= 0.5", False),  # a python task's value: its meaning is unknown
    ("findings.error <= 0", True),  # screening does not change it
])
def test_which_lines_race(line, expected):
    metrics = {"y_err": MetricSpec("y_err", "y", metric="max_abs"),
               "ocr": MetricSpec("ocr", "y", task="ctc", options={"output": "y"}),
               "mine": MetricSpec("mine", None, task="python", options={"values": ["score"]})}
    assert raceable(Expression(line, requirement=True), metrics) is expected


def test_stages_end_at_about_an_eighth_a_quarter_a_half_three_quarters_in_multiples_of_the_threads():
    assert race_stages(4, 1) == [1, 2, 3, 4]
    assert race_stages(4, 2) == [2, 4]
    assert race_stages(3, 2) == [2, 3]
    assert race_stages(32, 2) == [4, 8, 16, 24, 32]
    assert race_stages(32, 1) == [4, 8, 16, 24, 32]
    assert race_stages(1, 2) == [1]


# ----------------------------------------------------------------------------------------------- the search's view

LAYERS = [f"mm{i}" for i in range(8)]
SETS = ([tuple(Change("int16_activations", n) for n in LAYERS[:k]) for k in range(1, 9)]
        + [tuple(Change("keep_float", n) for n in LAYERS[k:]) for k in range(0, 8, 2)]
        + [(Change("keep_float", "mm7"), Change("int16_activations", "mm6")), (Change("symmetric", MODEL),)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("screen-race")
    return matmul_screening_setup(tmp, "y_err <= 0.003")


def _evaluator(setup, race: bool, shards=None) -> Evaluator:
    tmp, policy, pm, fm, ranges, samples = setup
    base = Recipe()
    ev = Evaluator(pm.path, fm, lambda method: ranges, base, samples, policy.metrics, policy.require, {},
                   policy.target, Graph(fm, set(ranges.ranges), base), SearchBudget(max_trials=10), tmp,
                   shards=shards, confidence=0.9)
    ev.race = race
    ev.make_screener = lambda: Screener(build_grid_model(pm.path, fm, ranges, base, tmp), pm.path,
                                        lambda method: ranges, base, samples, workers=2)
    ev.evaluate(())
    return ev


@pytest.fixture(scope="module")
def unraced(setup) -> Evaluator:
    ev = _evaluator(setup, race=False)
    for changes in SETS:
        ev.screen(changes)
    return ev


def _same_decisions(raced: Evaluator, unraced: Evaluator) -> None:
    assert len(raced.candidates) == len(unraced.candidates)
    for a, b in zip(raced.candidates, unraced.candidates):
        assert a["passes"] == b["passes"] and a["label"] == b["label"]
        if a.get("raced"):
            assert not b["passes"] and a["raced"]["samples"] < a["raced"]["of"] == 20
            for qa, qb in zip(a["requirements"], b["requirements"]):  # the values at best: never worse than all
                assert qa["values"]["y_err"] <= qb["values"]["y_err"]
        else:
            assert a == b


def test_racing_one_by_one_changes_no_decision_and_saves_runs(setup, unraced):
    ev = _evaluator(setup, race=True)
    lines = []
    ev.log = lines.append
    for changes in SETS:
        ev.screen(changes)
    _same_decisions(ev, unraced)
    raced = [c for c in ev.candidates if c.get("raced")]
    assert raced and any(c["passes"] for c in ev.candidates)  # both kinds are in the test
    assert ev.screener.batches == [list(range(8)), list(range(8, 16)), list(range(16, 20))]
    assert all(c["raced"]["samples"] == 16 for c in raced)  # two threads: judged after two batches
    # each skipped its last batch, but the whole-model change (its own reference: its outputs, no run)
    assert ev.screener.runs == unraced.screener.runs - sum(c["changes"][0]["subject"] != MODEL for c in raced)
    assert sum("raced: rejected after 16 of 20 samples" in line for line in lines) == len(raced)
    assert "raced" in trial_line(raced[0]) and "(screened)" not in trial_line(raced[0])


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_racing_in_shards_changes_no_decision_and_is_completed_when_figures_are_asked(setup, unraced, pool):
    """Together (`screen_many`, as a level of delta debugging), stages of one batch: rejected after 8 samples. Asked
    again without racing (as the findings' effects ask), a rejected candidate is screened on every sample: its
    record completed under the same id, equal to the unraced one."""
    shards = ThreadShards(2) if pool == "threads" else ProcessShards(2)
    try:
        ev = _evaluator(setup, race=True, shards=shards)
        ev.screen_many(SETS, race=True)
        _same_decisions(ev, unraced)
        raced = [c["id"] for c in ev.candidates if c.get("raced")]
        assert raced and {ev.candidates[i]["raced"]["samples"] for i in raced} <= {8, 16}
        ev.screen_many(SETS)
        assert ev.candidates == unraced.candidates
    finally:
        if pool == "processes":
            shards.close()
