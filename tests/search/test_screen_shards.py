"""Screening many candidates at once (`Evaluator.screen_many`) as shards on threads, a local process pool and a
real local Ray cluster gives the figures of screening them one by one: every candidate record equal (not close:
each candidate runs the same single-threaded suffix session on the same values wherever its shard runs,
`screen.suffix_outputs`), in the same order, with one shard group per reference (more when analyses.memory_mb
splits a reference's data).

The model: `helpers.matmul_stack` (eight MatMuls whose int8 activations each add a little error), 20 evaluation
samples (three batches of up to 8). The candidates: per-layer remedies on the policy's recipe, the same on a
whole-model change (symmetric activations: a second reference), and one candidate screening cannot express
(per-channel weights: built for real, in its place in the order).
"""

from __future__ import annotations

import pytest
from helpers import matmul_screening_setup

from qcheck.compute.shards import ProcessShards, RayShards, ThreadShards
from qcheck.policy.spec import ExecutorSpec, SearchBudget
from qcheck.quantize.calibrate import Recipe
from qcheck.search import finding_effects
from qcheck.search.evaluate import Evaluator
from qcheck.search.screen import Screener, build_grid_model
from qcheck.search.space import MODEL, Change, Graph

LAYERS = [f"mm{i}" for i in range(8)]
SYMMETRIC = Change("symmetric", MODEL)
SETS = ([(Change("int16_activations", n),) for n in LAYERS[:4]]
        + [(Change("keep_float", a), Change("int16_activations", b)) for a, b in zip(LAYERS[4:], LAYERS[:4])]
        + [(Change("per_channel", MODEL),)]  # weights change: built, not screened
        + [(SYMMETRIC, Change("keep_float", n)) for n in LAYERS[::2]]
        + [(SYMMETRIC,), ()])  # a reference itself: no run, its outputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("screen-shards")
    return matmul_screening_setup(tmp, "y_err <= 0.01")


def _evaluator(setup, shards=None, memory_mb=None) -> Evaluator:
    tmp, policy, pm, fm, ranges, samples = setup
    base = Recipe()
    graph = Graph(fm, set(ranges.ranges), base)
    ev = Evaluator(pm.path, fm, lambda method: ranges, base, samples, policy.metrics, policy.require, {},
                   policy.target, graph, SearchBudget(max_trials=10), tmp, shards=shards, memory_mb=memory_mb)
    ev.make_screener = lambda: Screener(build_grid_model(pm.path, fm, ranges, base, tmp), pm.path,
                                        lambda method: ranges, base, samples)
    ev.evaluate(())  # the policy's recipe: the first trial, as every search starts
    return ev


@pytest.fixture(scope="module")
def one_by_one(setup) -> list[dict]:
    ev = _evaluator(setup)
    ev.race = False  # every figure on all the samples, as screen_many gives them (racing: test_screen_race.py)
    for changes in SETS:
        ev.screen(changes)
    assert ev.screener.batch == 8 and len(ev.screener.batches) == 3
    return ev.candidates


def _check(ev: Evaluator, one_by_one: list[dict], groups: int) -> None:
    got = ev.screen_many(SETS)
    assert ev.candidates == one_by_one  # every record, in the same order: ids, figures, errors
    assert got == [c for c in one_by_one[1:] if c["label"] != "the policy's recipe"] + [one_by_one[0]]
    assert [c["figure"] for c in ev.candidates].count("confirmed") == 2  # the policy's recipe, per-channel
    assert len({c["shortfall"] for c in ev.candidates}) > 5  # the candidates really differ
    info = ev.shards.describe()
    assert info["groups"] == groups
    # each reference's candidates (the policy's recipe's, symmetric's) split into two shards
    assert info["tasks"] == 2 * groups


def test_the_sets_cover_both_references_and_a_built_candidate(one_by_one):
    labels = [c["label"] for c in one_by_one]
    assert labels[0] == "the policy's recipe" and labels.count("the policy's recipe") == 1
    assert sum("symmetric" in label for label in labels) == 5  # four float layers on it, and itself
    assert one_by_one[9]["figure"] == "confirmed" and "per-channel" in one_by_one[9]["label"]


def test_on_threads(setup, one_by_one):
    _check(_evaluator(setup, ThreadShards(2)), one_by_one, groups=2)


def test_on_a_local_process_pool(setup, one_by_one):
    pool = ProcessShards(2)
    try:
        ev = _evaluator(setup, pool)
        _check(ev, one_by_one, groups=2)
        assert pool.bytes_shared > 0
    finally:
        pool.close()


def test_on_a_local_process_pool_with_each_references_data_split_by_memory_mb(setup, one_by_one):
    """A bound below one reference's data: each batch of samples goes to the workers as its own group."""
    pool = ProcessShards(2)
    try:
        ev = _evaluator(setup, pool, memory_mb=0.001)
        _check(ev, one_by_one, groups=2 * 3)
        assert ev.screener.group_ranges == 6 and ev.screener.over_memory  # one batch alone exceeds 1 kB
    finally:
        pool.close()


def test_on_a_local_ray_cluster(setup, one_by_one, ray_cluster):
    ev = _evaluator(setup, RayShards(ray_cluster, ExecutorSpec("ray")))
    _check(ev, one_by_one, groups=2)
    assert ev.shards.describe()["bytes_shared"] > 0


def test_finding_effects_screen_every_findings_remedy_together(setup):
    ev = _evaluator(setup, ThreadShards(2))
    proposed = {n: ["int16_activations"] for n in LAYERS}
    effects = finding_effects(ev, proposed, ["int16_activations"])
    assert set(effects) == set(LAYERS) and ev.shards.describe()["groups"] == 1
    alone = _evaluator(setup)
    for n in LAYERS:  # one by one: the same recovery per node
        assert effects[n] == round(alone.candidates[0]["shortfall"] -
                                   alone.screen((Change("int16_activations", n),))["shortfall"], 6)
