"""Compare mode: every scheme built and measured on the same data, one table, one recommendation.

`recommend` follows the usual post-training decision tree through the target profile:

- a scheme the target cannot run is never recommended;
- an integer-only target (no float fallback: NPU, MCU, Edge TPU) only lists
  integer schemes, int8-only first, in its profile;
- otherwise the target's `prefer:` order encodes the rest of the tree: on a
  CPU full integer (int8) first, then dynamic range (no calibration data
  needed), then 16x8 when 8-bit activations lose too much, then float16; on a
  GPU float16 first;
- among those, the first scheme that was built and meets every `require:`
  line wins. Without requirements, the first one that was built.

Schemes that need calibration data are not built without it, so the tree's
"no representative data" branch falls out of the same loop.
"""

from __future__ import annotations

from qcheck.policy.schemes import DESCRIPTIONS, SCHEMES
from qcheck.policy.targets import TargetProfile

# The order for schemes a profile does not rank: smaller and faster first, then more accurate.
DEFAULT_ORDER = ("int8-only", "int8", "dynamic", "a16w8", "float16")


def preference(target: TargetProfile) -> list[str]:
    """Every scheme the target can run, best first."""
    runnable = [s for s in SCHEMES if target.can_run(s)]
    ranked = [s for s in target.prefer if s in runnable]
    return ranked + [s for s in DEFAULT_ORDER if s in runnable and s not in ranked]


def row_for(scheme: str, run, size: int, float_size: int, latency: dict | None, target: TargetProfile) -> dict:
    """One table row from a scheme's run (scheme_run.SchemeRun)."""
    v = run.verdict
    return {
        "scheme": scheme, "description": DESCRIPTIONS[scheme], "built": True, "error": None,
        "model": run.built.path.name, "io": run.built.io,
        "size_bytes": size, "size_ratio": size / float_size if float_size else None,
        "build_seconds": round(run.built.build_seconds, 3), "latency": latency,
        "metrics": run.aggregate, "user_metrics": {k: m["value"] for k, m in run.measurement.user_metrics.items()},
        "verdict": v["status"], "requirements_hold": None if v["status"] == "no-requirements" else v["status"] == "pass",
        "failed_requirements": [q["text"] for q in v["requirements"] if not q["holds"]],
        "finding_counts": run.counts, "float_ops": run.built.float_ops, "notes": run.built.notes,
        "target_can_run": target.can_run(scheme),
    }


def failed_row(scheme: str, message: str, target: TargetProfile) -> dict:
    return {"scheme": scheme, "description": DESCRIPTIONS[scheme], "built": False, "error": message,
            "model": None, "io": None, "size_bytes": None, "size_ratio": None, "build_seconds": None, "latency": None,
            "metrics": {}, "user_metrics": {}, "verdict": None, "requirements_hold": None, "failed_requirements": [],
            "finding_counts": {}, "float_ops": [], "notes": [], "target_can_run": target.can_run(scheme)}


def reference_row(size: int, latency: dict | None) -> dict:
    return {"scheme": "float32", "description": DESCRIPTIONS["float32"], "size_bytes": size, "size_ratio": 1.0,
            "latency": latency}


def recommend(rows: list[dict], target: TargetProfile) -> dict:
    """The recommended scheme (or None) and one sentence saying why."""
    by_scheme = {r["scheme"]: r for r in rows}
    order = preference(target)
    considered = [s for s in order if s in by_scheme]
    if not considered:
        return {"scheme": None, "order": order,
                "reason": f"None of the compared schemes ({', '.join(by_scheme)}) runs on target {target.name}, "
                          f"which runs {', '.join(target.schemes) or 'nothing'}."}
    skipped = []
    for s in considered:
        r = by_scheme[s]
        if not r["built"]:
            skipped.append(f"{s} could not be built")
            continue
        if r["requirements_hold"] is False:
            skipped.append(f"{s} fails {r['failed_requirements'][0]}")
            continue
        return {"scheme": s, "order": order, "reason": _reason(s, r, target, skipped)}
    return {"scheme": None, "order": order,
            "reason": f"No scheme target {target.name} can run meets the requirements: {'; '.join(skipped)}."}


