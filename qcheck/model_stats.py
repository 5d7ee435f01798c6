"""The model-scope row of statistics: one row per run, for model-scope rules.

Tensor rules read one row per tensor (`catalog.TENSOR_STATISTICS`); rules of
scope `model` read this single row instead: how much of the model stays in
float, whether the policy's requirements hold, the worst output cosine, what
the target hardware allows. It is plain data, built from what the run
already measured, so it costs nothing to compute.
"""

from __future__ import annotations

from typing import Any

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

# TODO: replace with qcheck.targets (the lead wires this to the real target profiles).
_FALLBACK_TARGETS: dict[str, dict[str, bool]] = {
    "cpu": {"float_fallback": True, "int16": True},
    "gpu": {"float_fallback": True, "int16": True},
    "npu": {"float_fallback": False, "int16": True},
    "mcu": {"float_fallback": False, "int16": False},
    "edgetpu": {"float_fallback": False, "int16": False},
}

# Which target capability each remedy needs; remedies a target cannot use are not proposed.
REMEDY_CAPABILITY: dict[str, str] = {"keep_float": "float_fallback", "int16_activations": "int16"}


def target_allows(target_name: str | None, capability: str) -> bool:
    """Whether a target supports `capability` ("float_fallback" or "int16"). No target: a CPU.

    # TODO: replace with qcheck.targets
    """
    profile = _FALLBACK_TARGETS.get((target_name or "cpu").lower())
    if profile is None:
        return True  # an unknown target is not second-guessed here; the policy schema names the known ones
    return profile.get(capability, True)


def remedies_for(remedies: list[str], target_name: str | None) -> list[str]:
    """A rule's remedies minus those the target cannot use (keep_float on an integer-only NPU ...)."""
    return [r for r in remedies if r not in REMEDY_CAPABILITY or target_allows(target_name, REMEDY_CAPABILITY[r])]


def model_row(target: str | None, quantized_nodes: list[str], float_nodes: list[str], verdict: dict,
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
        "target": target or "cpu",
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
