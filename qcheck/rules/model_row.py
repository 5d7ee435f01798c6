"""The model-scope row of statistics: one row per run, for model-scope rules.

Tensor rules read one row per tensor (`catalog.TENSOR_STATISTICS`); rules of
scope `model` read this single row instead: how much of the model stays in
float, whether the policy's requirements hold, the worst output cosine, what
the target hardware allows. It is plain data, built from what the run
already measured, so it costs nothing to compute.
"""

from __future__ import annotations

from typing import Any

from qcheck.policy.targets import REMEDY_COST_KEY

MODEL_STATISTICS: dict[str, str] = {
    "target": "the policy's target hardware (cpu, gpu, npu, mcu, edgetpu)",
    "target_float_fallback": "true when the target can run nodes left in float next to integer ones",
    "target_int16": "true when the target runs int16 activations",
    "quantized_nodes": "nodes that run quantized",
    "float_nodes": "compute nodes left in float (excluded by the recipe or not quantizable)",
    "float_fraction": "float_nodes / (float_nodes + quantized_nodes)",
    "requirements_met": "true when the policy's `require:` lines hold (judged before model-scope rules)",
    "requirements_failed": "how many `require:` lines fail",
    "worst_cosine": "cosine to the float model of the worst output",
    "worst_sqnr": "SQNR in dB of the worst output",
    "flagged_nodes": "quantized nodes with at least one warning or error finding from tensor, node or output rules",
    "flagged_fraction": "flagged_nodes / quantized_nodes",
}

def _profile(target: Any):
    """A `targets.TargetProfile` for a profile, a built-in target name or None (a CPU); None if unknown."""
    from qcheck.policy.targets import builtin_profile

    if hasattr(target, "float_fallback"):
        return target
    try:
        return builtin_profile(str(target or "cpu"))
    except KeyError:
        return None


def target_name(target: Any) -> str:
    return getattr(target, "name", None) or (str(target) if target else "cpu")


def target_allows(target: Any, capability: str) -> bool:
    """Whether a target (a `TargetProfile`, a built-in target name, or None for a CPU) has a capability
    ("float_fallback" or "int16"). An unknown name is not second-guessed: the policy checks names."""
    profile = _profile(target)
    return True if profile is None else bool(getattr(profile, capability, True))


def remedies_for(remedies: list[str], target: Any) -> list[str]:
    """A rule's remedies minus those the target cannot use (keep_float on an integer-only NPU ...)."""
    profile = _profile(target)
    if profile is None:
        return list(remedies)
    return [r for r in remedies if r not in REMEDY_COST_KEY or profile.allows(REMEDY_COST_KEY[r])]


def model_row(target: Any, quantized_nodes: list[str], float_nodes: list[str], verdict: dict,
              aggregate: dict, findings: list[Any]) -> dict[str, Any]:
    """The statistics of MODEL_STATISTICS for one run.

    `findings` are the tensor/node/output-scope findings (dicts or `rules.Finding`s);
    `verdict` is `requirements.judge`'s result on the model metrics and those findings.
    """
    flagged = set()
    quantized = set(quantized_nodes)
    for f in findings:
        f = f if isinstance(f, dict) else f.to_dict()
        if f.get("severity") in ("error", "warning") and f.get("node") in quantized:
            flagged.add(f["node"])
    total = len(quantized_nodes) + len(float_nodes)
    status = verdict.get("status")
    return {
        "target": target_name(target),
        "target_float_fallback": target_allows(target, "float_fallback"),
        "target_int16": target_allows(target, "int16"),
        "quantized_nodes": len(quantized_nodes),
        "float_nodes": len(float_nodes),
        "float_fraction": len(float_nodes) / total if total else 0.0,
        "requirements_met": None if status == "no-requirements" else status == "pass",
        "requirements_failed": verdict.get("failed", 0),
        "worst_cosine": aggregate.get("cosine"),
        "worst_sqnr": aggregate.get("sqnr"),
        "flagged_nodes": len(flagged),
        "flagged_fraction": len(flagged) / len(quantized_nodes) if quantized_nodes else 0.0,
    }
