"""`qcheck run`: policy -> model and data -> ranges -> quantized model -> measurements -> findings -> verdict.

Each stage is timed (wall time, peak memory); results are plain data that the
report renders. Nothing is written to the destination until the run is
complete (see `output_folder.OutputDir`).
"""

from __future__ import annotations

import datetime as _dt
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qcheck import __version__
from qcheck.analyses.run_all import attach_node_statistics, node_statistics, run_analyses
from qcheck.analyses.switchable import SwitchableModel, build_switchable
from qcheck.compute.ray_cluster import connected
from qcheck.data.finite import check_ranges_finite
from qcheck.data.readers import DataSet
from qcheck.errors import Problem, QcheckError
from qcheck.measure.tasks import build as build_tasks
from qcheck.model.graph import GraphIndex
from qcheck.model.prepare import file_sha256
from qcheck.model.runtime import run_failure, usable_cores
from qcheck.policy.paths import resolve_in
from qcheck.policy.schemes import CALIBRATED
from qcheck.policy.spec import Policy
from qcheck.policy.yaml_spans import line_of
from qcheck.quantize.calibrate import Ranges, Recipe, calibrate
from qcheck.quantize.given import given_scheme, read_given
from qcheck.quantize.given_edit import GIVEN_METHOD, build_given, given_base_recipe
from qcheck.quantize.given_formats import unfold_activations
from qcheck.quantize.schemes import size_bytes
from qcheck.results.files import write_json, write_layer_stats, write_sensitivity
from qcheck.results.schema import (
    SCHEMA_VERSION,
    DataInfo,
    GraphNode,
    LayerMetricInfo,
    LockInfo,
    MeasureInfo,
    ModelInfo,
    ModelInput,
    ModelMetrics,
    PolicyRef,
    QuantizationInfo,
    Results,
)
from qcheck.rules.engine import by_recovery
from qcheck.rules.scheme_run import SchemeRun, build_for, judge_built, measure_built, measure_given_built, node_split
from qcheck.run.load_stage import Loaded, load
from qcheck.run.memory import StagePeak
from qcheck.run.needs import statistics_read
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
    memory: StagePeak = field(default_factory=StagePeak)

    @contextmanager
    def stage(self, name: str, console: Console):
        console.log(f"{name} ...")
        self.memory.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), self.memory.peak_mb())


def environment() -> dict:
    import numpy
    import onnxruntime

    return {"qcheck": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "platform": f"{platform.system()} {platform.machine()}"}


def run(policy: Policy, out: Path | None = None, console: Console | None = None) -> dict:
    """Run the whole check; returns the results (also written, with the report, to the output folder)."""
    console = console or Console()
    ray = policy.analyses.executor if policy.analyses.executor and policy.analyses.executor.kind == "ray" else None
    if ray is None or not (policy.analyses.any or policy.search):
        return _run_and_write(policy, out, console)
    # before anything runs or is written (without Ray, say how to install it); one connection for the analyses'
    # shards and the search's screening, not a cluster started for each
    with connected(ray.address, ray.workers or usable_cores()):
        return _run_and_write(policy, out, console)


def _run_and_write(policy: Policy, out: Path | None, console: Console) -> dict:
    stages = Stages()
    out_dir = output_dir(policy, out)
    sweep_temp()  # temporary folders of killed runs
    try:
        typed = _run(policy, out_dir, stages, console)
        # The report renders from exactly what results.json holds, so it can be rendered again
        # later; the time rendering takes is therefore not in it (bench/ measures it).
        typed.timings = {k: round(v, 3) for k, v in stages.timings.items()}
        typed.peak_memory_mb = {k: round(v, 1) for k, v in stages.peak_mb.items()}
        typed.peak_memory_method = stages.memory.method
        results = typed.to_dict()
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
    return OutputDir(out or policy.report.out, origin, user_inputs(policy), inside_forbidden=data_folders(policy))


def data_folders(policy: Policy) -> list[tuple[str, Path]]:
    return [(f"{k} data folder", s.path) for k, s in (("calibration", policy.data.calibration),
                                                      ("evaluation", policy.data.evaluation)) if s is not None]


