"""Node sensitivity on the switchable emulation model vs the naive way, on a real model.

    python bench/bench_analyses.py                      # PP-OCRv4 detector, 8 samples
    python bench/bench_analyses.py --samples 8 --naive-nodes 6 --scaling

Prints, asserts nothing (the machine is shared and noisy; figures, not tests):

- the whole analysis (sensitivity of every node, the detailed views, curves,
  distributions, confirmation): wall time per part, runs, peak memory;
- node sensitivity of every node on its own (the issue's goal: 300 nodes x 8
  samples in under 2 minutes on 2 cores);
- the naive approach as AIMET/PPQ-style tools do it: for a sample of nodes,
  `quantize_static(nodes_to_quantize=[node])` (which calibrates again), a new
  session, the same samples; its per-node time extrapolated to every node;
  and the ratio;
- how node-only sensitivity time grows with the number of samples and of nodes.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import onnx
from threadpoolctl import threadpool_limits

from qcheck.analyses.run_all import build_emulation, run_analyses
from qcheck.analyses.sensitivity import Config, ConfigRunner
from qcheck.data.readers import open_data
from qcheck.measure.outputs import OutputComparison
from qcheck.model.fetch import fetch_model
from qcheck.model.prepare import graph_inputs, load_onnx, prepare_model
from qcheck.model.runtime import make_session
from qcheck.policy.loader import load_policy
from qcheck.policy.spec import AnalysesSpec
from qcheck.quantize.calibrate import Recipe, calibrate

threadpool_limits(1, user_api="blas")  # as the qcheck command does (see qcheck.cli.main)

DEFAULT = Path(__file__).resolve().parent.parent / "examples" / "ppocr-det" / "qcheck.yaml"


class _Cycle:
    """The first n samples of a data set, cycling when it has fewer (timing only)."""

    def __init__(self, data, n):
        self.data, self.n = data, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.data[i % len(self.data)]


def prepare(policy_path: Path, tmp: Path):
    """The policy's model fetched, prepared (fixed shapes) and calibrated as a run does: (policy, prepared model,
    calibration data, the float model, ranges, recipe)."""
    policy = load_policy(policy_path)
    if policy.model.fetch and not policy.model.path.exists():
        fetch_model(policy.model.fetch, policy.model.path, log=print)
    raw = load_onnx(policy.model.path)
    inputs = graph_inputs(raw)
    for info in inputs:
        if policy.inputs.get(info.name):
            info.shape = list(policy.inputs[info.name])
    calib = open_data(policy.data.calibration, inputs, policy.data.preprocess)
    shapes = {i.name: policy.inputs.get(i.name) or list(calib[0][i.name].shape) for i in inputs}
    prepared = prepare_model(raw, policy.model.path, shapes, tmp)
    calib = open_data(policy.data.calibration, prepared.inputs, policy.data.preprocess)
    ranges = calibrate(prepared.path, calib, policy.quantization)
    return policy, prepared, calib, onnx.load(str(prepared.path)), ranges, Recipe.from_policy(policy.quantization)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def naive_seconds_per_node(float_path: Path, calib, samples, nodes: list[str], q) -> tuple[float, list[float]]:
    """quantize_static once per node (calibrating each time, as the naive tools do), then run the samples."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            self.i += 1
            return calib[self.i - 1]

    f_sess = make_session(float_path)
    refs = [f_sess.run(None, samples[i]) for i in range(len(samples))]
    times, cosines = [], []
    for node in nodes:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = Path(tmp) / "q.onnx"
            quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=q.per_channel,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=[node])
            sess = make_session(out)
            cmp = OutputComparison("out")
            for i in range(len(samples)):
                cmp.update(refs[i][0], sess.run(None, samples[i])[0])
            times.append(time.perf_counter() - start)
            cosines.append(cmp.result()["cosine"])
    return statistics.median(times), cosines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--naive-nodes", type=int, default=5, help="nodes the naive approach is timed on")
    ap.add_argument("--scaling", action="store_true", help="also time 1/4/8/16 samples and 25/50/100/all nodes")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        policy, prepared, calib, float_model, ranges, recipe = prepare(args.policy, Path(tmp))
        samples = _Cycle(calib, args.samples)
        print(f"model: {policy.model.path.name}, {len(float_model.graph.node)} nodes, input "
              f"{[list(v.shape) for v in calib[0].values()]}, {args.samples} samples, calibration {len(calib)} samples")

        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; above ~0.5 the figures are inflated)")

        start = time.perf_counter()
        spec = AnalysesSpec(samples=args.samples)
        result = run_analyses(spec, prepared.path, float_model, ranges, recipe, samples, {})
        total = time.perf_counter() - start
        sens = result["sensitivity"]
        acts = result.get("activations") or {}
        print(f"\nqcheck analyses: {result['nodes']} quantizable nodes, {result['switches']} switches, batch "
              f"{result['batch']}, {result['workers']} worker sessions, {result['runs']} session runs "
              f"({result['float_runs']} of the float model)")
        for part, seconds in result["timings"].items():
            print(f"  {part:<12} {seconds:8.1f} s")
        print(f"  {'total':<12} {total:8.1f} s   peak RSS {peak_mb():.0f} MB; activations kept: "
              f"{acts.get('tensors', 0)} tensors, {acts.get('bytes_in_memory', 0) / 2**20:.0f} MB in memory, "
              f"{acts.get('bytes_on_disk', 0) / 2**20:.0f} MB on disk")

        # The goal figure: node-only sensitivity of every node, on its own.
        sw = build_emulation(prepared.path, float_model, ranges, recipe)
        runner = ConfigRunner(sw, samples, list(range(args.samples)), {})
        configs = [Config(x.node, sw.mask(on=x.all)) for x in sw.nodes]
        t = time.perf_counter()
        runner.evaluate(configs)
        node_only = time.perf_counter() - t
        per_node = node_only / len(configs)
        print(f"\nnode sensitivity of every node ({len(configs)} nodes, {args.samples} samples): {node_only:.1f} s "
              f"({per_node * 1000:.0f} ms per node; goal: 300 nodes x 8 samples < 120 s)")

        chosen = [row["node"] for row in sens["nodes"][:args.naive_nodes]]
        naive, cosines = naive_seconds_per_node(prepared.path, calib, samples, chosen, policy.quantization)
        print(f"\nnaive (quantize_static per node, {len(chosen)} nodes timed): {naive:.2f} s per node, "
              f"~{naive * len(configs):.0f} s for all {len(configs)} nodes")
        print(f"  speed-up of qcheck's node sensitivity: {naive / per_node:.1f}x (goal >= 10x)")
        emulated = {row["node"]: row["views"]["node"]["cosine"] for row in sens["nodes"]}
        for node, c in zip(chosen, cosines):
            print(f"  {node:<40} cosine naive {c:.6f}  emulated {emulated[node]:.6f}")
        print("  (the two differ by definition where a node's output grid is folded into a following Relu/Clip:\n"
              "   in the policy's recipe ORT quantizes that output on the Relu/Clip's range, which the node view\n"
              "   keeps; quantize_static with one node uses the node's own range)")

        if args.scaling:
            print("\nnode sensitivity, scaling:")
            for n in (1, 4, 8, 16):
                runner = ConfigRunner(sw, _Cycle(calib, n), list(range(n)), {})
                t = time.perf_counter()
                runner.evaluate(configs)
                dt = time.perf_counter() - t
                print(f"  {n:>2} samples, {len(configs)} nodes: {dt:6.1f} s ({dt / len(configs) * 1000:.0f} ms per node)")
            runner = ConfigRunner(sw, samples, list(range(args.samples)), {})
            for k in (25, 50, 100, len(sw.nodes)):
                chosen_configs = configs[::max(1, len(configs) // k)][:k]  # spread along the graph
                t = time.perf_counter()
                runner.evaluate(chosen_configs)
                print(f"  {args.samples} samples, {len(chosen_configs):>3} nodes: {time.perf_counter() - t:6.1f} s")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
