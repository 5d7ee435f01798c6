"""Time of the fallback search on an example: trials, seconds per trial, finalists' latency.

    python bench/bench_search.py                               # PP-OCRv4 detector, auto, 20 trials
    python bench/bench_search.py path/to/policy.yaml --strategy bisect --trials 40
    python bench/bench_search.py path/to/policy.yaml --policy-search   # the policy's own `search:` section

Unless --policy-search, the policy's `search:` section is replaced by the one given here. Prints, for the
plain recipe and the chosen fix, every requirement's values on the evaluation data, the fix's changes, the
trials (built and judged, failed builds), the wall time, and the float-tail baseline (the region bisection
found, before pruning) when there is one. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--strategy", default="auto", choices=["auto", "greedy", "bisect", "exhaustive"])
    ap.add_argument("--policy-search", action="store_true", help="keep the policy's own search: section")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--results", type=Path, help="print the figures of an earlier run's results.json; run nothing")
    args = ap.parse_args()
    if args.results:
        print_figures(json.loads(args.results.read_text(encoding="utf-8")))
        return
    policy = load_policy(args.policy)
    if not args.policy_search or policy.search is None:
        policy.search = SearchSpec(strategy=args.strategy, remedies=["keep_float", "int16_activations"], width=args.width,
                                   budget=SearchBudget(max_trials=args.trials))
    policy.report.formats = ["html"]
    with tempfile.TemporaryDirectory() as tmp:
        results = run(policy, out=Path(tmp) / "out")
    print_figures(results)


def print_figures(results: dict) -> None:
    s = results["search"]
    secs = results["timings"]["search"]
    print(f"model: {results['model']['name']} ({results['model']['nodes']} nodes), evaluation "
          f"{results['measure']['samples']} samples; strategy {s['strategy']}, status {s['status']}")
    print(f"search: {s['trials']} trials in {secs:.1f} s = {secs / max(s['trials'], 1):.2f} s per trial "
          f"(build + {results['measure']['samples']} quantized runs), stopped by {s['stopped_by'] or 'the strategy'}")
    for i in s["finalists"]:
        c = s["candidates"][i]
        print(f"  finalist #{c['id']}: {c['label']}: {c['size_bytes'] / 1e6:.2f} MB, median latency {c['latency_ms']:.1f} ms")
    errors = [c for c in s["candidates"] if c.get("error")]
    print(f"failed builds/runs recorded: {len(errors)}")
    plain = s["candidates"][0]
    print(f"plain recipe: {_requirements(plain)}")
    tails = [c for c in s["candidates"] if c["passes"] and any(ch["subject"].startswith("tail:") for ch in c["changes"])]
    if tails:
        t = min(tails, key=lambda c: c["float_nodes"])
        print(f"float-tail baseline #{t['id']}: {t['label']}: {t['float_nodes']} float node(s), cost {t['cost']:g}, "
              f"{_requirements(t)}")
    if s["chosen"] is not None:
        c = s["candidates"][s["chosen"]]
        kinds = sorted({ch["remedy"] for ch in c["changes"]})
        print(f"fix #{c['id']}: {c['label']}: {c['n_changes']} change(s) ({', '.join(kinds) or 'none'}), "
              f"{c['float_nodes']} float node(s), {c['int16_tensors']} int16 tensor(s), cost {c['cost']:g}; "
              f"{_requirements(c)}")
    else:
        print(f"no fix; recommendation: {s['recommendation']['reason'] if s['recommendation'] else None}")
    for n in s["notes"]:
        print(f"  note: {n}")


def _requirements(c: dict) -> str:
    return "; ".join(f"{q['text']}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in q["values"].items()) for q in c["requirements"]) \
        or (c.get("error") or "")


if __name__ == "__main__":
    main()
