"""Wall time and peak memory of `qcheck run` on an example, split by stage.

    python bench/bench_run.py                       # the PP-OCRv4 detector example
    python bench/bench_run.py path/to/policy.yaml --repeat 3

Prints figures; asserts nothing (timings belong in benchmarks, not in tests).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from threadpoolctl import threadpool_limits

from qcheck.policy.loader import load_policy
from qcheck.run.pipeline import run

threadpool_limits(1, user_api="blas")  # as the qcheck command does (see qcheck.cli.main)

DEFAULT = Path(__file__).resolve().parent.parent / "examples" / "ppocr-det" / "qcheck.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    policy = load_policy(args.policy)
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            results = run(policy, out=Path(tmp) / "out")
            timings = dict(results["timings"], render=results["render_seconds"])
            runs.append((timings, results["peak_memory_mb"]))
    stages = list(runs[0][0])
    model = results["model"]
    print(f"model: {model['name']} ({model['nodes']} nodes), calibration {results['data']['calibration']['samples']} "
          f"samples, evaluation {results['measure']['samples']} samples, {len(results['tensors'])} tensors measured")
    print(f"{'stage':<10} {'median s':>9} {'min s':>7} {'peak RSS after, MB':>19}")
    for stage in stages:
        values = [r[0][stage] for r in runs]
        peak = runs[-1][1].get(stage)
        print(f"{stage:<10} {statistics.median(values):>9.2f} {min(values):>7.2f} {peak if peak is not None else '':>19}")
    total = [sum(r[0].values()) for r in runs]
    print(f"{'total':<10} {statistics.median(total):>9.2f} {min(total):>7.2f}")


if __name__ == "__main__":
    main()
