"""Time of the fallback search on an example: trials, seconds per trial, finalists' latency.

    python bench/bench_search.py                               # PP-OCRv4 detector, auto, 20 trials
    python bench/bench_search.py path/to/policy.yaml --strategy bisect --trials 40
    python bench/bench_search.py path/to/policy.yaml --policy-search   # the policy's own `search:` section
    python bench/bench_search.py --zoo det rec cls             # the evidence for issue 15 (see below)
    python bench/bench_search.py --policies a/qcheck.yaml b/qcheck.yaml   # any models, each with its own policy

--zoo runs, for each PP-OCR model of the rapidocr wheel (the files in --models, else fetched as the example
zoo does), a policy that declares only the task metric, one requirement on it and `search:` with every remedy
allowed, on 48 evaluation crops of the example's photographs of which the last 16 are held out
(`search.holdout`): the search sees 32. It prints the figures below plus the held-out verdicts and what
screening cost (per screened candidate, in float passes over the 32 samples), with the load average.

Unless --policy-search, the policy's `search:` section is replaced by the one given here. Prints, for the
plain recipe and the chosen fix, every requirement's values on the evaluation data, the fix's changes, the
trials (built and judged, failed builds), the wall time, and the float-tail baseline (the region bisection
found, before pruning) when there is one. Asserts nothing.

--policies runs each policy as written (its own `search:` section; outputs into a temporary folder), prints the
same figures, and ends with one markdown table row per model (the README's search benchmark table).
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
    ap.add_argument("--results", type=Path, nargs="+",
                    help="print the figures of earlier runs' results.json (and a table row each); run nothing")
    ap.add_argument("--zoo", nargs="+", choices=sorted(ZOO), help="the issue-15 evidence on these PP-OCR models")
    ap.add_argument("--policies", nargs="+", type=Path, help="run these policies as written; print a table row each")
    ap.add_argument("--models", type=Path, default=Path("/work/models"), help="where the PP-OCR .onnx files are")
    ap.add_argument("--seconds", type=float, default=900.0, help="--zoo: the search's max_seconds")
    ap.add_argument("--throughput", nargs="+", choices=sorted(ZOO),
                    help="screening alone on these models: candidates per second on 32 samples (see screen_throughput)")
    ap.add_argument("--confirm", nargs="+", choices=sorted(ZOO),
                    help="what one confirmed candidate costs on these models, part by part (see confirm_breakdown)")
    args = ap.parse_args()
    if args.confirm:
        for name in args.confirm:
            confirm_breakdown(name, args.models)
        return
    if args.throughput:
        for name in args.throughput:
            screen_throughput(name, args.models, min(args.seconds, 120.0))
        return
    if args.zoo:
        rows = [zoo_run(name, args.models, args.seconds) for name in args.zoo]
        print_table(rows)
        return
    if args.policies:
        print_table([policy_run(path) for path in args.policies])
        return
    if args.results:
        rows = []
        for path in args.results:
            results = json.loads(path.read_text(encoding="utf-8"))
            print_figures(results)
            rows.append(table_row(path.resolve().parent.parent.name, results, sum(results["timings"].values()), None))
        print_table(rows)
        return
    policy = load_policy(args.policy)
    if not args.policy_search or policy.search is None:
        policy.search = SearchSpec(strategy=args.strategy, remedies=["keep_float", "int16_activations"], width=args.width,
                                   budget=SearchBudget(max_trials=args.trials))
    policy.report.formats = ["html"]
    with tempfile.TemporaryDirectory() as tmp:
        results = run(policy, out=Path(tmp) / "out")
    print_figures(results)


# model file, input shape, task metric, requirement (the example zoo's metrics, examples/zoo/*.yaml; requirements
# that plain int8 misses on these crops: int8 gives IoU 0.93 and step agreement 0.96 but string agreement lower)
ZOO = {
    "det": ("ch_PP-OCRv4_det_infer.onnx", [1, 3, 320, 320],
            {"text_iou": {"task": "segmentation", "output": "sigmoid_0.tmp_0", "threshold": 0.3}}, "text_iou >= 0.95"),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", [1, 3, 48, 320],
            {"ocr": {"task": "ctc", "output": "softmax_11.tmp_0", "blank": 0, "time_axis": 1, "class_axis": 2}},
            "ocr.string_agreement >= 0.9"),
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", [1, 3, 48, 192],
            {"direction": {"task": "classification", "output": "save_infer_model/scale_0.tmp_1", "k": 1}},
            "direction.top1 >= 0.95"),
}
ALL_REMEDIES = ["keep_float", "int16_activations", "int16_weights", "widen_range", "explicit_range", "skip_first", "keep_float_flagged",
                "scheme", "per_channel", "calibration_method", "symmetric", "reduced_range"]
IMAGES = DEFAULT.parent / "images"


def crops(out: Path, n: int, size: tuple[int, int]) -> Path:
    """n evaluation images: crops (4 corners at 70 %, their mirror images) of the example's 15 photographs,
    interleaved so that every photograph appears early and late in the order."""
    from PIL import Image, ImageOps

    out.mkdir(parents=True, exist_ok=True)
    photos = sorted(IMAGES.glob("*/*.*"))
    made = 0
    for variant in range(8):
        for photo in photos:
            if made == n:
                return out
            img = Image.open(photo).convert("RGB")
            w, h = img.size
            cw, ch = int(w * 0.7), int(h * 0.7)
            x, y = (0 if variant % 4 in (0, 2) else w - cw), (0 if variant % 4 in (0, 1) else h - ch)
            crop = img.crop((x, y, x + cw, y + ch))
            if variant >= 4:
                crop = ImageOps.mirror(crop)
            crop.resize((size[1], size[0])).save(out / f"{made:03d}-{photo.stem}-{variant}.png")
            made += 1
    return out


def zoo_policy(name: str, models: Path, folder: Path, n_eval: int) -> dict:
    """The policy document of a zoo model (no report or search section): its task metric and requirement, the
    example's calibration photographs, `n_eval` evaluation crops written into `folder`."""
    file, shape, metrics, require = ZOO[name]
    return {"model": {"path": str(models / file)}, "inputs": {"x": {"shape": shape}},
            "data": {"calibration": str(IMAGES / "calibration"),
                     "evaluation": str(crops(folder / "eval", n_eval, (shape[2], shape[3]))),
                     "preprocess": {"color": "BGR", "layout": "NCHW", "scale": 1 / 255, "mean": [0.5] * 3,
                                    "std": [0.5] * 3}},
            "target": "cpu", "metrics": metrics, "require": [require], "analyses": False}