def user_inputs(policy: Policy) -> list[tuple[str, Path]]:
    """Every file and folder of the user's a run reads, with what it is: never to be replaced or written into."""
    inputs = [("policy file", policy.path), ("model", policy.model.path), *data_folders(policy)]
    inputs += [("quantized model", policy.quantized.path)] if policy.quantized else []
    inputs += [("report template folder", t) for t in policy.report.templates]
    inputs += [("rule pack", Path(p)) for p in policy.rules.packs if p != "builtin"]
    for name, spec in policy.metrics.items():
        inputs += [(f"{key} file of metric '{name}'", resolve_in(policy.folder, spec.options[key]))
                   for key in ("labels", "charset") if isinstance(spec.options.get(key), str)]
    return inputs


def _run(policy: Policy, out_dir: OutputDir, stages: Stages, console: Console) -> Results:
    with temp_folder("run") as tmp:
        work = Path(tmp)
        with stages.stage("load", console):
            loaded = load(policy, work, log=console.log)
        return _check(policy, loaded, work, out_dir, stages, console)


@dataclass
class Final:
    """The model a run ends with: the policy's recipe, or the search's choice; the lock file records it."""

    recipe: Recipe
    ranges: Ranges | None
    model: str = QUANTIZED_MODEL_NAME
    ranges_file: str | None = "ranges.json"  # None: a given quantized model has no ranges file


def _check(policy: Policy, loaded: Loaded, work: Path, out_dir: OutputDir, stages: Stages,
           console: Console) -> Results:
    """The stages after loading: calibrate, quantize, measure, analyses, rules, compare, search, lock."""
    if loaded.given is not None:
        return _check_given(policy, loaded, work, out_dir, stages, console)
    prepared, evaluation = loaded.prepared, loaded.evaluation
    scheme = policy.quantization.scheme
    ranges = _calibrate(policy, loaded, out_dir, stages, console)
    with stages.stage("quantize", console):
        built = build_for(scheme, policy, prepared.path, out_dir.path(QUANTIZED_MODEL_NAME), ranges)
        float_model = onnx.load(str(prepared.path))
    with stages.stage("measure", console):
        m, qmap, kinds = measure_built(built, policy, float_model, evaluation, ranges,
                                       progress=lambda i, n: console.progress("measure", i, n), tasks=loaded.tasks,
                                       need=statistics_read(policy, loaded.rules))
        rows = [t.row() for t in m.tensors]
    analyses = _analyses(policy, loaded, built, float_model, ranges, rows, stages, console)
    with stages.stage("rules", console):
        main_run = judge_built(built, m, policy, loaded.rules, qmap, kinds, rows=rows)
        write_layer_stats(main_run.rows, out_dir.path("layer_stats.csv"), list(policy.layer_metrics))
        if analyses:
            write_sensitivity(analyses, out_dir.path("sensitivity.csv"))
    comparison = None
    if policy.compare:
        from qcheck.run.compare import compare_schemes

        with stages.stage("compare", console):
            folder = out_dir.path("schemes")
            folder.mkdir(parents=True, exist_ok=True)
            comparison = compare_schemes(policy.compare, policy, prepared.path, float_model, ranges, evaluation,
                                         loaded.rules, folder, done={scheme: main_run}, log=console.log)
    final = Final(recipe=built.recipe, ranges=ranges)
    search = _search(policy, loaded, main_run, float_model, analyses, final, work, out_dir, stages, console)
    lock_file = _lock(policy, loaded, final, search, out_dir)
    return _results(policy, loaded, built, m, qmap, kinds, main_run, ranges, analyses, comparison, search, final,
                    lock_file, GraphIndex(float_model).outline())


