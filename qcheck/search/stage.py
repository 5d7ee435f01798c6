"""The search as a stage of `qcheck run`: search, build the chosen model, judge it, and lock it."""

from __future__ import annotations

from pathlib import Path

from qcheck.compute.shards import open_shards
from qcheck.errors import QcheckError
from qcheck.measure.tasks import build as build_tasks
from qcheck.model.prepare import file_sha256
from qcheck.model.runtime import usable_cores
from qcheck.quantize.calibrate import build_quantized, calibrate
from qcheck.quantize.lock import LOCK_NAME, data_fingerprint, lock_document, write_lock
from qcheck.rules.requirements import judge
from qcheck.search import run_search
from qcheck.search.ranking import candidate_ranking, flagged_nodes, proposed_remedies

FIXED_MODEL_NAME = "model.fixed.onnx"


def names_findings(require) -> bool:
    """Whether a `require:` line reads findings.* (then each candidate is measured per tensor for its own)."""
    return any(n == "findings" or n.startswith("findings.") for q in require for n in q.expression.names)


def judged_on(data) -> str:
    """Which data the candidates are judged on: `evaluation` (held out), or `calibration` when the policy has no
    evaluation data or names the calibration data again."""
    same = data.evaluation is None or (data.calibration is not None and data.evaluation == data.calibration)
    return "calibration" if same else "evaluation"


def candidate_findings(policy, rules, float_model, evaluation):
    """(candidate model, its recipe, its ranges) -> its finding counts: the pipeline's own per-tensor measurement
    (`scheme_run.measure_built`) and rule evaluation (`scheme_run.judge_built`), run on the candidate."""
    from qcheck.policy.schemes import CALIBRATED
    from qcheck.quantize.schemes import BuiltScheme
    from qcheck.rules.engine import needed_statistics
    from qcheck.rules.scheme_run import judge_built, measure_built

    scheme = policy.quantization.scheme if policy.quantization.scheme in CALIBRATED else "int8"
    need = needed_statistics(rules)

    def findings_of(path: Path, recipe, ranges) -> dict:
        # search candidates are QDQ models with float inputs and outputs: the model measured is the model built
        built = BuiltScheme(scheme, path, path, recipe=recipe)
        m, qmap, kinds = measure_built(built, policy, float_model, evaluation, ranges,
                                       tasks=build_tasks(policy, [o.name for o in float_model.graph.output]), need=need)
        return dict(judge_built(built, m, policy, rules, qmap, kinds).counts)

    return findings_of


def given_candidate_findings(policy, rules, float_model, evaluation, scheme: str):
    """`candidate_findings` for edits to a given quantized model: each candidate read (`read_given`) and measured
    as the given model is (`scheme_run.measure_given_built`, the exported-range statistics included)."""
    import onnx

    from qcheck.quantize.given import read_given
    from qcheck.quantize.schemes import BuiltScheme
    from qcheck.rules.engine import needed_statistics
    from qcheck.rules.scheme_run import judge_built, measure_given_built

    need = needed_statistics(rules)

    def findings_of(path: Path, recipe, ranges) -> dict:
        given = read_given(onnx.load(str(path)), float_model)
        m, rows, kinds = measure_given_built(given, policy, float_model, evaluation, need=need,
                                             tasks=build_tasks(policy, [o.name for o in float_model.graph.output]))
        built = BuiltScheme(scheme, path, path, recipe=recipe)
        return dict(judge_built(built, m, policy, rules, given.qmap, kinds, rows=rows).counts)

    return findings_of


def held_out_count(policy, n: int) -> int:
    """search.holdout as a number of samples (a fraction is of the evaluation data, rounded); at least one sample
    must be left for the search."""
    h = policy.search.holdout
    count = int(round(h * n)) if 0 < h < 1 else int(h)
    if count >= n:
        raise QcheckError(policy.problem_at(("search", "holdout"), f"search.holdout keeps {count} of the "
                                            f"{n} evaluation sample(s) from the search: none would be left for it",
                                            hint="hold out fewer samples, or add evaluation data"))
    return count


