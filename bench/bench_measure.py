"""Where measurement's time goes, per sample: model runs, the per-layer twin, and the statistics' reduction.

    python bench/bench_measure.py                 # the example (PP-OCRv4 detector 320x320), 8 samples
    python bench/bench_measure.py --samples 16

On the example's real tensors (float model, quantized run, per-layer twin), CPU seconds per sample of:
the float and quantized runs with every measured tensor exposed; the twin's run; and the reduction of
every tensor's statistics done three ways on the same arrays, alternating so that all see the same machine
load: the compiled one-pass kernel (qcheck.measure.kernel, what runs), numpy chunks (qcheck.measure.fused, what
runs without numba) and each accumulator's own passes (the fallback for what neither takes). Single-threaded reductions: CPU time is the cost
whatever the cores. Prints the machine's load; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--model", default="example", choices=["example", *bench_run.MODELS])
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    import onnx

    from qcheck.measure import per_tensor
    from qcheck.measure.sessions import open_sessions
    from qcheck.policy.loader import load_policy
    from qcheck.quantize.calibrate import calibrate
    from qcheck.quantize.qdq import read_qdq
    from qcheck.rules.engine import needed_statistics
    from qcheck.rules.scheme_run import build_for
    from qcheck.run.load_stage import load

    print(f"load average at start {os.getloadavg()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        policy = load_policy(bench_run.policy_for(args.model, tmp, args.samples, False))
        loaded = load(policy, tmp / "work", log=lambda m: None)
        ranges = calibrate(loaded.prepared.path, loaded.calibration, policy.quantization)
        built = build_for(policy.quantization.scheme, policy, loaded.prepared.path, tmp / "q.onnx", ranges)
        fm, qm = onnx.load(str(loaded.prepared.path)), onnx.load(str(built.measure_path))
        qmap = read_qdq(qm, fm)
        acts = [t for t in qmap.tensors.values() if t.kind == "activation"]
        need = needed_statistics(loaded.rules)
        shapes = per_tensor._shapes(fm)
        sessions = open_sessions(fm, qm, qmap, acts, shapes, policy.measure.modes, "weight_error_share" in need, None)
        group = sessions.groups[0]
        from qcheck.measure import kernel

        compiled = kernel.numba
        labels = {"compiled": "reduce, compiled kernel", "chunks": "reduce, numpy chunks", "own": "reduce, own passes"}
        cpu = {"float + int8 runs": 0.0, "twin run": 0.0, **dict.fromkeys(labels.values(), 0.0)}
        accs = {way: per_tensor._accumulators(acts, shapes, per_tensor.GraphIndex(fm), sessions.twin, True)
                for way in labels}
        for i in range(args.samples):
            sample = loaded.evaluation[i]
            c0 = time.process_time()
            f_vals = dict(zip(group.float_names, sessions.float.run(group.float_names, sample)))
            q_vals = dict(zip(group.q_names, sessions.quant.run(group.q_names, sample)))
            c1 = time.process_time()
            _, _, t_vals = sessions.run(group, sample)  # the twin and its copy with dequantized weights, every sample
            cpu["float + int8 runs"] += c1 - c0
            cpu["twin run"] += time.process_time() - c1
            jobs = []
            for t in acts:
                ref = f_vals.get(t.name, sample.get(t.name))
                if ref is None:
                    continue
                local = t_vals.get(group.twin.outputs.get(t.name, ""))
                w_only = t_vals.get(group.twin.weight_outputs.get(t.name, "")) if local is not None else None
                jobs.append((t, ref, q_vals[t.q_output], local, w_only))
            order = list(labels) if i % 2 == 0 else list(labels)[::-1]
            for way in order:
                kernel.numba = compiled if way == "compiled" else None
                c0 = time.process_time()
                for t, ref, q, local, w_only in jobs:
                    per_tensor.reduce_tensor(per_tensor.TensorSample(t, ref, q, local, w_only), accs[way], True,
                                             way != "own")
                if i > 0:  # the first sample loads the compiled kernel from numba's cache: not counted
                    cpu[labels[way]] += time.process_time() - c0
            kernel.numba = compiled
        elements = sum(j[1].size for j in jobs)
    print(f"{args.model}: {len(jobs)} activations, {elements / 1e6:.1f} M float elements per sample, "
          f"{args.samples} samples; CPU seconds per sample:")
    for k, v in cpu.items():
        print(f"  {k:<24} {v / max(args.samples - (1 if k.startswith('reduce') else 0), 1):6.3f}")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
