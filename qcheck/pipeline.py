"""`qcheck run`: policy -> model and data -> ranges -> quantized model -> measurements -> findings -> verdict.

Each stage is timed (wall time, peak memory); results are plain data that the
report renders. Nothing is written to the destination until the run is
complete (see `outputs.OutputDir`).
"""

from __future__ import annotations

import datetime as _dt
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qcheck import __version__
from qcheck.analyses import attach_node_statistics, node_statistics, run_analyses
from qcheck.data import DataSet, open_data
from qcheck.errors import Problem, QcheckError
from qcheck.fetch import fetch_model
from qcheck.measure import measure
from qcheck.metrics import aggregate_model_metrics
from qcheck.model import InputInfo, file_sha256, graph_inputs, load_onnx, prepare_model
from qcheck.model_stats import model_row
from qcheck.outputs import OutputDir
from qcheck.policy import Policy
from qcheck.qdq import read_qdq
from qcheck.quantize import Recipe, build_quantized, calibrate
from qcheck.requirements import judge, requirement_env, task_intervals
from qcheck.results import SCHEMA_VERSION, write_json, write_layer_stats, write_sensitivity
from qcheck.rules import count_by_severity, evaluate, evaluate_model, load_rules, needed_statistics, sort_findings
from qcheck.tasks import build as build_tasks

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


def _shapes_from(policy: Policy, inputs: list[InputInfo], calib: DataSet) -> dict[str, list[int]]:
    """Static shapes for every input: the policy's, else the model's, else the first sample's."""
    shapes = {}
    first = None
    for info in inputs:
        if info.name in policy.inputs and policy.inputs[info.name]:
            shapes[info.name] = policy.inputs[info.name]
        elif info.is_static:
            shapes[info.name] = list(info.shape)
        else:
            first = first if first is not None else calib[0]
            shapes[info.name] = list(first[info.name].shape)
    return shapes


def run(policy: Policy, out: Path | None = None, console: Console | None = None) -> dict:
    """Run the whole check; returns the results (also written, with the report, to the output folder)."""
    console = console or Console()
    stages = Stages()
    out_dir = OutputDir(out or policy.report.out)
    try:
        results = _run(policy, out_dir, stages, console)
        # The report renders from exactly what results.json holds, so it can be rendered again
        # later; the time rendering takes is therefore not in it (bench/ measures it).
        results["timings"] = {k: round(v, 3) for k, v in stages.timings.items()}
        results["peak_memory_mb"] = {k: round(v, 1) for k, v in stages.peak_mb.items()}
        write_json(results, out_dir.path("results.json"))
        from qcheck.report import render_report  # rendering is its own layer; computation never imports it

        with stages.stage("render", console):
            render_report(results, out_dir.staging, policy.report.formats, log=console.log)
        final = out_dir.commit()
        results["output_folder"] = str(final)
        results["render_seconds"] = round(stages.timings["render"], 3)
        return results
    except BaseException:
        out_dir.discard()
        raise