def _reason(s: str, r: dict, target: TargetProfile, skipped: list[str]) -> str:
    kind = ("integer-only" if target.integer_only else "float-capable")
    why = ("meets every requirement" if r["requirements_hold"] else "was built (the policy has no requirements)")
    size = f", at {r['size_ratio']:.0%} of float32's size" if r.get("size_ratio") else ""
    rest = f" ({'; '.join(skipped)})" if skipped else ""
    return (f"{s} is the first scheme in the {kind} target {target.name}'s order "
            f"({' > '.join(preference(target))}) that it can run and that {why}{size}{rest}.")


def compare_schemes(schemes: list[str], policy, float_path, float_model, ranges, evaluation, rules, folder,
                    done: dict | None = None, log=lambda msg: None) -> dict:
    """Build, measure and judge every scheme in `schemes`; the table and the recommendation as plain data.

    `done` maps a scheme already run (the main run's) to its SchemeRun, so it is not built twice.
    Models are written to `folder/<scheme>.onnx`. A scheme that cannot be built (int8-only with float ops,
    a calibrated scheme without calibration data) is a row with its error, not a failed run.
    """
    from qcheck.errors import QcheckError
    from qcheck.measure.latency import RUNS, WARMUP, measure_latency, quantize_feed
    from qcheck.quantize.schemes import size_bytes
    from qcheck.rules.scheme_run import run_scheme

    target = policy.target
    done = done or {}
    feed = evaluation[0]
    float_size = size_bytes(float_path)
    log("compare: float32 reference latency ...")
    reference = reference_row(float_size, measure_latency(float_path, feed, what="float model"))
    rows = []
    for scheme in schemes:
        log(f"compare: {scheme} ...")
        try:
            run = done.get(scheme) or run_scheme(scheme, policy, float_path, float_model, folder / f"{scheme}.onnx",
                                                 ranges, evaluation, rules)
        except QcheckError as exc:
            rows.append(failed_row(scheme, "; ".join(p.message for p in exc.problems), target))
            continue
        latency = measure_latency(run.built.path, quantize_feed(feed, run.built.io_params), what=f"{scheme} model")
        rows.append(row_for(scheme, run, size_bytes(run.built.path), float_size, latency, target))
    user_metrics = list(policy.generic_metrics)  # task metrics enter through the requirements column
    return {"schemes": rows, "reference": reference, "recommendation": recommend(rows, target),
            "target": target.name, "latency_runs": RUNS, "latency_warmup": WARMUP, "user_metrics": user_metrics,
            "requirements": [r.text for r in policy.require], "samples": len(evaluation)}


def summary_lines(c: dict) -> list[str]:
    """The comparison as console lines (the CLI's summary)."""
    lines = [f"schemes compared (latency: median of {c['latency_runs']} runs here):"]
    for s in c["schemes"]:
        if not s["built"]:
            lines.append(f"  {s['scheme']:<10} not built: {s['error'][:100]}")
            continue
        cos = s["metrics"].get("cosine")
        holds = {None: "no requirements", True: "requirements hold", False: "requirements FAIL"}[s["requirements_hold"]]
        lines.append(f"  {s['scheme']:<10} {s['size_ratio']:.2f}x size, {s['latency']['median_ms']:.3g} ms, "
                     f"cosine {cos:.6f}, {holds}{'' if s['target_can_run'] else ', target cannot run it'}"
                     if cos is not None else f"  {s['scheme']:<10} {holds}")
    rec = c["recommendation"]
    lines.append(f"recommended for {c['target']}: {rec['scheme'] or 'none'} — {rec['reason']}")
    return lines
