"""Node sensitivity split into shards on other processes and on a real local Ray cluster gives the numbers the
analysis gives in one process: the same ranking, every value equal (not close: each configuration runs the same
suffix session on the same inputs wherever its shard runs; qcheck/analyses/shard_work.py)."""

import pytest
from helpers import residual_cnn, write_npy_samples

import qcheck.analyses.sensitivity as sensitivity
from qcheck.analyses.run_all import build_emulation
from qcheck.analyses.sensitivity import Config, ConfigRunner, node_sensitivity
from qcheck.compute.shards import RayShards, ThreadShards, open_shards
from qcheck.data.readers import open_data
from qcheck.model.prepare import load_onnx, prepare_model
from qcheck.policy.spec import DataSource, ExecutorSpec, MetricSpec, Preprocess, QuantizationSpec
from qcheck.quantize.calibrate import Recipe, calibrate

SAMPLES = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import onnx

    tmp = tmp_path_factory.mktemp("shards")
    src = residual_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", SAMPLES, seed=5)
    pm = prepare_model(load_onnx(src), src, {}, tmp)
    data = open_data(DataSource(tmp / "calib"), pm.inputs, Preprocess())
    ranges = calibrate(pm.path, data, QuantizationSpec())
    sw = build_emulation(pm.path, onnx.load(str(pm.path)), ranges, Recipe())
    # a generic metric on a slice of the output: the policy's metrics travel to the workers and back too
    metrics = {"head": MetricSpec("head", output=sw.model.graph.output[0].name, slice="[:, :2]", metric="max_abs")}
    return sw, data, metrics


@pytest.fixture
def many_groups(monkeypatch):
    """The tiny model has too few runs to pay for suffix sessions; plan groups anyway, as a large model would."""
    monkeypatch.setattr(sensitivity, "RUNS_PER_GROUP", 1)
    monkeypatch.setattr(sensitivity, "MAX_GROUPS", 4)


def _sensitivity(setup, shards, per_group=None) -> tuple[dict, ConfigRunner]:
    sw, data, metrics = setup
    runner = ConfigRunner(sw, data, list(range(SAMPLES)), metrics, max_batch=3, shards=shards,
                          shards_per_group=per_group)
    result = node_sensitivity(runner, "cosine", detail=3)
    result.pop("seconds")
    return result, runner


@pytest.fixture(scope="module")
def in_process(setup):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sensitivity, "RUNS_PER_GROUP", 1)
        mp.setattr(sensitivity, "MAX_GROUPS", 4)
        return _sensitivity(setup, ThreadShards(2))


def _check_equal(got: dict, runner: ConfigRunner, in_process: tuple[dict, ConfigRunner]) -> None:
    reference, in_process_runner = in_process
    assert [r["node"] for r in got["nodes"]] == [r["node"] for r in reference["nodes"]]  # the same ranking
    assert got == reference  # every number, every view: equal
    assert runner.runs == in_process_runner.runs and runner.notes == in_process_runner.notes == []
    info = runner.shards.describe()
    # the group's data went to the workers once per suffix group, and each group ran as two shards
    assert info["groups"] == in_process_runner.shards.describe()["groups"] >= 2
    assert info["tasks"] == 2 * info["groups"]


def test_in_process_sharding_runs_suffix_groups(in_process, setup):
    result, runner = in_process
    assert runner.batch == 3 and len(runner.batches) == 2
    assert runner.shards.describe()["groups"] >= 2  # the groups the other tests compare really are suffix groups
    assert len(result["nodes"]) == len(setup[0].nodes) and result["nodes"][0]["views"]["node"]["head"] > 0


def test_sensitivity_on_a_local_process_pool_equals_the_in_process_result(setup, in_process, many_groups):
    with open_shards(ExecutorSpec("local", workers=2)) as pool:
        got, runner = _sensitivity(setup, pool)
        assert pool.bytes_shared > 0
    _check_equal(got, runner, in_process)


def test_sensitivity_on_a_local_ray_cluster_equals_the_in_process_result(setup, in_process, many_groups):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]'")
    with open_shards(ExecutorSpec("ray", workers=2)) as pool:
        import ray

        # the cluster qcheck started serves this machine only: it listens on the loopback address
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        assert pool.workers == 2
        got, runner = _sensitivity(setup, pool)
        assert pool.bytes_shared > 0
        with pytest.raises(ZeroDivisionError):  # a shard's own error, not Ray's wrapper of it
            other = RayShards(ray, ExecutorSpec("ray"))  # on the same cluster
            other.map(lambda shared, shard: shared / shard, other.share(1), [0])  # a lambda travels by value
    assert not ray.is_initialized()  # the cluster it started ended with the block
    _check_equal(got, runner, in_process)


def test_one_shard_per_group_gives_the_same_numbers(setup, in_process, many_groups):
    """A shard's session has one thread whatever the pool's size: the numbers cannot depend on it."""
    got, runner = _sensitivity(setup, ThreadShards(1))
    assert got == in_process[0] and runner.shards.describe()["tasks"] == runner.shards.describe()["groups"]


def test_more_shards_than_workers_give_the_same_numbers(setup, in_process, many_groups):
    got, runner = _sensitivity(setup, ThreadShards(2), per_group=5)
    reference, _ = in_process
    assert got == reference
    assert runner.shards.describe()["tasks"] > 2 * runner.shards.describe()["groups"]


def test_shard_masks_cover_each_configuration_once(setup, many_groups):
    """Interleaved shards: every configuration of a group in exactly one shard."""
    sw, data, metrics = setup
    seen = []

    class Recording(ThreadShards):
        def map(self, fn, handle, shards, done=None):
            seen.extend(m.tobytes() for shard in shards for m in shard.masks)
            return super().map(fn, handle, shards, done)

    runner = ConfigRunner(sw, data, list(range(SAMPLES)), metrics, max_batch=3, shards=Recording(2))
    configs = [Config(n.node, sw.mask(on=n.all)) for n in sw.nodes]
    runner.evaluate(configs)
    assert sorted(seen) == sorted(c.mask.tobytes() for c in configs)


def test_groups_beyond_memory_mb_are_sent_in_parts_with_the_same_numbers(setup, in_process, many_groups):
    """analyses.memory_mb below a suffix group's data: each range of batches goes to the workers on its own, the
    scores so far travelling with the next range; every number as in one process."""
    with open_shards(ExecutorSpec("local", workers=2)) as pool:
        sw, data, metrics = setup
        runner = ConfigRunner(sw, data, list(range(SAMPLES)), metrics, max_batch=3, shards=pool,
                              activation_budget=1)  # one byte: every batch alone is over it
        got = node_sensitivity(runner, "cosine", detail=3)
        got.pop("seconds")
    reference, in_process_runner = in_process
    assert got == reference and runner.runs == in_process_runner.runs
    groups = in_process_runner.shards.describe()["groups"]
    assert runner.split_groups == groups and pool.describe()["groups"] == 2 * groups  # two batches: two parts each
    assert any("exceeds analyses.memory_mb" in n for n in runner.notes)
