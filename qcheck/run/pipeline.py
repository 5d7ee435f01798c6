"""`qcheck run`: policy -> model and data -> ranges -> quantized model -> measurements -> findings -> verdict.

Each stage is timed (wall time, peak memory); results are plain data that the
report renders. Nothing is written to the destination until the run is
complete (see `output_folder.OutputDir`).
"""

from __future__ import annotations

import datetime as _dt
import platform
import resource
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qcheck import __version__
from qcheck.analyses.run_all import attach_node_statistics, node_statistics, run_analyses
from qcheck.data.finite import check_ranges_finite
from qcheck.data.readers import DataSet
from qcheck.errors import Problem
from qcheck.measure.tasks import build as build_tasks
from qcheck.model.prepare import file_sha256
from qcheck.model.runtime import run_failure
from qcheck.policy.schemes import CALIBRATED
from qcheck.policy.spec import Policy
from qcheck.policy.yaml_spans import line_of
from qcheck.quantize.calibrate import calibrate
from qcheck.quantize.schemes import size_bytes
from qcheck.results.files import SCHEMA_VERSION, write_json, write_layer_stats, write_sensitivity
from qcheck.rules.engine import needed_statistics
from qcheck.rules.scheme_run import build_for, judge_built, measure_built, node_split
from qcheck.run.load_stage import load
from qcheck.run.output_folder import Origin, OutputDir
from qcheck.scratch import sweep_temp, temp_folder

QUANTIZED_MODEL_NAME = "model.quant.onnx"


@dataclass
class Console:
    """Where the pipeline reports progress; the CLI supplies one that prints."""

    log: Callable[[str], None] = lambda msg: None
    progress: Callable[[str, int, int], None] = lambda stage, i, n: None


@dataclass
class Stages:
    timings: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, console: Console):
        console.log(f"{name} ...")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            self.peak_mb[name] = peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def environment() -> dict:
    import numpy
    import onnxruntime

    return {"qcheck": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}"}


def run(policy: Policy, out: Path | None = None, console: Console | None = None) -> dict:
    """Run the whole check; returns the results (also written, with the report, to the output folder)."""
    console = console or Console()
    stages = Stages()
    out_dir = output_dir(policy, out)
    sweep_temp()  # temporary folders of killed runs
    try:
        results = _run(policy, out_dir, stages, console)
        # The report renders from exactly what results.json holds, so it can be rendered again
        # later; the time rendering takes is therefore not in it (bench/ measures it).
        results["timings"] = {k: round(v, 3) for k, v in stages.timings.items()}
        results["peak_memory_mb"] = {k: round(v, 1) for k, v in stages.peak_mb.items()}
        write_json(results, out_dir.path("results.json"))
        from qcheck.report import render_report  # rendering is its own layer; computation never imports it

        with stages.stage("render", console):
            render_report(results, out_dir.staging, policy.report.formats, log=console.log,
                          template_dirs=policy.report.templates)
        final = out_dir.commit()
        results["output_folder"] = str(final)
        results["render_seconds"] = round(stages.timings["render"], 3)
        return results
    except OSError as exc:
        out_dir.discard()
        problem = out_dir.disk_problem(exc)
        if problem is None:
            raise
        raise problem from None
    except Exception as exc:  # noqa: BLE001 - only ORT failing on a sample becomes the user's problem; the rest re-raised
        out_dir.discard()
        problem = run_failure(exc, DataSet.last_read)
        if problem is None:
            raise
        raise problem from None
    except BaseException:
        out_dir.discard()
        raise


