"""One scheme, end to end after calibration: build, measure, rules, requirements.

The main run and every row of a comparison go through `run_scheme`, so each
scheme is measured with the same statistics, rules and `require:` lines.
Schemes with Q/DQ pairs (int8, int8-only, a16w8) are measured per tensor by
`measure.measure`; dynamic and float16 by matching tensor names
(`namematch.measure_by_name`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from qcheck.data.readers import DataSet
from qcheck.measure.by_name import measure_by_name
from qcheck.measure.given import add_range_statistics, measure_given
from qcheck.measure.layer_metrics import LayerMetrics
from qcheck.measure.outputs import aggregate_model_metrics
from qcheck.measure.per_tensor import Measurement, measure
from qcheck.policy.spec import Policy
from qcheck.quantize.calibrate import Ranges, Recipe
from qcheck.quantize.given import GivenModel
from qcheck.quantize.qdq import QDQMap, read_qdq
from qcheck.quantize.schemes import BuiltScheme, build_scheme
from qcheck.rules.engine import (
    Rule,
    count_by_severity,
    evaluate,
    evaluate_model,
    needed_statistics,
    sort_findings,
)
from qcheck.rules.model_row import model_row
from qcheck.rules.requirements import judge, requirement_env, task_intervals


@dataclass
class SchemeRun:
    built: BuiltScheme
    measurement: Measurement
    rows: list[dict]
    findings: list
    counts: dict[str, int]
    aggregate: dict
    verdict: dict
    qmap: QDQMap | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    model_statistics: dict = field(default_factory=dict)  # the row model-scope rules read


def node_split(built: BuiltScheme, qmap: QDQMap | None) -> tuple[list[str], list[str]]:
    """(nodes that run quantized, nodes that compute in float): the one definition the summary and rules use.

    A node computes in float when it reads no dequantized input, or when ONNX Runtime has no integer
    kernel for it or the recipe excludes it (`built.float_ops`): a Div or HardSigmoid between a
    DequantizeLinear and a QuantizeLinear still computes in float.
    """
    if qmap is None:
        return [], []
    floats = {f["node"] for f in built.float_ops}
    quantized = [n for n in qmap.quantized_nodes if n not in floats]
    return quantized, qmap.float_nodes + [n for n in qmap.quantized_nodes if n in floats]


def build_for(scheme: str, policy: Policy, float_path: Path, out_path: Path, ranges: Ranges | None) -> BuiltScheme:
    return build_scheme(scheme, float_path, out_path, Recipe.from_policy(policy.quantization), ranges,
                        policy.quantization.io, policy.target.io, source=policy.model.path)


def measure_built(built: BuiltScheme, policy: Policy, float_model: onnx.ModelProto, evaluation: DataSet,
                  ranges: Ranges | None, progress: Callable[[int, int], None] | None = None, tasks: list | None = None,
                  need: set[str] | None = None) -> tuple[Measurement, QDQMap | None, dict[str, int]]:
    """`tasks`: fresh task-metric accumulators (qcheck.tasks.build) for this scheme's measurement;
    `need`: the statistics the rules read (None: all)."""
    kinds: dict[str, int] = {}
    if built.has_qdq:
        qmodel = onnx.load(str(built.measure_path))
        qmap = read_qdq(qmodel, float_model)
        user = LayerMetrics(policy.layer_metrics, policy.folder) if policy.layer_metrics else None
        m = measure(float_model, qmodel, qmap, evaluation, ranges.ranges, policy.metrics, policy.measure.modes,
                    include_weights=policy.measure.weights, progress=progress, tasks=tasks, need=need,
                    layer_metrics=user, memory_mb=policy.analyses.memory_mb)
        for t in qmap.tensors.values():
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
        return m, qmap, kinds
    m = measure_by_name(float_model, onnx.load(str(built.measure_path)), evaluation, policy.generic_metrics,
                        built.scheme, include_weights=policy.measure.weights, progress=progress, tasks=tasks)
    for r in m.tensors:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    return m, None, kinds


def measure_given_built(given: GivenModel, policy: Policy, float_model: onnx.ModelProto, evaluation: DataSet,
                        progress: Callable[[int, int], None] | None = None, tasks: list | None = None,
                        need: set[str] | None = None) -> tuple[Measurement, list[dict], dict[str, int]]:
    """A given quantized model (or a search's edit of one) measured: (measurement, its rows with the exported-range
    statistics the QAT rules read, tensor counts by kind)."""
    m = measure_given(given, given.model, float_model, evaluation, policy.metrics, policy.generic_metrics,
                      policy.measure.modes, include_weights=policy.measure.weights, progress=progress, tasks=tasks,
                      need=need, memory_mb=policy.analyses.memory_mb,
                      layer_metrics=LayerMetrics(policy.layer_metrics, policy.folder) if policy.layer_metrics else None)
    rows = [t.row() for t in m.tensors]
    add_range_statistics(rows, given)
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    return m, rows, kinds


def judge_built(built: BuiltScheme, m: Measurement, policy: Policy, rules: list[Rule],
                qmap: QDQMap | None = None, kinds: dict | None = None, rows: list[dict] | None = None) -> SchemeRun:
    """Rules and requirements on a measured scheme; `rows` when the caller added statistics to them."""
    rows = rows if rows is not None else [t.row() for t in m.tensors]
    findings = evaluate(rules, rows, policy.target, scheme=built.scheme,
                        weights_per_channel=bool(built.recipe is not None and built.recipe.per_channel))
    aggregate = aggregate_model_metrics(m.outputs)
    env = requirement_env(aggregate, m.user_metrics, count_by_severity(findings), m.tasks)
    # model-scope rules (QC111, QC112) read whether the requirements hold on the other findings
    first = judge(policy.require, env, intervals=task_intervals(m.tasks))
    quantized, floats = node_split(built, qmap)
    model_stats = model_row(policy.target, quantized, floats, first, aggregate, findings)
    model_rules = [r for r in rules if r.scope == "model" and (not r.schemes or built.scheme in r.schemes)]
    findings = sort_findings(findings + evaluate_model(model_rules, model_stats, policy.target))
    counts = count_by_severity(findings)
    verdict = judge(policy.require, requirement_env(aggregate, m.user_metrics, counts, m.tasks),
                    intervals=task_intervals(m.tasks))
    return SchemeRun(built, m, rows, findings, counts, aggregate, verdict, qmap, kinds or {}, model_stats)


def run_scheme(scheme: str, policy: Policy, float_path: Path, float_model: onnx.ModelProto, out_path: Path,
               ranges: Ranges | None, evaluation: DataSet, rules: list[Rule],
               progress: Callable[[int, int], None] | None = None) -> SchemeRun:
    from qcheck.measure.tasks import build as build_tasks

    built = build_for(scheme, policy, float_path, out_path, ranges)
    tasks = build_tasks(policy, [o.name for o in float_model.graph.output])
    m, qmap, kinds = measure_built(built, policy, float_model, evaluation, ranges, progress, tasks,
                                   need=needed_statistics(rules))
    return judge_built(built, m, policy, rules, qmap, kinds)