def _check_given(policy: Policy, loaded: Loaded, work: Path, out_dir: OutputDir, stages: Stages,
                 console: Console) -> Results:
    """A quantized model made elsewhere (`quantized:`): read, measure, analyses, rules, and the search (`search:`)
    on edits to that model (quantize/given_edit.py)."""
    given_file = loaded.given
    with stages.stage("read quantized model", console):
        float_model = onnx.load(str(loaded.prepared.path))
        given = read_given(given_file.model, float_model)
        built = given_scheme(given, given_file.path, given_file.measure_path, out_dir.path(QUANTIZED_MODEL_NAME))
    with stages.stage("measure", console):
        m, rows, kinds = measure_given_built(given, policy, float_model, loaded.evaluation,
                                             progress=lambda i, n: console.progress("measure", i, n),
                                             tasks=loaded.tasks, need=statistics_read(policy, loaded.rules))
    analyses = None
    if given.editable is not None:  # the emulation model switches Q/DQ pairs (QOperator: its QDQ form; dynamic: none)
        analyses = _analyses(policy, loaded, built, float_model, Ranges("given", given.grid_ranges(), 0), rows,
                             stages, console, emulation=lambda: _given_emulation(given.editable, float_model))
    with stages.stage("rules", console):
        main_run = judge_built(built, m, policy, loaded.rules, given.qmap, kinds, rows=rows)
        write_layer_stats(main_run.rows, out_dir.path("layer_stats.csv"), list(policy.layer_metrics))
        if analyses:
            write_sensitivity(analyses, out_dir.path("sensitivity.csv"))
    final = Final(recipe=built.recipe, ranges=None, ranges_file=None)
    search = lock_file = None
    if policy.search is not None:
        search, final, lock_file = _search_given(policy, loaded, given, built.scheme, main_run, float_model,
                                                 analyses, final, work, out_dir, stages, console)
    summary = {"file": str(given_file.path), "sha256": given_file.sha256, **given.summary()}
    return _results(policy, loaded, built, m, given.qmap, kinds, main_run, None, analyses, None, search,
                    final, lock_file, GraphIndex(float_model).outline(), given=summary)


def _search_given(policy: Policy, loaded: Loaded, given, scheme: str, main_run: SchemeRun,
                  float_model: onnx.ModelProto, analyses: dict | None, final: Final, work: Path, out_dir: OutputDir,
                  stages: Stages, console: Console) -> tuple[dict | None, Final, str | None]:
    """The search on a given QDQ model (a QOperator model: its equivalent QDQ model): its candidates are edits to
    it, starting from its own grids; a chosen fix becomes the run's model and is locked as the given model's hash
    plus the edits."""
    if given.editable is None:
        why = given.notes[0] if given.format == "qoperator" else f"this quantized model is {given.format}: its " \
            "activations get their scale at run time, with no pairs to edit"
        raise QcheckError(policy.problem_at(
            ("search",), f"the search edits a given model's QuantizeLinear/DequantizeLinear pairs; {why}",
            hint="remove `search:`, or give the model in QDQ format (e.g. ONNX Runtime's quantize_static with "
                 "quant_format=QDQ)"))
    from qcheck.search.stage import given_candidate_findings, write_policy_lock

    built_recipe = final.recipe
    base = given_base_recipe(built_recipe, given.editable, float_model)
    start = Final(recipe=base, ranges=Ranges(GIVEN_METHOD, given.grid_ranges(), 0), ranges_file=None)

    def build_with(ranges: Ranges, recipe: Recipe, path: Path) -> Path:
        return build_given(given.editable, float_model, base, ranges, recipe, path)

    search = _search(policy, loaded, main_run, float_model, analyses, start, work, out_dir, stages, console,
                     build_with=build_with,
                     findings_of=given_candidate_findings(policy, loaded.rules, float_model, loaded.evaluation, scheme))
    if start.model == QUANTIZED_MODEL_NAME:  # nothing chosen: the run's model is the given model
        return search, Final(recipe=built_recipe, ranges=None, ranges_file=None), None
    lock_file = write_policy_lock(
        policy, prepared=loaded.prepared, shapes=loaded.shapes, calib=loaded.calibration,
        ranges=start.ranges if start.ranges.method != GIVEN_METHOD else None,
        ranges_file=start.ranges_file, recipe=start.recipe, model_file=start.model, out_dir=out_dir,
        environment=environment(), search=search,
        given={"path": str(loaded.given.path), "sha256": loaded.given.sha256, "base_recipe": base.to_dict()})
    return search, start, lock_file