def output_dir(policy: Policy, out: Path | None) -> OutputDir:
    """The run's output folder, refused when replacing it could delete something of the user's."""
    origin = Origin(flag="--out") if out else Origin(file=str(policy.path), line=line_of(policy._doc, ["report", "out"]))
    data = [(f"{k} data folder", s.path) for k, s in (("calibration", policy.data.calibration),
                                                      ("evaluation", policy.data.evaluation)) if s is not None]
    protected = [("policy file", policy.path), ("model", policy.model.path), *data]
    protected += [("report template folder", t) for t in policy.report.templates]
    protected += [("rule pack", Path(p)) for p in policy.rules.packs if p != "builtin"]
    return OutputDir(out or policy.report.out, origin, protected, inside_forbidden=data)


def _run(policy: Policy, out_dir: OutputDir, stages: Stages, console: Console) -> dict:
    with temp_folder("run") as tmp:
        work = Path(tmp)
        with stages.stage("load", console):
            loaded = load(policy, work, log=console.log)
            rules, prepared, shapes = loaded.rules, loaded.prepared, loaded.shapes
            calib, evaluation, task_metrics = loaded.calibration, loaded.evaluation, loaded.tasks

        scheme = policy.quantization.scheme
        ranges = None
        if calib is not None and any(s in CALIBRATED for s in [scheme] + policy.compare):
            with stages.stage("calibrate", console):
                ranges = calibrate(prepared.path, calib, policy.quantization,
                                   progress=lambda i, n: console.progress("calibrate", i, n), source=prepared.source)
                check_ranges_finite(prepared.path, ranges.ranges, calib)
                ranges.save(out_dir.path("ranges.json"))

        with stages.stage("quantize", console):
            built = build_for(scheme, policy, prepared.path, out_dir.path(QUANTIZED_MODEL_NAME), ranges)
            recipe = built.recipe
            qpath = built.path
            float_model = onnx.load(str(prepared.path))

        with stages.stage("measure", console):
            m, qmap, kinds = measure_built(built, policy, float_model, evaluation, ranges,
                                           progress=lambda i, n: console.progress("measure", i, n), tasks=task_metrics,
                                           need=needed_statistics(rules))
            rows = [t.row() for t in m.tensors]
            split = node_split(built, qmap)  # (runs quantized, computes in float)

        analyses = None
        if policy.analyses.any and built.has_qdq:  # the emulation model switches Q/DQ pairs: none in dynamic/float16
            with stages.stage("analyses", console):
                ranked_by = policy.analyses.metric  # a task metric scores every configuration; others come free
                analyses = run_analyses(policy.analyses, prepared.path, float_model, ranges, recipe, evaluation,
                                        policy.metrics, progress=console.progress,
                                        make_tasks=lambda: [t for t in build_tasks(policy, prepared.outputs)
                                                            if t.name == ranked_by])
                attach_node_statistics(rows, node_statistics(analyses))

        with stages.stage("rules", console):
            main_run = judge_built(built, m, policy, rules, qmap, kinds, rows=rows)
            rows, findings, counts = main_run.rows, main_run.findings, main_run.counts
            aggregate, verdict = main_run.aggregate, main_run.verdict
            model_stats = main_run.model_statistics
            write_layer_stats(rows, out_dir.path("layer_stats.csv"))
            if analyses:
                write_sensitivity(analyses, out_dir.path("sensitivity.csv"))

        comparison = None
        if policy.compare:
            from qcheck.run.compare import compare_schemes

            with stages.stage("compare", console):
                folder = out_dir.path("schemes")
                folder.mkdir(parents=True, exist_ok=True)
                comparison = compare_schemes(policy.compare, policy, prepared.path, float_model, ranges, evaluation,
                                             rules, folder, done={scheme: main_run}, log=console.log)

        # the fallback search (policy `search:`) and the lock file: see qcheck/search/
        search, final = None, {"recipe": recipe, "ranges": ranges, "model": QUANTIZED_MODEL_NAME, "ranges_file": "ranges.json"}
        if policy.search is not None and ranges is not None:  # the search varies Q/DQ recipes
            from qcheck.search.stage import search_stage

            with stages.stage("search", console):
                search, chosen_verdict, model_file, chosen, chosen_ranges = search_stage(
                    policy, prepared=prepared, float_model=float_model, ranges=ranges, calib=calib,
                    evaluation=evaluation, recipe=recipe, rows=rows, findings=[f.to_dict() for f in findings],
                    finding_counts=counts, rules=rules, work=work, out_dir=out_dir, log=console.log,
                    sensitivity=[n["node"] for n in (analyses or {}).get("sensitivity", {}).get("nodes", [])])
                if chosen_verdict is not None:
                    search["baseline_verdict"], verdict = verdict, chosen_verdict
                    final.update(recipe=chosen, ranges=chosen_ranges, model=model_file)
                    if chosen_ranges.method != ranges.method:
                        final["ranges_file"] = f"ranges.{chosen_ranges.method}.json"
                        chosen_ranges.save(out_dir.path(final["ranges_file"]))
                elif search["status"] == "failed":
                    verdict["search"] = {"status": "failed", "recommendation": search["recommendation"]}
        lock_file = None
        if ranges is not None:  # dynamic and float16 have no ranges to lock
            from qcheck.search.stage import write_policy_lock

            lock_file = write_policy_lock(policy, prepared=prepared, shapes=shapes, calib=calib, ranges=final["ranges"],
                                          ranges_file=final["ranges_file"], recipe=final["recipe"],
                                          model_file=final["model"], out_dir=out_dir, environment=environment(),
                                          search=search)

        return {
            "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "title": policy.report.title or f"qcheck: {policy.model.path.stem}",
            "policy": {"path": str(policy.path), "sha256": file_sha256(policy.path), "document": policy.raw},
            "verdict": verdict,
            "model": {
                "name": policy.model.path.name, "source": str(prepared.source), "sha256": prepared.sha256,
                "opset": prepared.opset, "original_opset": prepared.original_opset, "nodes": prepared.node_count,
                "op_counts": prepared.op_counts, "preprocess": prepared.preprocess, "notes": prepared.notes,
                "inputs": [{"name": i.name, "shape": i.shape, "dtype": i.dtype} for i in prepared.inputs],
                "outputs": prepared.outputs,
                "size_bytes": prepared.source.stat().st_size,
            },
            "environment": environment(),
            "data": {"calibration": calib.describe() if calib is not None else None,
                     "evaluation": {**evaluation.describe(), "same_as_calibration": evaluation is calib},
                     "preprocess": policy.raw.get("data", {}).get("preprocess")},
            "target": policy.target.to_dict(),
            "quantization": {
                "scheme": policy.quantization.scheme, "recipe": recipe.to_dict(), "recipe_key": recipe.key(),
                "ranges_file": "ranges.json" if ranges else None, "ranges_sha256": ranges.sha256() if ranges else None,
                "calibration_samples": ranges.samples if ranges else 0,
                "quantized_model": QUANTIZED_MODEL_NAME, "size_bytes": size_bytes(qpath),
                "quantized_tensors": kinds, "quantized_nodes": len(split[0]) if qmap else None,
                "float_nodes": split[1],
                "io": built.io, "io_params": built.io_params, "float_ops": built.float_ops, "notes": built.notes,
                "build_seconds": round(built.build_seconds, 3),
            },
            "compare": comparison,
            "model_metrics": {"aggregate": aggregate, "outputs": m.outputs, "user": m.user_metrics, "tasks": m.tasks},
            "model_statistics": model_stats,
            "measure": {"modes": policy.measure.modes, "samples": m.samples, "notes": m.notes},
            "tensors": rows,
            "analyses": analyses,
            "findings": [f.to_dict() for f in findings],
            "finding_counts": counts,
            "rules": [r.doc() for r in rules],
            "search": search,
            "lock": {"file": lock_file, "quantized_model": final["model"], "recipe": final["recipe"].to_dict(),
                     "recipe_key": final["recipe"].key(), "ranges_file": final["ranges_file"]},
        }


__all__ = ["run", "Console", "Problem"]
