"""Node sensitivity and the search's screening in shards: threads of one process, a local process pool and a local
Ray cluster, 1 and 2 shards.

    python bench/bench_shards.py                                  # examples/zoo/rec.yaml: the zoo's largest model
    python bench/bench_shards.py examples/zoo/det.yaml --samples 8 --configs threads2,local2,ray2
    python bench/bench_shards.py --screening 40 --configs threads1,threads2,local1,local2,ray1,ray2

Prints, asserts nothing (the machine is shared and noisy; figures, not tests):

- for each configuration, node sensitivity of every node (with the detailed views of the worst 20, as a run does):
  wall time, the shard groups and tasks, the bytes shared once per group (local: pickled files; Ray: the arrays
  put in the object store), the time the shards spent inside their workers and how much of it went into building
  their sessions, and whether every number equals the first configuration's (it should: same sessions, same inputs);
- the overhead per task: N shards that do nothing, on a local process pool (pool start-up included) and on a
  running Ray cluster (its start-up reported apart);
- with --screening N: instead of sensitivity, N candidates (each of the first nodes kept float, or its activations
  in int16) screened on the grid emulation model one by one (`Evaluator.screen`, the samples' batches over the
  cores) and all at once (`Evaluator.screen_many`) on each configuration: wall time, groups, tasks, bytes shared,
  and whether every candidate's figures equal those screened one by one;
- the machine's load average before and after, since other processes share the cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench_analyses import prepare

from qcheck.analyses.run_all import build_emulation
from qcheck.analyses.sensitivity import ConfigRunner, node_sensitivity
from qcheck.compute.ray_cluster import start_local
from qcheck.compute.shards import ProcessShards, RayShards, ThreadShards
from qcheck.data.readers import open_data
from qcheck.policy.spec import ExecutorSpec

DEFAULT = Path(__file__).resolve().parent.parent / "examples" / "zoo" / "rec.yaml"
CONFIGS = ("threads1", "threads2", "local1", "local2", "ray1", "ray2")


def compare(result: dict, reference: dict) -> str:
    """'same numbers', or how far apart: the ranking, and the largest difference of a node view's cosine."""
    if result == reference:
        return "same numbers"
    want = {r["node"]: r["views"] for r in reference["nodes"]}
    far = max(abs(v["cosine"] - want[r["node"]][k]["cosine"]) for r in result["nodes"] for k, v in r["views"].items())
    same_rank = [r["node"] for r in result["nodes"]] == [r["node"] for r in reference["nodes"]]
    return f"DIFFERENT: ranking {'same' if same_rank else 'differs'}, cosines up to {far:.2e} apart"


def noop(shared, shard):
    return shard


def per_task(pool, n: int) -> float:
    start = time.perf_counter()
    handle = pool.share({"x": 1})
    pool.map(noop, handle, list(range(n)))
    pool.release(handle)
    return (time.perf_counter() - start) / n


def run_config(name: str, sw, samples, ray) -> tuple[dict, dict]:
    shards = int(name[-1])
    pool = (ThreadShards(shards) if name.startswith("threads") else ProcessShards(shards) if name.startswith("local")
            else RayShards(ray, ExecutorSpec("ray", workers=2)))
    try:
        start = time.perf_counter()
        runner = ConfigRunner(sw, samples, list(range(len(samples))), {}, shards=pool, shards_per_group=shards)
        result = node_sensitivity(runner, "cosine", detail=20)
        wall = time.perf_counter() - start
    finally:
        pool.close()
    result.pop("seconds")
    return result, {"wall": wall, **pool.describe(), **runner.shard_time, "runs": runner.runs,
                    "load": os.getloadavg()[0]}


def screening_sets(policy, float_model, ranges, recipe, n: int) -> list[tuple]:
    """n candidates a search could know in advance: the nodes in graph order, each kept float or with int16
    activations (what finding effects and a level of delta debugging screen)."""
    from qcheck.search.space import Graph, unit_changes

    graph = Graph(float_model, set(ranges.ranges), recipe)
    sets: list[tuple] = []
    for node in float_model.graph.node:
        for change in unit_changes(node.name, ["keep_float", "int16_activations"], graph, recipe):
            sets.append((change,))
        if len(sets) >= n:
            break
    return sets[:n]


def evaluator(policy, prepared, float_model, ranges, recipe, samples, work: Path, shards=None):
    from qcheck.policy.spec import SearchBudget
    from qcheck.search.evaluate import Evaluator
    from qcheck.search.screen import Screener, build_grid_model
    from qcheck.search.space import Graph

    graph = Graph(float_model, set(ranges.ranges), recipe)
    ev = Evaluator(prepared.path, float_model, lambda m: ranges, recipe, samples, policy.metrics, policy.require, {},
                   policy.target, graph, SearchBudget(max_trials=10, max_seconds=1e9), work, shards=shards)
    ev.make_screener = lambda: Screener(build_grid_model(prepared.path, float_model, ranges, recipe, work),
                                        prepared.path, lambda m: ranges, recipe, samples)
    ev.evaluate(())
    assert ev.screener is not None  # built before the clock starts, as in a search that screens
    return ev


