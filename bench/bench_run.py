"""Time and peak memory of `qcheck run` per stage, against the floor of each stage, on real models.

    python bench/bench_run.py                                 # example, det384, rec at 8 / 32 / 128 samples
    python bench/bench_run.py --models example --samples 32 --analyses
    python bench/bench_run.py path/to/policy.yaml             # one policy as it is

For each model and number of evaluation samples, one `qcheck run` in a fresh process (so peak memory
is that run's alone), then, per stage: wall time, its *floor*, the ratio; the same in CPU seconds
(every thread of the process: other work on a shared machine stretches wall time, not this); and the
stage's peak resident memory (the high-water mark reset at the stage's start, qcheck.run.memory; results.json
says which method was used). The floor is the model runs a stage cannot avoid, timed here on the same
models and samples, plus one read of every tensor it measures:

- calibrate: decoding the calibration samples and one float pass over each (ORT's calibrator reduces
  every tensor inside the graph, so no tensor leaves it);
- quantize: writing the quantized model once;
- measure: decoding the evaluation samples, the float model with every measured tensor exposed +
  the quantized model with every measured tensor exposed over them, plus one read (a sum) of each
  returned tensor, float and integer; when the run runs the per-layer twin (something reads a per-layer
  column: qcheck.run.needs, as the run decides) also the twin (a float copy of each quantized node fed the
  quantized run's inputs: a model run per-layer statistics cannot avoid) and one read of its outputs, and
  its copy with dequantized weights on the samples the measurement runs it on (weight_error_share: 8,
  evenly spread). The floor without the twin is printed on its own line, and whether the twin ran;
- analyses: one float pass over its samples for each node ranked (suffix copies can run below it);
  load, quantize, rules and render run no model: no floor.

Evaluation samples are real photographs (the example's images, cropped at several offsets and
scales so that 128 samples differ); calibration is the example's 10 images. Models: the example
(PP-OCRv4 detector at 320x320; its analyses with --analyses), the same detector at
384x384 and the PP-OCRv4 recognizer at 48x320 from the rapidocr-onnxruntime wheel (fetched by
qcheck's own `fetch:`; copied from $QCHECK_BENCH_MODELS, default /work/models, when there).
`--whole-rules`: the built-in rules less those that read per-layer columns, so the twin does not run.
Prints figures and the machine's load; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ppocr-det"
WHEEL = "rapidocr-onnxruntime==1.4.4"
MODELS = {  # name -> (wheel member, sha256, input shape)
    "det384": ("ch_PP-OCRv4_det_infer.onnx", "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
               [1, 3, 384, 384]),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
            [1, 3, 48, 320]),
}


# --------------------------------------------------------------------------- inputs


def make_images(folder: Path, n: int) -> None:
    """n distinct real images: the example's photographs cropped at offsets and scales that vary with i."""
    from PIL import Image

    sources = sorted((EXAMPLE / "images").rglob("*.*"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as img:
            img = img.convert("RGB")
            k = i // len(sources)
            frac = (1.0, 0.8, 0.65, 0.5, 0.9, 0.7, 0.55, 0.75, 0.6)[k % 9]
            w, h = img.size
            cw, ch = max(16, int(w * frac)), max(16, int(h * frac))
            left = (k * 37) % max(1, w - cw + 1)
            top = (k * 53) % max(1, h - ch + 1)
            img.crop((left, top, left + cw, top + ch)).save(folder / f"{i:04d}.png")


def per_layer_rules() -> list[str]:
    """The built-in rules that read a per-layer column (the twin runs for them)."""
    from qcheck.policy.spec import RulesSpec
    from qcheck.results.layer_columns import PER_LAYER_STATISTICS
    from qcheck.rules.packs import load_rules

    return [r.code for r in load_rules(RulesSpec(), "bench") if r.needs & set(PER_LAYER_STATISTICS)]


def policy_for(name: str, tmp: Path, samples: int, analyses: bool, whole_rules: bool = False) -> Path:
    """A policy file for `name` whose evaluation data are `samples` images; `whole_rules`: the built-in rules less
    those that read per-layer columns (so no per-layer twin runs)."""
    doc = yaml.safe_load((EXAMPLE / "qcheck.yaml").read_text())
    if whole_rules:
        doc["rules"] = {"packs": ["builtin"], "disable": per_layer_rules()}
    make_images(tmp / "eval", samples)
    doc["data"]["calibration"] = str(EXAMPLE / "images" / "calibration")
    doc["data"]["evaluation"] = str(tmp / "eval")
    doc["report"] = {"out": str(tmp / "out"), "formats": ["html"], "title": f"bench {name}"}
    if name == "example":
        doc["model"]["path"] = str(EXAMPLE / doc["model"]["path"])
        if not analyses:
            doc["analyses"] = False
    else:
        member, sha, shape = MODELS[name]
        path = Path.home() / ".cache" / "qcheck-bench" / member
        local = Path(os.environ.get("QCHECK_BENCH_MODELS", "/work/models")) / member
        if not path.exists() and local.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, path)
        doc["model"] = {"path": str(path), "fetch": {"pip": WHEEL, "member": f"rapidocr_onnxruntime/models/{member}",
                                                     "sha256": sha}}
        doc["inputs"] = {"x": {"shape": shape}}
        doc["analyses"] = False
        if name == "rec":  # a text line: output is per-position class probabilities
            doc["metrics"] = {}
            doc["require"] = ["model.cosine >= 0.99"]
            doc["data"]["preprocess"]["resize"] = "stretch"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------- floors


class Clock:
    """Wall and CPU seconds (all threads of this process) of what runs inside `with`."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _timed(fn) -> tuple[float, float]:
    with Clock() as c:
        fn()
    return c.wall, c.cpu


def _add(*pairs: tuple[float, float]) -> tuple[float, float]:
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def _read_all(values) -> None:
    """One read of each returned tensor: the float ones and the quantized run's integers (a sum)."""
    for v in values:
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            v.sum(dtype=np.float64)
        elif isinstance(v, np.ndarray) and v.dtype.kind in "iu":
            v.sum(dtype=np.int64)


def floors(policy_path: Path, results: dict) -> dict[str, float]:
    """Seconds of the model runs each stage cannot avoid (see the module docstring)."""
    import onnx

    from qcheck.measure.per_tensor import WEIGHT_SHARE_SAMPLES, skipped_statistics, spread
    from qcheck.measure.twin import build_twin
    from qcheck.model.runtime import make_session, with_outputs
    from qcheck.policy.loader import load_policy
    from qcheck.quantize.qdq import read_qdq
    from qcheck.results.layer_columns import PER_LAYER_GROUP
    from qcheck.run.load_stage import load
    from qcheck.run.needs import statistics_read

    policy = load_policy(policy_path)
    out: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load(policy, Path(tmp), log=lambda m: None)
        calib, evaluation = loaded.calibration, loaded.evaluation
        decode_calib = _timed(lambda: [calib[i] for i in range(len(calib))])
        decode_eval = _timed(lambda: [evaluation[i] for i in range(len(evaluation))])
        samples = [evaluation[i] for i in range(len(evaluation))]
        calib_samples = [calib[i] for i in range(len(calib))]
        float_model = onnx.load(str(loaded.prepared.path))
        plain = make_session(float_model, "float", spin=False)
        # ORT's calibrator reduces each tensor inside the graph: one plain float pass per sample
        out["calibrate"] = _add(decode_calib, _timed(lambda: [plain.run(None, s) for s in calib_samples]))
        qpath = Path(results["output_folder"]) / results["lock"]["quantized_model"]
        qmodel = onnx.load(str(qpath))
        qmap = read_qdq(qmodel, float_model)
        acts = [t for t in qmap.tensors.values() if t.kind == "activation"]
        outputs = {o.name for o in float_model.graph.output}
        # as the measurement opens them (qcheck.measure.per_tensor._open_sessions): no spinning between runs
        f_sess = make_session(with_outputs(float_model, [t.name for t in acts if t.name not in outputs]), "float",
                              spin=False)
        twin = None
        need = statistics_read(policy, loaded.rules)  # as the run decides whether the twin runs
        if "local" in policy.measure.modes and PER_LAYER_GROUP not in skipped_statistics(need, policy.measure.modes,
                                                                                          None):
            twin = build_twin(qmodel, float_model, qmap, with_weight_twin="weight_error_share" in need)
        q_names = [t.q_output for t in acts] + (twin.fed() if twin else [])
        q_sess = make_session(with_outputs(qmodel, q_names), "quantized", spin=False)
        t_sess = make_session(twin.model, "twin", spin=False) if twin and twin.outputs else None
        w_sess = (make_session(twin.weight_model, "weight twin", spin=False)
                  if t_sess is not None and twin.weight_model is not None else None)
        weighed = spread(len(samples), WEIGHT_SHARE_SAMPLES)  # as the measurement runs the weight twin
        q_out = [o.name for o in q_sess.get_outputs()]

        def passes(with_twin: bool) -> None:
            for i, s in enumerate(samples):
                _read_all(f_sess.run(None, s))
                q_vals = dict(zip(q_out, q_sess.run(None, s)))
                _read_all(q_vals.values())
                if with_twin and t_sess is not None:
                    _read_all(t_sess.run(None, {k: q_vals[v] for k, v in twin.inputs.items()}))
                if with_twin and w_sess is not None and i in weighed:
                    _read_all(w_sess.run(None, {k: q_vals[v] for k, v in twin.weight_inputs.items()}))

        out["measure"] = _add(decode_eval, _timed(lambda: passes(True)))
        out["measure (float + int8 only)"] = _add(decode_eval, _timed(lambda: passes(False)))
        analyses = results.get("analyses")
        if analyses and analyses.get("sensitivity"):
            n = min(analyses["samples"], len(samples))
            per_pass = _timed(lambda: [plain.run(None, s) for s in samples[:n]])
            k = max(len(analyses["sensitivity"].get("nodes") or []), 1)
            out["analyses"] = (per_pass[0] * k, per_pass[1] * k)
    return out


# --------------------------------------------------------------------------- one run


def one(policy_path: Path) -> dict:
    """One run in this process; its figures and floors as a dict."""
    from threadpoolctl import threadpool_limits

    from qcheck.policy.loader import load_policy
    from qcheck.run.pipeline import run

    threadpool_limits(1, user_api="blas")  # as the qcheck command does (see qcheck.cli.main)
    from qcheck.run import pipeline

    cpu: dict[str, float] = {}
    timed_stage = pipeline.Stages.stage

    @contextlib.contextmanager
    def stage(self, name, console):  # the pipeline's own timing, plus the CPU seconds of every thread
        start = time.process_time()
        try:
            with timed_stage(self, name, console):
                yield
        finally:
            cpu[name] = cpu.get(name, 0.0) + time.process_time() - start

    pipeline.Stages.stage = stage
    policy = load_policy(policy_path)
    with tempfile.TemporaryDirectory() as tmp:
        results = run(policy, out=Path(tmp) / "out")
        figures = {"model": results["model"]["name"], "nodes": results["model"]["nodes"],
                   "samples": results["measure"]["samples"], "tensors": len(results["tensors"]),
                   "timings": dict(results["timings"], render=results["render_seconds"]),
                   "peak_mb": results["peak_memory_mb"], "method": results.get("peak_memory_method", ""),
                   "notes": results["measure"].get("notes", []), "cpu": cpu,
                   "not_computed": results["measure"].get("not_computed", {})}
        figures["floors"] = floors(policy_path, results)
    return figures


def show(name: str, f: dict) -> None:
    print(f"\n{name}: {f['model']} ({f['nodes']} nodes), {f['samples']} evaluation samples, {f['tensors']} tensors; "
          f"load average {tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"{'stage':<10} {'wall s':>8} {'floor':>7} {'ratio':>6}   {'cpu s':>7} {'floor':>7} {'ratio':>6}  {'peak MB':>8}")
    for stage, secs in f["timings"].items():
        floor = f["floors"].get(stage)
        cpu = f["cpu"].get(stage)
        peak = f["peak_mb"].get(stage)
        cells = [f"{secs:>8.2f}", f"{floor[0]:>7.2f}" if floor else f"{'-':>7}",
                 f"{secs / floor[0]:>6.1f}" if floor else f"{'-':>6}",
                 f"  {cpu:>7.2f}" if cpu is not None else f"  {'-':>7}", f"{floor[1]:>7.2f}" if floor else f"{'-':>7}",
                 f"{cpu / floor[1]:>6.1f}" if floor and cpu is not None else f"{'-':>6}",
                 f"  {peak:>8.0f}" if peak is not None else f"  {'-':>8}"]
        print(f"{stage:<10} " + " ".join(cells))
    skipped = f.get("not_computed", {})
    print(f"{'':<10} per-layer twin: {'not run (no rule reads its columns)' if 'per-layer statistics' in skipped else 'ran'}"
          f"; distribution statistics: {'not computed' if 'distribution statistics' in skipped else 'computed'}")
    plain = f["floors"].get("measure (float + int8 only)")
    if plain and "measure" in f["timings"] and "measure" in f["cpu"]:
        print(f"{'':<10} measure against the float and int8 runs alone (no twin): {plain[0]:.2f} s wall, ratio "
              f"{f['timings']['measure'] / plain[0]:.1f}; {plain[1]:.2f} s cpu, ratio {f['cpu']['measure'] / plain[1]:.1f}")
    print(f"{'total':<10} {sum(f['timings'].values()):>8.2f}   whole-run peak {max(f['peak_mb'].values()):.0f} MB "
          f"({f['method'].split(':')[0]}; render not included: it runs after results.json is written)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", nargs="?", type=Path, help="bench this policy as it is instead of the built-in set")
    ap.add_argument("--models", default="example,det384,rec")
    ap.add_argument("--samples", default="8,32,128")
    ap.add_argument("--analyses", action=argparse.BooleanOptionalAction, default=False,
                    help="keep the example's analyses (node sensitivity of every node; slow at 128 samples)")
    ap.add_argument("--whole-rules", action="store_true",
                    help="the built-in rules less those reading per-layer columns: the per-layer twin does not run")
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    args = ap.parse_args()
    if args.one:
        print("BENCH " + json.dumps(one(args.one)))
        return
    from qcheck.measure import kernel

    print(f"load average at start {os.getloadavg()}, {os.cpu_count()} cores; compiled statistics kernel "
          f"(numba): {'yes' if kernel.available() else 'no'}")
    jobs = [(str(args.policy), None)] if args.policy else [
        (m, int(n)) for m in args.models.split(",") for n in args.samples.split(",")]
    for name, n in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(name) if n is None else policy_for(name, Path(tmp), n, args.analyses, args.whole_rules)
            proc = subprocess.run([sys.executable, __file__, "--one", str(path)], capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")), None)
            if line is None:
                print(f"\n{name} at {n} samples failed:\n{proc.stderr[-2000:]}")
                continue
            show(name if n is None else f"{name} @ {n}", json.loads(line[6:]))
    print(f"\nload average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
