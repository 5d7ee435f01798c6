"""Suffix sessions (qcheck.analyses.suffix) compute what the full switchable model computes, for less.

The model has the cases a cut must handle: a skip connection (a tensor from
before the cut read after it), a constant shared by two nodes (one switch,
read early and late), and a model output produced before most cuts.
"""

import numpy as np
import onnx
import pytest
from helpers import residual_cnn, write_npy_samples

import qcheck.analyses.sensitivity as sensitivity
from qcheck.analyses.run_all import build_emulation
from qcheck.analyses.sensitivity import Config, ConfigRunner
from qcheck.analyses.suffix import base_model, first_readers, specialize, typed
from qcheck.analyses.switchable import SWITCH_INPUT
from qcheck.data.readers import open_data
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.model.runtime import make_session
from qcheck.policy.spec import DataSource, Preprocess, QuantizationSpec
from qcheck.quantize.calibrate import Recipe, calibrate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suffix")
    src = residual_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 6, seed=5)
    pm = prepare_model(load_onnx(src), src, {}, tmp)
    data = open_data(DataSource(tmp / "calib"), pm.inputs, Preprocess())
    ranges = calibrate(pm.path, data, QuantizationSpec())
    import onnx
    sw = build_emulation(pm.path, onnx.load(str(pm.path)), ranges, Recipe())
    return sw, data, pm


def test_with_no_switch_kept_the_specialized_model_is_the_float_model_exactly(setup):
    # every If becomes an Identity of its float tensor; weights are constants again, so ORT picks
    # the float model's kernels: bit for bit, not within a tolerance
    sw, data, pm = setup
    base, flt = make_session(base_model(sw.model, [])), make_session(pm.path)
    for i in range(len(data)):
        for got, want in zip(base.run(None, data[i]), flt.run(None, data[i])):
            assert np.array_equal(got, want)


def test_every_node_only_suffix_matches_the_full_model(setup):
    sw, data, _ = setup
    full = sw.session()
    first = first_readers(sw.model, len(sw.switches))
    names = [o.name for o in sw.model.graph.output]
    sizes = []
    for node in sw.nodes:
        mask = sw.mask(on=node.all)
        suffix = specialize(sw.model, set(node.all), min(first[k] for k in node.all))
        sizes.append(len(suffix.model.graph.node))
        base = make_session(base_model(sw.model, suffix.inputs))
        session, flipped, total = None, {}, {}
        for i in range(len(data)):
            x = data[i]
            wanted = names + [n for n in suffix.inputs if n not in x]
            values = {**x, **dict(zip(wanted, base.run(wanted, x)))}
            expect = dict(zip(names, full.run(None, {**x, SWITCH_INPUT: mask})))
            session = session or make_session(typed(suffix, values, batched=False))
            got = {**{n: values[n] for n in names},
                   **dict(zip(suffix.outputs, session.run(suffix.outputs,
                                                          {**{n: values[n] for n in suffix.inputs}, SWITCH_INPUT: mask})))}
            for n in names:
                # Float rounding differs (the suffix's weights are constants ORT pre-packs), by ~1e-7.
                # Rarely that moves a value across a rounding boundary of a grid: one step in one
                # element, which a 3x3 convolution spreads to 3*3*4 = 36 outputs. Count those.
                far = np.abs(got[n] - expect[n]) > 1e-5 * max(np.abs(expect[n]).max(), 1e-30)
                flipped[n] = flipped.get(n, 0) + int(np.count_nonzero(far))
                total[n] = total.get(n, 0) + far.size
        for n in names:
            assert flipped[n] <= 0.02 * total[n], (node.node, n, flipped[n])
    # the cut does cut: the last node's suffix holds a fraction of the graph
    assert sizes[-1] < len(sw.model.graph.node) / 2


