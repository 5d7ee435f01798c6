"""Build time, size and latency of every post-training scheme on an example model.

    python bench/bench_schemes.py                       # the PP-OCRv4 detector example
    python bench/bench_schemes.py path/to/policy.yaml --runs 50

Calibrates once (for int8, int8-only, a16w8), builds each scheme from the prepared float
model and times it on the first evaluation sample (median of --runs after --warmup).
Prints figures; asserts nothing. Accuracy is not measured here: `qcheck run` with
`compare: all` does that (examples/ppocr-det/compare.yaml).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx
from threadpoolctl import threadpool_limits

from qcheck.data.readers import open_data
from qcheck.measure.latency import RUNS, WARMUP, measure_latency, quantize_feed
from qcheck.model.fetch import fetch_model
from qcheck.model.prepare import graph_inputs, load_onnx, prepare_model
from qcheck.policy.loader import load_policy
from qcheck.policy.schemes import SCHEMES
from qcheck.quantize.calibrate import Recipe, calibrate
from qcheck.quantize.schemes import build_scheme, size_bytes

threadpool_limits(1, user_api="blas")  # as the qcheck command does (see qcheck.cli.main)

DEFAULT = Path(__file__).resolve().parent.parent / "examples" / "ppocr-det" / "qcheck.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--warmup", type=int, default=WARMUP)
    args = ap.parse_args()
    policy = load_policy(args.policy)
    if policy.model.fetch and not policy.model.path.exists():
        fetch_model(policy.model.fetch, policy.model.path, log=print)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raw = load_onnx(policy.model.path)
        inputs = graph_inputs(raw)
        shapes = {i.name: policy.inputs.get(i.name) or list(i.shape) for i in inputs}
        prep = prepare_model(raw, policy.model.path, shapes, work)
        source = policy.data.evaluation or policy.data.calibration
        feed = open_data(source, prep.inputs, policy.data.preprocess)[0]
        ranges, calib_s = None, 0.0
        if policy.data.calibration:
            calib = open_data(policy.data.calibration, prep.inputs, policy.data.preprocess)
            start = time.perf_counter()
            ranges = calibrate(prep.path, calib, policy.quantization)
            calib_s = time.perf_counter() - start
        recipe = Recipe.from_policy(policy.quantization)
        f_size = size_bytes(prep.path)
        f_lat = measure_latency(prep.path, feed, args.runs, args.warmup)
        print(f"model: {policy.model.path.name} ({len(onnx.load(str(prep.path)).graph.node)} nodes); "
              f"calibration {calib_s:.2f} s (once, for int8, int8-only, a16w8); latency: median of {args.runs} runs "
              f"after {args.warmup} warmup, one input")
        print(f"{'scheme':<10} {'build s':>8} {'size KB':>9} {'x fp32':>7} {'median ms':>10} {'min ms':>8}")
        print(f"{'float32':<10} {'':>8} {f_size / 1024:>9.1f} {1.0:>7.2f} {f_lat['median_ms']:>10.2f} {f_lat['min_ms']:>8.2f}")
        for scheme in SCHEMES:
            try:
                b = build_scheme(scheme, prep.path, work / f"{scheme}.onnx", recipe, ranges, policy.quantization.io,
                                 policy.target.io)
            except Exception as exc:  # a scheme that cannot be built is a result here, not a crash
                print(f"{scheme:<10} not built: {str(exc).splitlines()[0][:150]}")
                continue
            lat = measure_latency(b.path, quantize_feed(feed, b.io_params), args.runs, args.warmup)
            size = size_bytes(b.path)
            print(f"{scheme:<10} {b.build_seconds:>8.2f} {size / 1024:>9.1f} {size / f_size:>7.2f} "
                  f"{lat['median_ms']:>10.2f} {lat['min_ms']:>8.2f}")


if __name__ == "__main__":
    main()
