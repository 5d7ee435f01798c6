"""Time of the fallback search on an example: trials, seconds per trial, finalists' latency.

    python bench/bench_search.py                               # PP-OCRv4 detector, greedy, 20 trials
    python bench/bench_search.py path/to/policy.yaml --strategy bisect --trials 40

The policy's own `search:` section is replaced by the one given here. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from threadpoolctl import threadpool_limits

from qcheck.policy.loader import load_policy
from qcheck.policy.spec import SearchBudget, SearchSpec
from qcheck.run.pipeline import run

threadpool_limits(1, user_api="blas")  # as the qcheck command does (see qcheck.cli.main)

DEFAULT = Path(__file__).resolve().parent.parent / "examples" / "ppocr-det" / "qcheck.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--strategy", default="greedy", choices=["greedy", "bisect", "exhaustive"])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--width", type=int, default=4)
    args = ap.parse_args()
    policy = load_policy(args.policy)
    policy.search = SearchSpec(strategy=args.strategy, remedies=["keep_float", "int16_activations"], width=args.width,
                               budget=SearchBudget(max_trials=args.trials))
    policy.report.formats = ["html"]
    with tempfile.TemporaryDirectory() as tmp:
        results = run(policy, out=Path(tmp) / "out")
    s = results["search"]
    secs = results["timings"]["search"]
    print(f"model: {results['model']['name']} ({results['model']['nodes']} nodes), evaluation "
          f"{results['measure']['samples']} samples; strategy {s['strategy']}, status {s['status']}")
    print(f"search: {s['trials']} trials in {secs:.1f} s = {secs / max(s['trials'], 1):.2f} s per trial "
          f"(build + {results['measure']['samples']} quantized runs), stopped by {s['stopped_by'] or 'the strategy'}")
    for i in s["finalists"]:
        c = s["candidates"][i]
        print(f"  finalist #{c['id']}: {c['label']}: {c['size_bytes'] / 1e6:.2f} MB, median latency {c['latency_ms']:.1f} ms")


if __name__ == "__main__":
    main()