def bench_screening(args, configs, ray, policy, prepared, float_model, ranges, recipe, samples, work) -> None:
    sets = screening_sets(policy, float_model, ranges, recipe, args.screening)
    ev = evaluator(policy, prepared, float_model, ranges, recipe, samples, work)
    start = time.perf_counter()
    for changes in sets:
        ev.screen(changes)
    reference = ev.candidates
    print(f"screening {len(sets)} candidates, batch {ev.screener.batch} ({len(ev.screener.batches)} batch(es)): "
          f"one by one {time.perf_counter() - start:7.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    for name in configs:
        shards = int(name[-1])
        pool = (ThreadShards(shards) if name.startswith("threads") else ProcessShards(shards)
                if name.startswith("local") else RayShards(ray, ExecutorSpec("ray", workers=2)))
        try:
            ev = evaluator(policy, prepared, float_model, ranges, recipe, samples, work, pool)
            ev.shards_per_group = shards
            start = time.perf_counter()
            ev.screen_many(sets)
            wall = time.perf_counter() - start
        finally:
            pool.close()
        r = pool.describe()
        same = "same figures" if ev.candidates == reference else "DIFFERENT figures"
        print(f"{name:8s} wall {wall:7.1f} s  groups {r['groups']:2d} tasks {r['tasks']:3d}  shared "
              f"{r.get('bytes_shared', 0) / 2**20:6.1f} MB  {same}  (load {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("policy", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--overhead-tasks", type=int, default=40)
    ap.add_argument("--screening", type=int, default=0, help="screen this many candidates instead of sensitivity")
    args = ap.parse_args()
    configs = args.configs.split(",")
    print(f"load average before: {os.getloadavg()} (2 cores, shared with other sessions)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        policy, prepared, calib, float_model, ranges, recipe = prepare(args.policy, Path(tmp))
        sw = build_emulation(prepared.path, float_model, ranges, recipe)
        samples = [calib[i % len(calib)] for i in range(args.samples)]
        print(f"model: {policy.model.path.name}, {len(float_model.graph.node)} nodes, {len(sw.nodes)} quantizable, "
              f"{len(sw.switches)} switches, {args.samples} samples", flush=True)
        ray, started = None, 0.0
        if any(c.startswith("ray") for c in configs):
            clock = time.perf_counter()
            ray = start_local(2)
            started = time.perf_counter() - clock
            print(f"local Ray cluster of 2 CPUs on {sorted({n['NodeManagerAddress'] for n in ray.nodes()})}: "
                  f"started in {started:.1f} s", flush=True)
        if args.screening:
            evaluation = policy.data.evaluation or policy.data.calibration
            data = open_data(evaluation, prepared.inputs, policy.data.preprocess)
            samples = [data[i % len(data)] for i in range(args.samples)]
            bench_screening(args, configs, ray, policy, prepared, float_model, ranges, recipe, samples, Path(tmp))
            if ray is not None:
                ray.shutdown()
            print(f"load average after: {os.getloadavg()}")
            return
        reference = None
        for name in configs:
            result, r = run_config(name, sw, samples, ray)
            same = "reference" if reference is None else compare(result, reference)
            reference = reference or result
            print(f"{name:8s} wall {r['wall']:7.1f} s  groups {r['groups']:2d} tasks {r['tasks']:3d}  shared "
                  f"{r.get('bytes_shared', 0) / 2**20:6.1f} MB  in workers {r['seconds']:7.1f} s (sessions "
                  f"{r['session_seconds']:5.1f} s)  runs {r['runs']}  {same}  (load {r['load']:.1f})", flush=True)
        local = ProcessShards(2)
        try:
            print(f"overhead per task, local process pool of 2 ({args.overhead_tasks} tasks, pool start-up "
                  f"included): {1000 * per_task(local, args.overhead_tasks):.0f} ms", flush=True)
            print(f"  again on the running pool: {1000 * per_task(local, args.overhead_tasks):.1f} ms", flush=True)
        finally:
            local.close()
        if ray is not None:
            pool = RayShards(ray, ExecutorSpec("ray", workers=2))
            print(f"overhead per task, ray (running local cluster of 2 CPUs, {args.overhead_tasks} tasks): "
                  f"{1000 * per_task(pool, args.overhead_tasks):.1f} ms; again: "
                  f"{1000 * per_task(pool, args.overhead_tasks):.1f} ms", flush=True)
            ray.shutdown()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
