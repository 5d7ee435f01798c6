"""Cost of computing task metrics, without any model: synthetic outputs of realistic shapes.

    python bench/bench_tasks.py              # 64 samples each
    python bench/bench_tasks.py --samples 256

For each task: time per sample to update (decode, match, count) and time of
`result()` (whole-set values plus 1000 bootstrap resamples per value).
Prints figures; asserts nothing (timings belong in benchmarks, not in tests).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from qcheck.measure.tasks.classification import Classification
from qcheck.measure.tasks.ctc import CTC
from qcheck.measure.tasks.detection import Detection
from qcheck.measure.tasks.regression import Regression
from qcheck.measure.tasks.segmentation import Segmentation

threadpool_limits(1, user_api="blas")  # as the qcheck command does (see qcheck.cli.main)


def cases(rng: np.random.Generator):
    """(label, metric, make one sample's float outputs) for each task, at typical sizes."""
    def det():
        boxes = np.concatenate([rng.uniform(0, 640, (2, 8400)), rng.uniform(8, 120, (2, 8400))])
        scores = rng.uniform(0, 0.05, (80, 8400))  # background, and 300 candidates with one confident class
        hits = rng.choice(8400, 300, replace=False)
        scores[rng.integers(0, 80, 300), hits] = rng.uniform(0.2, 1.0, 300)
        return {"output0": np.concatenate([boxes, scores])[None].astype(np.float32)}

    return [
        ("classification [1, 1000]", Classification("cls", {"output": "y"}),
         lambda: {"y": rng.standard_normal((1, 1000)).astype(np.float32)}),
        ("detection YOLOv8 [1, 84, 8400]", Detection("det", {"output": "output0", "axis": 1}), det),
        ("ctc [1, 80, 6625]", CTC("ocr", {"output": "y", "blank": 0}),
         lambda: {"y": rng.standard_normal((1, 80, 6625)).astype(np.float32)}),
        ("segmentation [1, 1, 640, 640]", Segmentation("map", {"output": "y", "threshold": 0.3}),
         lambda: {"y": rng.uniform(0, 1, (1, 1, 640, 640)).astype(np.float32)}),
        ("segmentation argmax [1, 21, 256, 256]", Segmentation("seg", {"output": "y", "class_axis": 1}),
         lambda: {"y": rng.standard_normal((1, 21, 256, 256)).astype(np.float32)}),
        ("regression [1, 16000]", Regression("sig", {"output": "y"}),
         lambda: {"y": rng.standard_normal((1, 16000)).astype(np.float32)}),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=64)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'task':<40} {'update ms/sample':>17} {'result ms':>10}")
    for label, metric, make in cases(rng):
        update = 0.0
        for _ in range(args.samples):
            f = make()
            q = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.01 for k, v in f.items()}
            start = time.perf_counter()
            metric.update("s", f, q)
            update += time.perf_counter() - start
        start = time.perf_counter()
        metric.result()
        result = time.perf_counter() - start
        print(f"{label:<40} {1000 * update / args.samples:>17.2f} {1000 * result:>10.1f}")


if __name__ == "__main__":
    main()
