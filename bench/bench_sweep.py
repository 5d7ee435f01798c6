"""`qcheck sweep` wall time on each executor, and what a run costs the executor itself.

    python bench/bench_sweep.py                                  # the example zoo (examples/zoo/sweep.yaml)
    python bench/bench_sweep.py --sweep my.yaml --configs local1,ray2 --overhead-tasks 40

Prints, asserts nothing (the machine is shared and noisy; figures, not tests):

- for each executor configuration (local with 1 and 2 workers, a local Ray cluster with 2 CPUs):
  the sweep's wall time, the sum of the runs' own times (inside the worker), and the speed-up
  over one local worker; every run is redone (a fresh sweep folder each time);
- the overhead per task: a sweep of N runs that end at once (a policy whose data folder does
  not exist, so each run is only load + validate in the worker), wall time / N, local vs Ray;
  the local figure includes starting the spawned workers (as every sweep does); the Ray one runs on
  a cluster already started, whose start-up is reported apart;
- the machine's load average before and after, since other processes share the cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from qcheck.run.sweep import ExecutorSpec, load_sweep, run_sweep

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"local1": ExecutorSpec("local", workers=1), "local2": ExecutorSpec("local", workers=2),
           "ray2": ExecutorSpec("ray", workers=2)}


def sweep_once(sweep: Path, executor: ExecutorSpec, out: Path) -> dict:
    spec = load_sweep(sweep, out=out)
    start = time.perf_counter()
    summary = run_sweep(spec, executor, formats=("html",))
    wall = time.perf_counter() - start
    inside = sum(r.get("seconds") or 0 for r in summary["runs"])
    return {"wall": wall, "inside": inside, "runs": len(summary["runs"]), "counts": summary["counts"]}


def overhead(n: int, executor: ExecutorSpec, tmp: Path) -> float:
    """Wall seconds per run for n runs that fail in the worker's first milliseconds."""
    folder = tmp / f"overhead-{executor.kind}"
    folder.mkdir()
    (folder / "m.onnx").write_bytes(b"")
    for i in range(n):
        (folder / f"p{i}.yaml").write_text(yaml.safe_dump({"model": "m.onnx", "data": {"evaluation": "gone"}}))
    (folder / "s.yaml").write_text("policies: 'p*.yaml'\n")
    spec = load_sweep(folder / "s.yaml", out=folder / "out")
    for job in spec.jobs:  # skip the driver's plan (it would find the error itself): every job goes to a worker
        job.fingerprint = None
    from qcheck.run.sweep.executors import execute

    start = time.perf_counter()
    execute(spec.jobs, executor, lambda job, row: None)
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=REPO / "examples" / "zoo" / "sweep.yaml")
    ap.add_argument("--configs", default="local1,local2,ray2")
    ap.add_argument("--overhead-tasks", type=int, default=20)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}; {os.cpu_count()} cores")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="qcheck-bench-sweep-") as tmp:
        tmp = Path(tmp)
        for name in args.configs.split(","):
            rows[name] = sweep_once(args.sweep, CONFIGS[name], tmp / name)
            r = rows[name]
            print(f"{name:7s} {r['runs']} runs: wall {r['wall']:7.1f} s, runs' own time {r['inside']:7.1f} s, "
                  f"{r['counts']}  (load {os.getloadavg()[0]:.1f})", flush=True)
        if "local1" in rows:
            for name, r in rows.items():
                print(f"speed-up of {name} over local1: {rows['local1']['wall'] / r['wall']:.2f}x")
        per = overhead(args.overhead_tasks, ExecutorSpec("local", workers=2), tmp)
        print(f"overhead per task, local (2 spawned workers, {args.overhead_tasks} tasks, pool start-up included): "
              f"{1000 * per:.0f} ms", flush=True)
        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - start
        per = overhead(args.overhead_tasks, ExecutorSpec("ray", workers=2), tmp)
        print(f"overhead per task, ray (running local cluster of 2 CPUs, {args.overhead_tasks} tasks): "
              f"{1000 * per:.0f} ms; starting the cluster: {started:.1f} s", flush=True)
        ray.shutdown()
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