def _run(policy: Policy, out_dir: OutputDir, stages: Stages, console: Console) -> dict:
    with tempfile.TemporaryDirectory(prefix="qcheck-") as tmp:
        work = Path(tmp)
        with stages.stage("load", console):
            rules = load_rules(policy.rules, str(policy.path))  # pack and inline-rule errors before any model runs
            if policy.model.fetch and not policy.model.path.exists():
                fetch_model(policy.model.fetch, policy.model.path, log=console.log)
            raw_model = load_onnx(policy.model.path)
            inputs = graph_inputs(raw_model)
            _check_policy_inputs(policy, inputs)
            for info in inputs:  # policy shapes first, so images know their size
                if policy.inputs.get(info.name):
                    info.shape = list(policy.inputs[info.name])
            calib = open_data(policy.data.calibration, inputs, policy.data.preprocess)
            shapes = _shapes_from(policy, inputs, calib)
            prepared = prepare_model(raw_model, policy.model.path, shapes, work)
            del raw_model
            _check_policy_outputs(policy, prepared.outputs)
            calib = open_data(policy.data.calibration, prepared.inputs, policy.data.preprocess)
            evaluation = (open_data(policy.data.evaluation, prepared.inputs, policy.data.preprocess)
                          if policy.data.evaluation else calib)
            task_metrics = build_tasks(policy, prepared.outputs)

        with stages.stage("calibrate", console):
            ranges = calibrate(prepared.path, calib, policy.quantization,
                               progress=lambda i, n: console.progress("calibrate", i, n))
            ranges.save(out_dir.path("ranges.json"))

        with stages.stage("quantize", console):
            recipe = Recipe.from_policy(policy.quantization)
            qpath = build_quantized(prepared.path, ranges, recipe, out_dir.path(QUANTIZED_MODEL_NAME))
            float_model = onnx.load(str(prepared.path))
            qmodel = onnx.load(str(qpath))
            qmap = read_qdq(qmodel, float_model)

        with stages.stage("measure", console):
            m = measure(float_model, qmodel, qmap, evaluation, ranges.ranges, policy.metrics, policy.measure.modes,
                        include_weights=policy.measure.weights,
                        progress=lambda i, n: console.progress("measure", i, n), tasks=task_metrics,
                        need=needed_statistics(rules))
            rows = [t.row() for t in m.tensors]

        analyses = None
        if policy.analyses.any:
            with stages.stage("analyses", console):
                analyses = run_analyses(policy.analyses, prepared.path, float_model, ranges, recipe, evaluation,
                                        policy.generic_metrics, progress=console.progress)
                attach_node_statistics(rows, node_statistics(analyses))

        with stages.stage("rules", console):
            findings = evaluate(rules, rows, policy.target)
            aggregate = aggregate_model_metrics(m.outputs)
            # model-scope rules (QC111, QC112) read whether the requirements hold on the other findings
            first = judge(policy.require, requirement_env(aggregate, m.user_metrics, count_by_severity(findings), m.tasks),
                          intervals=task_intervals(m.tasks))
            model_stats = model_row(policy.target, qmap.quantized_nodes, qmap.float_nodes, first, aggregate, findings)
            findings = sort_findings(findings + evaluate_model(rules, model_stats, policy.target))
            counts = count_by_severity(findings)
            verdict = judge(policy.require, requirement_env(aggregate, m.user_metrics, counts, m.tasks),
                            intervals=task_intervals(m.tasks))
            write_layer_stats(rows, out_dir.path("layer_stats.csv"))
            if analyses:
                write_sensitivity(analyses, out_dir.path("sensitivity.csv"))

        # the fallback search (policy `search:`) and the lock file: see qcheck/search/
        search, final = None, {"recipe": recipe, "ranges": ranges, "model": QUANTIZED_MODEL_NAME, "ranges_file": "ranges.json"}
        if policy.search is not None:
            from qcheck.search.stage import search_stage

            with stages.stage("search", console):
                search, chosen_verdict, model_file, chosen, chosen_ranges = search_stage(
                    policy, prepared=prepared, float_model=float_model, ranges=ranges, calib=calib,
                    evaluation=evaluation, recipe=recipe, rows=rows, findings=[f.to_dict() for f in findings],
                    finding_counts=counts, work=work, out_dir=out_dir, log=console.log,
                    sensitivity=[n["node"] for n in (analyses or {}).get("sensitivity", {}).get("nodes", [])])
                if chosen_verdict is not None:
                    search["baseline_verdict"], verdict = verdict, chosen_verdict
                    final.update(recipe=chosen, ranges=chosen_ranges, model=model_file)
                    if chosen_ranges.method != ranges.method:
                        final["ranges_file"] = f"ranges.{chosen_ranges.method}.json"
                        chosen_ranges.save(out_dir.path(final["ranges_file"]))
                elif search["status"] == "failed":
                    verdict["search"] = {"status": "failed", "recommendation": search["recommendation"]}
        from qcheck.search.stage import write_policy_lock

        lock_file = write_policy_lock(policy, prepared=prepared, shapes=shapes, calib=calib, ranges=final["ranges"],
                                      ranges_file=final["ranges_file"], recipe=final["recipe"], model_file=final["model"],
                                      out_dir=out_dir, environment=environment(), search=search)

        kinds: dict[str, int] = {}
        for t in qmap.tensors.values():
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
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
            "data": {"calibration": calib.describe(),
                     "evaluation": {**evaluation.describe(), "same_as_calibration": evaluation is calib},
                     "preprocess": policy.raw.get("data", {}).get("preprocess")},
            "target": policy.target.to_dict(),
            "quantization": {
                "scheme": policy.quantization.scheme, "recipe": recipe.to_dict(), "recipe_key": recipe.key(),
                "ranges_file": "ranges.json", "ranges_sha256": ranges.sha256(), "calibration_samples": ranges.samples,
                "quantized_model": QUANTIZED_MODEL_NAME, "size_bytes": qpath.stat().st_size,
                "quantized_tensors": kinds, "quantized_nodes": len(qmap.quantized_nodes),
                "float_nodes": qmap.float_nodes,
            },
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


def _check_policy_inputs(policy: Policy, inputs: list[InputInfo]) -> None:
    names = {i.name for i in inputs}
    problems = [policy.problem_at(("inputs", name), f"the model has no input named '{name}'; its inputs are: "
                                  f"{', '.join(sorted(names))}") for name in policy.inputs if name not in names]
    for info in inputs:
        shape = policy.inputs.get(info.name)
        if shape and len(shape) != len(info.shape):
            problems.append(policy.problem_at(("inputs", info.name, "shape"),
                                              f"input '{info.name}' has {len(info.shape)} dimensions {info.shape}; "
                                              f"the policy gives {len(shape)}: {shape}"))
        elif shape:
            for d, s in zip(info.shape, shape):
                if isinstance(d, int) and d != s:
                    problems.append(policy.problem_at(("inputs", info.name, "shape"),
                                                      f"input '{info.name}' has the fixed shape {info.shape}; the policy "
                                                      f"asks for {shape}"))
                    break
    if problems:
        raise QcheckError(problems)


def _check_policy_outputs(policy: Policy, outputs: list[str]) -> None:
    problems = [policy.problem_at(("metrics", name, "output"),
                                  f"metric '{name}': the model has no output named '{spec.output}'; its outputs are: "
                                  f"{', '.join(outputs)}")
                for name, spec in policy.generic_metrics.items() if spec.output not in outputs]
    if problems:
        raise QcheckError(problems)


__all__ = ["run", "Console", "Problem"]