def test_grouped_evaluation_equals_the_full_model_evaluation(setup, monkeypatch):
    sw, data, _ = setup
    runner = ConfigRunner(sw, data, list(range(len(data))), {})
    configs = [Config(n.node, sw.mask(on=n.all)) for n in sw.nodes]
    configs += [Config(n.node, sw.mask(on=n.weights)) for n in sw.nodes if n.weights]
    configs += [Config("all", sw.mask(default=True)), Config("none", sw.mask())]
    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 10**9)
    assert [g.full for g in runner.groups(configs)] == [True]
    reference = runner.evaluate(configs)
    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 1)
    monkeypatch.setattr(sensitivity, "MAX_GROUPS", len(configs))
    groups = runner.groups(configs)
    assert len(groups) > 3 and sorted(c for g in groups for c in g.configs) == list(range(len(configs)))
    grouped = runner.evaluate(configs)
    for config, a, b in zip(configs, grouped, reference):
        for out in a["outputs"]:
            assert a["outputs"][out] == pytest.approx(b["outputs"][out], abs=1e-6), (config.label, out)
        # a rounding flip (see above) moves one configuration's MSE by a fraction of a percent
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-2, abs=1e-12), config.label
    # switching nothing on is the float model in both: identical outputs
    assert grouped[-1]["cosine"] == pytest.approx(1.0, abs=1e-12) and grouped[-1]["mse"] == 0.0


def test_batched_suffixes_equal_sample_by_sample(setup, monkeypatch):
    sw, data, _ = setup
    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 1)
    configs = [Config(n.node, sw.mask(on=n.all)) for n in sw.nodes]
    one = ConfigRunner(sw, data, list(range(len(data))), {}, max_batch=1)
    many = ConfigRunner(sw, data, list(range(len(data))), {}, max_batch=3)
    assert one.batch == 1 and many.batch == 3 and len(many.batches) == 2
    for a, b in zip(many.evaluate(configs), one.evaluate(configs)):
        assert a["cosine"] == pytest.approx(b["cosine"], abs=1e-6)
        assert a["outputs"].keys() == b["outputs"].keys()


def test_activations_beyond_the_memory_budget_go_to_disk_and_give_the_same_results(setup, monkeypatch, tmp_path):
    sw, data, _ = setup
    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 1)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the store puts its folder
    configs = [Config(n.node, sw.mask(on=n.all)) for n in sw.nodes]
    in_memory = ConfigRunner(sw, data, list(range(len(data))), {}, max_batch=1)  # batching is decided by timing
    on_disk = ConfigRunner(sw, data, list(range(len(data))), {}, max_batch=1, activation_budget=0)
    assert on_disk.evaluate(configs) == in_memory.evaluate(configs)  # .npy files are exact
    kept, spilled = in_memory.activations, on_disk.activations
    assert kept["bytes_on_disk"] == 0 and spilled["bytes_in_memory"] == 0
    assert spilled["bytes_on_disk"] == kept["bytes_in_memory"] > 0 and spilled["tensors"] == kept["tensors"]
    assert in_memory.float_runs == len(in_memory.batches)  # one float run per batch, whatever the groups
    assert not list(tmp_path.glob("qcheck-activations-*"))  # the folder went with the evaluation


@pytest.mark.parametrize("broken", ["typed", "base_model"])
def test_a_suffix_onnx_runtime_refuses_falls_back_to_the_full_model_and_says_so(setup, monkeypatch, broken):
    sw, data, _ = setup
    configs = [Config(n.node, sw.mask(on=n.all)) for n in sw.nodes]
    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 10**9)
    reference = ConfigRunner(sw, data, list(range(len(data))), {}, max_batch=1).evaluate(configs)

    def refused(*args, **kwargs):  # a model ONNX Runtime really refuses: no graph, no opset
        return onnx.ModelProto(ir_version=8)

    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 1)
    monkeypatch.setattr(sensitivity, broken, refused)
    runner = ConfigRunner(sw, data, list(range(len(data))), {}, max_batch=1)
    assert runner.evaluate(configs) == reference  # the same session, the same runs: equal, not close
    assert len(runner.notes) == 1 and "ONNX Runtime" in runner.notes[0] and "full switchable model" in runner.notes[0]


@pytest.mark.parametrize("broken", ["typed", "base_model"])
def test_a_bug_while_building_a_suffix_is_not_taken_for_onnx_runtime_refusing_it(setup, monkeypatch, broken):
    """Only ONNX Runtime's refusals fall back to the full model; a bug of qcheck's in the same step ends the run."""
    sw, data, _ = setup
    configs = [Config(n.node, sw.mask(on=n.all)) for n in sw.nodes]

    def bug(*args, **kwargs):
        raise KeyError("a tensor qcheck lost track of")

    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 1)
    monkeypatch.setattr(sensitivity, broken, bug)
    with pytest.raises(KeyError):
        ConfigRunner(sw, data, list(range(len(data))), {}, max_batch=1).evaluate(configs)
