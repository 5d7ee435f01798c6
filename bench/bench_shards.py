"""Node sensitivity in shards: threads of one process, a local process pool and a local Ray cluster, 1 and 2 shards.

    python bench/bench_shards.py                                  # examples/zoo/rec.yaml: the zoo's largest model
    python bench/bench_shards.py examples/zoo/det.yaml --samples 8 --configs threads2,local2,ray2

Prints, asserts nothing (the machine is shared and noisy; figures, not tests):

- for each configuration, node sensitivity of every node (with the detailed views of the worst 20, as a run does):
  wall time, the shard groups and tasks, the bytes shared once per group (local: pickled files; Ray: the arrays
  put in the object store), the time the shards spent inside their workers and how much of it went into building
  their sessions, and whether every number equals the first configuration's (it should: same sessions, same inputs);
- the overhead per task: N shards that do nothing, on a local process pool (pool start-up included) and on a
  running Ray cluster (its start-up reported apart);
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("policy", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--overhead-tasks", type=int, default=40)
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