def _given_emulation(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> SwitchableModel:
    """The switchable emulation model of a given QDQ model: its own scales, folded activations put back."""
    model = onnx.ModelProto()
    model.CopyFrom(qmodel)
    unfold_activations(model, float_model)
    return build_switchable(model, float_model, read_given(model, float_model).qmap)


def _calibrate(policy: Policy, loaded: Loaded, out_dir: OutputDir, stages: Stages, console: Console) -> Ranges | None:
    """Calibrated ranges when some scheme the run builds needs them and there is calibration data."""
    if loaded.calibration is None or not any(s in CALIBRATED for s in [policy.quantization.scheme] + policy.compare):
        return None
    with stages.stage("calibrate", console):
        ranges = calibrate(loaded.prepared.path, loaded.calibration, policy.quantization,
                           progress=lambda i, n: console.progress("calibrate", i, n), source=loaded.prepared.source,
                           memory_mb=policy.analyses.memory_mb)
        check_ranges_finite(loaded.prepared.path, ranges.ranges, loaded.calibration)
        ranges.save(out_dir.path("ranges.json"))
    return ranges


def _analyses(policy: Policy, loaded: Loaded, built, float_model: onnx.ModelProto, ranges: Ranges | None,
              rows: list[dict], stages: Stages, console: Console,
              emulation: Callable[[], SwitchableModel] | None = None) -> dict | None:
    """`emulation`: builds the emulation model of a given quantized model (else it is built from `ranges`)."""
    if not (policy.analyses.any and built.has_qdq):  # the emulation model switches Q/DQ pairs: none in dynamic/float16
        return None
    with stages.stage("analyses", console):
        ranked_by = policy.analyses.metric  # a task metric scores every configuration; others come free
        analyses = run_analyses(policy.analyses, loaded.prepared.path, float_model, ranges, built.recipe,
                                loaded.evaluation, policy.metrics, progress=console.progress,
                                make_tasks=lambda: [t for t in build_tasks(policy, loaded.prepared.outputs)
                                                    if t.name == ranked_by],
                                emulation=emulation() if emulation else None)
        attach_node_statistics(rows, node_statistics(analyses))
    return analyses


def _search(policy: Policy, loaded: Loaded, main_run: SchemeRun, float_model: onnx.ModelProto, analyses: dict | None,
            final: Final, work: Path, out_dir: OutputDir, stages: Stages, console: Console, build_with=None,
            findings_of=None) -> dict | None:
    """The fallback search (policy `search:`, see qcheck/search/): may replace `final` and the verdict.
    `build_with`, `findings_of`: how a given model's candidates are built and measured (`_search_given`)."""
    if policy.search is None or final.ranges is None:  # the search varies Q/DQ recipes
        return None
    from qcheck.search.stage import search_stage

    ranges = final.ranges
    with stages.stage("search", console):
        search, chosen_verdict, model_file, chosen, chosen_ranges = search_stage(
            policy, prepared=loaded.prepared, float_model=float_model, ranges=ranges, calib=loaded.calibration,
            evaluation=loaded.evaluation, recipe=final.recipe, rows=main_run.rows,
            findings=[f.to_dict() for f in main_run.findings], finding_counts=main_run.counts, rules=loaded.rules,
            work=work, out_dir=out_dir, log=console.log, build_with=build_with, given_findings_of=findings_of,
            sensitivity=[n["node"] for n in (analyses or {}).get("sensitivity", {}).get("nodes", [])])
        if chosen_verdict is not None:
            search["baseline_verdict"], main_run.verdict = main_run.verdict, chosen_verdict
            final.recipe, final.ranges, final.model = chosen, chosen_ranges, model_file
            if chosen_ranges.method != ranges.method:
                final.ranges_file = f"ranges.{chosen_ranges.method}.json"
                chosen_ranges.save(out_dir.path(final.ranges_file))
        elif search["status"] == "failed":
            main_run.verdict["search"] = {"status": "failed", "recommendation": search["recommendation"]}
        if search.get("finding_effects"):  # findings whose remedy recovers most, when tried, first
            main_run.findings = by_recovery(main_run.findings, search["finding_effects"])
    return search


def _lock(policy: Policy, loaded: Loaded, final: Final, search: dict | None, out_dir: OutputDir) -> str | None:
    if final.ranges is None:  # dynamic and float16 have no ranges to lock
        return None
    from qcheck.search.stage import write_policy_lock

    return write_policy_lock(policy, prepared=loaded.prepared, shapes=loaded.shapes, calib=loaded.calibration,
                             ranges=final.ranges, ranges_file=final.ranges_file, recipe=final.recipe,
                             model_file=final.model, out_dir=out_dir, environment=environment(), search=search)


def _results(policy: Policy, loaded: Loaded, built, m, qmap, kinds: dict, main_run: SchemeRun, ranges: Ranges | None,
             analyses: dict | None, comparison: dict | None, search: dict | None, final: Final,
             lock_file: str | None, graph: list[dict], given: dict | None = None) -> Results:
    prepared, calib, evaluation = loaded.prepared, loaded.calibration, loaded.evaluation
    recipe = built.recipe
    quantized, in_float = node_split(built, qmap)  # (runs quantized, computes in float)
    return Results(
        schema_version=SCHEMA_VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        title=policy.report.title or f"qcheck: {policy.model.path.stem}",
        policy=PolicyRef(path=str(policy.path), sha256=file_sha256(policy.path), document=policy.raw),
        verdict=main_run.verdict,
        model=ModelInfo(
            name=policy.model.path.name, source=str(prepared.source), sha256=prepared.sha256, opset=prepared.opset,
            original_opset=prepared.original_opset, nodes=prepared.node_count, op_counts=prepared.op_counts,
            preprocess=prepared.preprocess, notes=prepared.notes,
            inputs=[ModelInput(name=i.name, shape=i.shape, dtype=i.dtype) for i in prepared.inputs],
            outputs=prepared.outputs, size_bytes=prepared.source.stat().st_size),
        environment=environment(),
        data=DataInfo(calibration=calib.describe() if calib is not None else None,
                      evaluation={**evaluation.describe(), "same_as_calibration": evaluation is calib},
                      preprocess=policy.raw.get("data", {}).get("preprocess")),
        target=policy.target.to_dict(),
        quantization=QuantizationInfo(
            scheme=built.scheme, recipe=recipe.to_dict(), recipe_key=recipe.key(),
            ranges_file="ranges.json" if ranges else None, ranges_sha256=ranges.sha256() if ranges else None,
            calibration_samples=ranges.samples if ranges else 0, quantized_model=QUANTIZED_MODEL_NAME,
            size_bytes=size_bytes(built.path), quantized_tensors=kinds,
            quantized_nodes=len(quantized) if qmap else None, float_nodes=in_float, io=built.io,
            io_params=built.io_params, float_ops=built.float_ops, notes=built.notes,
            build_seconds=round(built.build_seconds, 3)),
        compare=comparison,
        model_metrics=ModelMetrics(aggregate=main_run.aggregate, outputs=m.outputs, user=m.user_metrics, tasks=m.tasks),
        model_statistics=main_run.model_statistics,
        measure=MeasureInfo(modes=policy.measure.modes, samples=m.samples, notes=m.notes,
                            not_computed=dict(m.not_computed)),
        tensors=main_run.rows,
        layer_metrics=[LayerMetricInfo(name=name, expr=spec.expression.text if spec.expression is not None else None,
                                       function=spec.function, over=spec.over, mode=spec.mode, chart=spec.chart,
                                       seconds=round(m.layer_metric_seconds.get(name, 0.0), 4))
                       for name, spec in policy.layer_metrics.items()],
        graph=[GraphNode(**n) for n in graph],
        analyses=analyses,
        findings=[f.to_dict() for f in main_run.findings],
        finding_counts=main_run.counts,
        rules=[r.doc() for r in loaded.rules],
        search=search,
        lock=LockInfo(file=lock_file, quantized_model=final.model, recipe=final.recipe.to_dict(),
                      recipe_key=final.recipe.key(), ranges_file=final.ranges_file),
        given=given,
    )


__all__ = ["run", "Console", "Problem"]