def search_stage(policy, *, prepared, float_model, ranges, calib, evaluation, recipe, rows, findings, finding_counts,
                 sensitivity: list[str] | None = None, rules: list | None = None,
                 work: Path, out_dir, log, build_with=None,
                 given_findings_of=None) -> tuple[dict, dict | None, str, object, object]:
    """Returns (search results, the chosen candidate's verdict or None, model file, recipe, ranges) of the result.
    `build_with(ranges, recipe, path)`: how candidates and the chosen model are built when not by ORT's quantizer
    from the float model (a given quantized model's edits); `given_findings_of`: how such a candidate's findings
    are counted (`given_candidate_findings`)."""
    n_held = held_out_count(policy, len(evaluation))
    searched = range(len(evaluation) - n_held)
    held = range(len(evaluation) - n_held, len(evaluation))
    samples = [evaluation[i] for i in searched]
    labels = [evaluation.samples[i].label for i in range(len(evaluation))]
    findings_of = ((given_findings_of or candidate_findings(policy, rules, float_model, evaluation))
                   if rules is not None and names_findings(policy.require) else None)
    ranking, source = candidate_ranking(rows, findings, sensitivity)
    # candidates known in advance are screened together where the analyses' shards run (analyses.executor)
    with open_shards(policy.analyses.executor, threads=usable_cores()) as shards:
        result, chosen, chosen_ranges = run_search(
            policy.search, float_path=prepared.path, float_model=float_model, ranges=ranges,
            calibrate_with=lambda m: calibrate(prepared.path, calib, policy.quantization, method=m,
                                               source=prepared.source, memory_mb=policy.analyses.memory_mb),
            base=recipe, samples=samples, metrics=policy.metrics, require=policy.require,
            finding_counts=finding_counts, target=policy.target, ranking=ranking, workdir=work, log=log,
            make_tasks=lambda: build_tasks(policy, prepared.outputs),
            labels=labels[:len(samples)], findings_of=findings_of,
            proposed=proposed_remedies(findings), flagged=flagged_nodes(findings),
            reach_of=lambda: calibrate(prepared.path, evaluation, policy.quantization, method="minmax",
                                       memory_mb=policy.analyses.memory_mb),
            held_out=([evaluation[i] for i in held], labels[len(samples):]) if n_held else None,
            build_with=build_with, shards=shards, shards_per_group=policy.analyses.shards,
            memory_mb=policy.analyses.memory_mb)
    result["ranking_source"] = source
    result["judged_on"] = judged_on(policy.data)
    if result["judged_on"] == "calibration":
        result["notes"].append("the candidates were judged on the calibration data (the policy has no separate "
                               "data.evaluation): a fix may only fit the data it was calibrated on; add held-out "
                               "evaluation data to judge it independently")
    if chosen is None or chosen.key() == recipe.key():
        return result, None, "", recipe, ranges
    if build_with is not None:
        build_with(chosen_ranges, chosen, out_dir.path(FIXED_MODEL_NAME))
    else:
        build_quantized(prepared.path, chosen_ranges, chosen, out_dir.path(FIXED_MODEL_NAME), source=prepared.source)
    cand = result["candidates"][result["chosen"]]
    # with held-out samples, the recommended model is judged on them, not on the samples that chose it
    figures = result["holdout"]["chosen"] if result["holdout"] else cand
    env = dict(figures["metrics"])
    env.update({f"findings.{k}": v for k, v in figures.get("finding_counts", finding_counts).items()})
    verdict = judge(policy.require, env)
    verdict["source"] = {"search_candidate": cand["id"], "label": cand["label"], "model": FIXED_MODEL_NAME,
                         "judged_on": _held_out_text(result["holdout"]) if n_held else result["judged_on"]}
    return result, verdict, FIXED_MODEL_NAME, chosen, chosen_ranges


def _held_out_text(holdout: dict) -> str:
    text = f"held-out evaluation data ({holdout['samples']} sample(s) the search never saw"
    if not holdout["independent"]:
        text += (f"; they chose this candidate among {len(holdout['validated'])} passing ones, so this is not an "
                 "independent check")
    return text + ")"


def write_policy_lock(policy, *, prepared, shapes, calib, ranges, ranges_file: str | None, recipe, model_file: str,
                      out_dir, environment: dict, search: dict | None, given: dict | None = None) -> str:
    """`given`: the quantized model the locked model edits (path, sha256, its own recipe); `ranges` None: the
    edits need no calibrated ranges (the given model's own, int16 and rmin/rmax edits are in the recipe)."""
    path = out_dir.path(model_file)
    sha = file_sha256(path)
    doc = lock_document(
        policy_path=policy.path, policy_sha256=file_sha256(policy.path), model_path=policy.model.path,
        model_sha256=prepared.sha256, shapes=shapes, float_sha256=file_sha256(prepared.path),
        calibration_sha256=data_fingerprint(calib) if ranges is not None and calib is not None else None,
        ranges_file=ranges_file, ranges=ranges, recipe=recipe, quantized_file=model_file, quantized_sha256=sha,
        environment=environment, given=given,
        search=None if search is None else {"strategy": search["strategy"], "status": search["status"],
                                            "candidate": search["chosen"]})
    write_lock(doc, out_dir.path(LOCK_NAME))
    return LOCK_NAME