def zoo_run(name: str, models: Path, seconds: float) -> dict:
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        doc = {**zoo_policy(name, models, folder, 48),
               "report": {"out": str(folder / "out"), "formats": ["html"]},
               "search": {"remedies": ALL_REMEDIES, "holdout": 16,
                          "budget": {"max_trials": 60, "max_seconds": seconds}}}
        (folder / "qcheck.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
        return timed_run(name, folder / "qcheck.yaml", folder / "out")


def policy_run(path: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return timed_run(path.resolve().parent.name, path, Path(tmp) / "out")


def timed_run(name: str, policy_path: Path, out: Path) -> dict:
    """Run a policy; print its figures with the load average and wall time; the figures as a table row."""
    import os
    import time

    load = os.getloadavg()
    clock = time.perf_counter()
    results = run(load_policy(policy_path), out=out)
    wall = time.perf_counter() - clock
    after = os.getloadavg()
    print(f"== {name}: {results['model']['name']}; load average before {load[0]:.1f}, after {after[0]:.1f}; "
          f"whole run {wall:.0f} s")
    print_figures(results)
    (Path("/tmp") / f"bench_search_{name}.json").write_text(json.dumps(results, default=str), encoding="utf-8")
    return table_row(name, results, wall, (load[0] + after[0]) / 2)


def zoo_setup(name: str, models: Path, folder: Path) -> tuple:
    """A zoo model's policy with 32 evaluation samples, loaded and calibrated: (policy, loaded, ranges, samples)."""
    import yaml

    from qcheck.quantize.calibrate import calibrate
    from qcheck.run.load_stage import load

    (folder / "qcheck.yaml").write_text(yaml.safe_dump(zoo_policy(name, models, folder, 32)), encoding="utf-8")
    policy = load_policy(folder / "qcheck.yaml")
    loaded = load(policy, folder)
    ranges = calibrate(loaded.prepared.path, loaded.calibration, policy.quantization)
    return policy, loaded, ranges, [loaded.evaluation[i] for i in range(len(loaded.evaluation))]


def float_pass_timer(path: Path, samples: list[dict]):
    """A function timing one run of the float model over the samples (seconds)."""
    import time

    from qcheck.model.runtime import make_session

    session = make_session(path)

    def float_pass() -> float:
        clock = time.perf_counter()
        for sample in samples:
            session.run(None, sample)
        return time.perf_counter() - clock

    return float_pass


def screen_throughput(name: str, models: Path, seconds: float) -> None:
    """What one screened candidate costs, in float passes over 32 evaluation samples: the policy's recipe with
    random subsets of the last 40 % of the graph's nodes in float (what delta debugging on a tail region tries),
    on the model focused on those nodes (the suffix from the first of them, every other switch fixed), for
    `seconds`: first the emulation model's run alone (`Screener.run`), then each candidate judged as the search
    judges it (`Evaluator.screen`: the run, the requirement with its bootstrap bound at confidence 0.9), without
    and with racing (a candidate rejected on a share of the samples when it cannot pass; the same random candidates
    in both). Then a few unfocused candidates on the full emulation model. The float pass is timed before and
    after (the machine's load changes both)."""
    import os
    import random
    import time

    import onnx

    from qcheck.measure.tasks import build as build_tasks
    from qcheck.quantize.calibrate import Recipe
    from qcheck.search.evaluate import Evaluator
    from qcheck.search.screen import Screener, build_grid_model
    from qcheck.search.space import Change, Graph

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        policy, loaded, ranges, samples = zoo_setup(name, models, folder)
        fm = onnx.load(str(loaded.prepared.path))
        sw = build_grid_model(loaded.prepared.path, fm, ranges, Recipe(), folder)
        screener = Screener(sw, loaded.prepared.path, lambda method: ranges, Recipe(), samples)
        float_pass = float_pass_timer(loaded.prepared.path, samples)

        load_before, before = os.getloadavg()[0], min(float_pass() for _ in range(3))
        nodes = [n.node for n in sw.nodes]
        tail = nodes[int(len(nodes) * 0.6):]
        clock = time.perf_counter()
        screener.focus(screener.base_config, set(screener.config(Recipe(exclude_nodes=tail)).differs(
            screener.base_config).tolist()))
        screener.run(screener.base_config)  # the reference's values at the cuts
        setup = time.perf_counter() - clock

        def timed(judge) -> tuple[float, int]:
            rng, n, clock = random.Random(0), 0, time.perf_counter()
            while time.perf_counter() - clock < seconds:
                judge(rng.sample(tail, rng.randint(1, len(tail))))
                n += 1
            return (time.perf_counter() - clock) / n, n

        focused, n_run = timed(lambda floats: screener.run(screener.config(Recipe(exclude_nodes=floats))))
        ev = Evaluator(loaded.prepared.path, fm, lambda method: ranges, Recipe(), samples, policy.metrics,
                       policy.require, {}, policy.target, Graph(fm, set(ranges.ranges)),
                       SearchBudget(max_seconds=1e9), folder,
                       make_tasks=lambda: build_tasks(policy, loaded.prepared.outputs), confidence=0.9)
        ev.built_screener = screener
        judged = {}
        for race in (False, True):
            ev.race, ev.screened, ev.candidates, runs = race, {}, [], screener.runs
            each, n = timed(lambda floats: ev.screen(tuple(Change("keep_float", f) for f in floats)))
            judged[race] = (each, n, sum(c["passes"] for c in ev.candidates),
                            sum(bool(c.get("raced")) for c in ev.candidates), (screener.runs - runs) / n)
        clock = time.perf_counter()
        for k in range(3):
            screener.run(screener.config(Recipe(exclude_nodes=[nodes[k]])))
        full = (time.perf_counter() - clock) / 3
        after, load_after = min(float_pass() for _ in range(3)), os.getloadavg()[0]
        unit = (before + after) / 2
        print(f"== {name}: {len(sw.model.graph.node)} nodes in the emulation model, {len(sw.switches)} switches, "
              f"{len(samples)} samples, batch {screener.batch}; `{policy.require[0].text}`; load average "
              f"{load_before:.1f} -> {load_after:.1f}")
        print(f"float pass over the samples: {before:.3f} s before, {after:.3f} s after")
        print(f"focused on the last {len(tail)} of {len(nodes)} nodes: set-up {setup:.1f} s; the run alone: {n_run} "
              f"candidates in {seconds:.0f} s = {focused:.3f} s each = {focused / unit:.2f} float passes per sample; "
              f"{600 / focused:.0f} would fit in 10 minutes")
        for race, (each, n, passed, raced, runs) in judged.items():
            print(f"  judged ({'racing' if race else 'no racing'}): {n} candidates ({passed} pass, {raced} rejected "
                  f"early; {runs:.2f} of {len(screener.batches)} batches run each) in {seconds:.0f} s = {each:.3f} s "
                  f"each = {each / unit:.2f} float passes per sample; {600 / each:.0f} would fit in 10 minutes")
        print(f"unfocused (full emulation model): {full:.3f} s per candidate = {full / unit:.2f} float passes per sample")
        confirm_throughput(policy, loaded, ranges, samples, nodes, folder, unit)


def confirm_throughput(policy, loaded, ranges, samples: list[dict], nodes: list[str], folder: Path, unit: float) -> None:
    """Confirmation: 4 candidates (one node each in float) built with ONNX Runtime and judged, one at a time and
    on the usable cores (`Evaluator.evaluate_many`), in float passes over the samples."""
    import os
    import time

    import onnx

    from qcheck.measure.tasks import build as build_tasks
    from qcheck.quantize.calibrate import Recipe
    from qcheck.search.evaluate import Evaluator
    from qcheck.search.space import Change, Graph

    fm = onnx.load(str(loaded.prepared.path))
    sets = [(Change("keep_float", n),) for n in nodes[:4]]
    for workers in (1, 2):
        ev = Evaluator(loaded.prepared.path, fm, lambda method: ranges, Recipe(), samples, policy.metrics,
                       policy.require, {}, policy.target, Graph(fm, set(ranges.ranges)), SearchBudget(), folder,
                       make_tasks=lambda: build_tasks(policy, loaded.prepared.outputs), workers=workers)
        clock = time.perf_counter()
        ev.evaluate_many(sets)
        each = (time.perf_counter() - clock) / len(sets)
        print(f"confirmation, {workers} worker(s): {each:.2f} s per candidate built and judged = {each / unit:.1f} "
              f"float passes per sample (load average {os.getloadavg()[0]:.1f})")


def confirm_breakdown(name: str, models: Path, n: int = 6) -> None:
    """What one confirmed candidate costs, part by part, in float passes over 32 evaluation samples: ORT's quantizer
    building it (with its save), the session, the run over the samples; for n candidates (a node in float each,
    spread over the graph) built by ORT's quantizer alone ("before") and with `quantize.reuse` ("after": the policy's
    recipe built first, as a search does), alternately so that both see the same load; the median of each part,
    over the median of float passes timed beside each candidate.
    Checks the two models are the same bytes."""
    import os
    import statistics
    import time

    import onnx

    from qcheck.model.runtime import make_session
    from qcheck.quantize.calibrate import Recipe, build_quantized
    from qcheck.quantize.reuse import BuildReuse

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        policy, loaded, ranges, samples = zoo_setup(name, models, folder)
        path = loaded.prepared.path
        float_pass = float_pass_timer(path, samples)

        load_before, passes = os.getloadavg()[0], [float_pass()]
        nodes = [node.name for node in onnx.load(str(path)).graph.node]
        reuse = BuildReuse()
        build_quantized(path, ranges, Recipe(), folder / "base.onnx", reuse=reuse)
        parts: dict[str, list[list[float]]] = {"before": [[], [], []], "after": [[], [], []]}
        same = True
        for k in range(n):
            recipe = Recipe(exclude_nodes=[nodes[(k + 1) * len(nodes) // (n + 1)]])
            built = {}
            for kind, given in (("before", None), ("after", reuse)):
                passes.append(float_pass())  # beside each candidate: the load changes within seconds
                out = folder / f"{kind}.onnx"
                clock = time.perf_counter()
                build_quantized(path, ranges, recipe, out, reuse=given)
                built[kind] = out.read_bytes()
                middle = time.perf_counter()
                session = make_session(out)
                ready = time.perf_counter()
                for sample in samples:
                    session.run(None, sample)
                done = time.perf_counter()
                for i, t in enumerate((middle - clock, ready - middle, done - ready)):
                    parts[kind][i].append(t)
            same &= built["before"] == built["after"]
        unit = statistics.median(passes)
        print(f"== {name}: {len(nodes)} nodes, {len(samples)} samples; float pass {unit:.2f} s (median; "
              f"{min(passes):.2f}-{max(passes):.2f} s); load average "
              f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} (2 cores shared with other work)")
        for kind, times in parts.items():
            build, session, run = (statistics.median(t) for t in times)  # the load comes in bursts: medians
            total = build + session + run
            print(f"{kind:6s} per confirmed candidate: build {build:.2f} s / session {session:.2f} s / evaluate "
                  f"{run:.2f} s = {build / unit:.2f} / {session / unit:.2f} / {run / unit:.2f} float passes, "
                  f"{total / unit:.2f} in all")
        print(f"the same model bytes both ways: {same}")
        session_levels(folder / "after.onnx", samples)


def session_levels(path: Path, samples: list[dict]) -> None:
    """Session creation and run at ORT's graph optimization levels, and whether the outputs equal the default's
    (ORT_ENABLE_ALL, what a confirmed candidate is judged with)."""
    import time

    import numpy as np
    import onnxruntime as ort

    from qcheck.model.runtime import session_options

    model, reference = path.read_bytes(), None
    for level in ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC"):
        options = session_options()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        made = []
        for _ in range(3):  # the least of three: the first creation also loads ORT's kernels
            clock = time.perf_counter()
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            made.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        outputs = [session.run(None, sample) for sample in samples]
        ran = time.perf_counter() - clock
        reference = reference or outputs
        same = all(np.array_equal(a, b) for got, ref in zip(outputs, reference) for a, b in zip(got, ref))
        print(f"  {level}: session {min(made):.2f} s, run {ran:.2f} s, outputs equal to ORT_ENABLE_ALL's: "
              f"{same}")


def print_figures(results: dict) -> None:
    s = results["search"]
    secs = results["timings"]["search"]
    print(f"model: {results['model']['name']} ({results['model']['nodes']} nodes), evaluation "
          f"{results['measure']['samples']} samples; strategy {s['strategy']}, status {s['status']}")
    built = s.get("confirmed", s["trials"])
    print(f"search: {s['trials']} trials ({built} built and run) in {secs:.1f} s, stopped by "
          f"{s['stopped_by'] or 'the strategy'}")
    for i in s["finalists"]:
        c = s["candidates"][i]
        print(f"  finalist #{c['id']}: {c['label']}: {c['size_bytes'] / 1e6:.2f} MB, median latency {c['latency_ms']:.1f} ms")
    errors = [c for c in s["candidates"] if c.get("error")]
    print(f"failed builds/runs recorded: {len(errors)}")
    plain = s["candidates"][0]
    print(f"plain recipe: {_requirements(plain)}")
    t = region_baseline(s)
    if t:
        print(f"region baseline #{t['id']} ({t.get('figure', 'confirmed')}): {t['label']}: {t['float_nodes']} "
              f"float node(s), {t['int16_tensors']} int16 tensor(s), cost {t['cost']:g}, {_requirements(t)}")
    if s["chosen"] is not None:
        c = s["candidates"][s["chosen"]]
        kinds = sorted({ch["remedy"] for ch in c["changes"]})
        print(f"fix #{c['id']}: {c['label']}: {c['n_changes']} change(s) ({', '.join(kinds) or 'none'}), "
              f"{c['float_nodes']} float node(s), {c['int16_tensors']} int16 tensor(s), cost {c['cost']:g}; "
              f"{_requirements(c)}")
    else:
        print(f"no fix; recommendation: {s['recommendation']['reason'] if s['recommendation'] else None}")
    sc = s.get("screening")
    if sc:
        per = sc["seconds"] / sc["candidates"] if sc["candidates"] else None
        print(f"screened {s.get('screened', 0)}, confirmed {s.get('confirmed', s['trials'])}; screening "
              f"{sc['seconds']:.1f} s" + (f" = {per:.2f} s per candidate = {sc['float_passes_per_candidate']} float "
                                          f"passes per sample (float pass over the samples {sc['float_pass_seconds']} s)"
                                          f"; {600 / per:.0f} candidates would fit in 10 min" if per else ""))
    h = s.get("holdout")
    if h:
        print(f"held out ({h['samples']} samples): plain recipe {_requirements(h['plain'])}"
              + (f"; fix {_requirements(h['chosen'])} -> {'meets' if h['chosen']['passes'] else 'misses'}"
                 if h["chosen"] else ""))
        for t in h.get("validated") or []:  # passing candidates judged on them, cheapest first
            c = s["candidates"][t["candidate"]]
            print(f"  held out #{c['id']} (cost {c['cost']:g}, {c['n_changes']} change(s)): {_requirements(t)}")
    for n in s["notes"]:
        print(f"  note: {n}")


def region_baseline(s: dict) -> dict | None:
    """The cheapest passing float region the search's bisection judged (a tail or stem kept float, before pruning):
    what keeping that span of the graph float costs, against the pruned fix."""
    regions = [c for c in s["candidates"] if c["passes"] and any(ch["subject"].startswith(("tail:", "stem:"))
                                                                  and ch["remedy"] == "keep_float"
                                                                  for ch in c["changes"])]
    return min(regions, key=lambda c: c["cost"]) if regions else None


def _first_value(c: dict | None) -> str:
    if not c or not c.get("requirements"):
        return "-"
    v = next(iter(c["requirements"][0]["values"].values()), None)
    m = c["requirements"][0].get("margin") or {}
    bound = f" (bound {m['bound']:.3f})" if m.get("bound") is not None else ""  # search.confidence
    return (f"{v:.3f}" if isinstance(v, float) else str(v)) + bound


def table_row(name: str, results: dict, wall: float, load: float | None) -> dict:
    s = results["search"]
    h = s.get("holdout") or {}
    chosen = s["candidates"][s["chosen"]] if s["chosen"] is not None else None
    region = region_baseline(s)
    kinds = {}
    for ch in (chosen or {}).get("changes", []):
        kinds[ch["remedy"]] = kinds.get(ch["remedy"], 0) + 1
    return {
        "model": name, "requirement": f"`{s['candidates'][0]['requirements'][0]['text']}`" + (
            f", confidence {s['margin']['confidence']:g}" if s.get("margin") else ""),
        "plain": f"{_first_value(s['candidates'][0])} / {_first_value(h.get('plain'))}",
        "fix": f"none ({(s.get('recommendation') or {}).get('action') or s['status']})" if chosen is None else
        f"{_first_value(chosen)} / {_first_value(h.get('chosen'))}" + (
            "" if not h.get("chosen") else (" meets" if h["chosen"]["passes"] else " misses")) + _held_out_choice(s),
        "changes": "-" if chosen is None else ", ".join(f"{n} {k}" for k, n in kinds.items()) + (
            f" ({chosen['float_nodes']} float, {chosen['int16_tensors']} int16)"),
        "region": "-" if region is None else f"{region['float_nodes']} float, {region['int16_tensors']} int16 "
                                             f"(cost {region['cost']:g})",
        "fix_cost": "-" if chosen is None else f"{chosen['cost']:g}",
        "trials": f"{s.get('screened', 0)} / {s.get('confirmed', s['trials'])}",
        "stopped": s["stopped_by"] or "the strategy",
        "wall": f"{wall / 60:.1f} min", "load": "-" if load is None else f"{load:.1f}",
    }


def _held_out_choice(s: dict) -> str:
    """When the held-out samples chose among the passing candidates (search.holdout): what the cheapest gave there,
    how many were judged, and that the held-out figure is then not independent."""
    h = s.get("holdout") or {}
    tried = h.get("validated") or []
    if len(tried) < 2:
        return ""
    first = s["candidates"][tried[0]["candidate"]]
    return (f"; chosen by the held-out samples among {len(tried)} passing (the cheapest, #{first['id']} at cost "
            f"{first['cost']:g}: {_first_value(first)} / {_first_value(tried[0])})"
            + ("" if h.get("independent", True) else ", so not an independent check"))


def print_table(rows: list[dict]) -> None:
    head = ["model", "requirement", "plain int8 (search / held out)", "fix (search / held out)", "changes",
            "fix cost", "region baseline", "screened / built", "stopped by", "wall", "load"]
    keys = ["model", "requirement", "plain", "fix", "changes", "fix_cost", "region", "trials", "stopped", "wall",
            "load"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


def _requirements(c: dict) -> str:
    return "; ".join(f"{q['text']}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in q["values"].items()) for q in c["requirements"]) \
        or (c.get("error") or "")


if __name__ == "__main__":
    main()
