"""The deep analyses (`analyses:` in the policy), run after measurement on one switchable model.

Order matters: sensitivity ranks the nodes; the curves leave the top-k of that
ranking float and collect distributions for the worst nodes; confirmation
builds real quantized models for the configurations the report recommends.
Results are plain data (`results["analyses"]`), plus per-node statistics that
rules can name (`node_statistics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import onnx

from qcheck.analyses.confirm import confirm
from qcheck.analyses.curves import MAX_VALUES, error_curves
from qcheck.analyses.sensitivity import MAX_WORKERS, Config, ConfigRunner, node_sensitivity
from qcheck.analyses.switchable import SwitchableModel, build_switchable
from qcheck.compute.shards import open_shards, retry_note
from qcheck.data.readers import DataSet
from qcheck.errors import first_line
from qcheck.model.runtime import ort_errors, usable_cores
from qcheck.policy.spec import AnalysesSpec, MetricSpec
from qcheck.quantize.calibrate import Ranges, Recipe, build_quantized
from qcheck.quantize.qdq import read_qdq
from qcheck.scratch import temp_folder

MAX_BATCH = 8  # samples per run of the emulation model, when the model takes a batch
# Statistics the analyses add to every tensor row of the node they belong to (see catalog.py).
NODE_STATISTICS = ("sensitivity_rank", "sensitivity_cosine", "weight_only_cosine", "activation_only_cosine",
                   "recovered_cosine")


def build_emulation(float_path: Path, float_model: onnx.ModelProto, ranges: Ranges, recipe: Recipe) -> SwitchableModel:
    with temp_folder("emulation") as tmp:
        path = build_quantized(float_path, ranges, recipe, Path(tmp) / "emulation.onnx", keep_removable_activations=True)
        qdq = onnx.load(str(path))
    return build_switchable(qdq, float_model, read_qdq(qdq, float_model))


def run_analyses(spec: AnalysesSpec, float_path: Path, float_model: onnx.ModelProto, ranges: Ranges, recipe: Recipe,
                 data: DataSet, metrics: dict[str, MetricSpec],
                 progress: Callable[[str, int, int], None] | None = None,
                 make_tasks: Callable[[], list] | None = None, emulation: SwitchableModel | None = None) -> dict:
    """`metrics`: the policy's metrics; `make_tasks`: fresh task-metric accumulators every configuration is
    scored with (the pipeline gives the one `spec.metric` names, when it is a task metric).
    `emulation`: a switchable model built from a given quantized model (its own scales; `ranges` then are its
    grids); confirmation, which builds real models from `recipe` and calibrated ranges, is skipped for it.

    Batches: `ConfigRunner` probes the full emulation model with every switch on; a run later in the analyses
    (a suffix copy, switches off) can still fail in ONNX Runtime on a batch only. Seen on PP-OCR's classifier
    given as ORT's QDQ model before its Constant nodes were made initializers: "Shape mismatch attempting to
    re-use buffer. {1,2,1,1} != {4,2,1,1}" in the Identity of a switch's off branch, on an Add broadcasting a
    Reshape of a constant bias [1,C,1,1] over the batch. Then everything runs again one sample at a time."""
    if spec.metric == "auto":  # a policy's loader resolves auto to the required metric; unresolved: cosine
        spec = replace(spec, metric="cosine")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    sw = emulation or build_emulation(float_path, float_model, ranges, recipe)
    batches: list[int] = []
    with open_shards(spec.executor, threads=min(MAX_WORKERS, usable_cores())) as shards:
        args = (spec, sw, float_path, float_model, ranges, recipe, data, metrics, progress, make_tasks,
                emulation is not None, shards, lap)
        try:
            out = _run(*args, max_batch=MAX_BATCH, batches=batches)
        except ort_errors() as exc:
            if not batches or batches[0] < 2:
                raise
            out = _run(*args, max_batch=1, batches=batches)
            out["notes"].insert(0, f"samples ran one at a time: ONNX Runtime failed on a batch of {batches[0]} "
                                   f"inside the emulation model ({first_line(exc)[:300]}); the results are the same, "
                                   "only slower")
    out["timings"] = timings
    return out


def _run(spec: AnalysesSpec, sw: SwitchableModel, float_path: Path, float_model: onnx.ModelProto, ranges: Ranges,
         recipe: Recipe, data: DataSet, metrics: dict[str, MetricSpec], progress, make_tasks, given: bool, shards,
         lap: Callable[[str], None], max_batch: int, batches: list[int]) -> dict:
    """The analyses with at most `max_batch` samples per run; the batch chosen is appended to `batches`."""
    samples = list(range(min(spec.samples, len(data))))
    runner = ConfigRunner(sw, data, samples, metrics, max_batch=max_batch,
                          activation_budget=spec.memory_mb << 20, make_tasks=make_tasks, shards=shards,
                          shards_per_group=spec.shards)
    batches.append(runner.batch)
    lap("build")
    out: dict = {"samples": len(samples), "batch": runner.batch, "switches": len(sw.switches), "nodes": len(sw.nodes),
                 "metric": spec.metric,
                 "method": "switchable emulation model, specialized per group of configurations (qcheck.analyses.suffix)"}

    ranking: list[str] = []
    if spec.sensitivity:
        out["sensitivity"] = node_sensitivity(runner, spec.metric, spec.detail, progress=progress)
        ranking = [row["node"] for row in out["sensitivity"]["nodes"]]
        lap("sensitivity")

    configs = [Config("all quantized", sw.mask(default=True)),
               Config("weights only", sw.mask(on=[k for k, kind in enumerate(sw.kinds) if kind != "activation"])),
               Config("activations only", sw.mask(on=[k for k, kind in enumerate(sw.kinds) if kind == "activation"]))]
    partial = [Config(f"top-{k} float", sw.keep_float(ranking[:k])) for k in range(1, min(spec.top_k, len(ranking)) + 1)]
    if spec.curves or spec.distributions:
        focus = ranking[:spec.focus_nodes] if spec.distributions else []
        curve_configs = configs + partial if spec.curves else configs[:1]
        result = error_curves(sw, float_model, data, samples, curve_configs, focus, ranges.ranges,
                              progress=lambda i, n: progress and progress("curves", i, n))
        if spec.curves:
            out["curves"] = {"configurations": [c["label"] for c in result["curves"]], "curves": result["curves"],
                             "outputs": result["outputs"]}
        if spec.distributions:
            out["distributions"] = result["distributions"]
            sampled = [d for d in result["distributions"] if d["values_used"] < d["values_total"]]
            if sampled:
                runner.notes.append(f"the histograms of {len(sampled)} node(s) are drawn from a strided subsample of "
                                    f"their values (at most {MAX_VALUES:,} per tensor, e.g. "
                                    f"{sampled[0]['values_used']:,} of {sampled[0]['values_total']:,}); every other "
                                    "statistic reads every value")
        lap("curves")

    if spec.confirm and not given:
        emulated = runner.evaluate([configs[0]] + partial)
        plans = [("all quantized", [], emulated[0])] + [(c.label, ranking[:k + 1], emulated[k + 1])
                                                        for k, c in enumerate(partial)]
        out["confirm"] = {"tolerance": spec.tolerance,
                          "rows": confirm(float_path, float_model, ranges, recipe, data, samples, plans,
                                          spec.metric, metrics, spec.tolerance, make_tasks)}
        lap("confirm")
    for part in ("sensitivity", "curves", "distributions", "confirm"):
        out.setdefault(part, None)  # a part the policy turned off is null, not missing
    out["runs"] = runner.runs
    # suffix groups: float runs of the base model, and where the activations at the cuts were kept
    out["float_runs"] = runner.float_runs
    out["activations"] = runner.activations or None
    out["workers"] = runner.workers
    # where the suffix groups' shards ran (threads of this process unless `analyses.executor` says otherwise)
    # split_groups: suffix groups sent in parts, their data beyond analyses.memory_mb
    out["shards"] = {**shards.describe(), "per_group": runner.shards_per_group, "split_groups": runner.split_groups,
                     **{k: round(v, 3) for k, v in runner.shard_time.items()}}
    out["notes"] = runner.notes + retry_note(shards, "node sensitivity") + ([] if not given or not spec.confirm else [
        "confirmation on real quantized models is skipped: it rebuilds models from calibrated ranges, and this model "
        "was given, not built by qcheck"])
    return out


def node_statistics(analyses: dict) -> dict[str, dict]:
    """Per node: the NODE_STATISTICS values (cosines are the worst over model outputs)."""
    sens = analyses.get("sensitivity")
    if not sens:
        return {}
    stats = {}
    for row in sens["nodes"]:
        views = row["views"]
        stats[row["node"]] = {
            "sensitivity_rank": row["rank"],
            "sensitivity_cosine": views["node"]["cosine"],
            "weight_only_cosine": views["weight"]["cosine"] if "weight" in views else None,
            "activation_only_cosine": views["activation"]["cosine"] if "activation" in views else None,
            "recovered_cosine": (views["reverse"]["cosine"] - sens["all_quantized"]["cosine"]
                                 if "reverse" in views else None),
        }
    return stats


def attach_node_statistics(rows: list[dict], stats: dict[str, dict]) -> None:
    """Add the node statistics to every tensor row whose node they describe (None elsewhere)."""
    for row in rows:
        values = stats.get(row.get("node"), {})
        for key in NODE_STATISTICS:
            row[key] = values.get(key)
