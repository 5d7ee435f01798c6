"""`qcheck validate policy.yaml`: everything that can be checked without calibrating or quantizing.

The policy (schema, paths, expressions), the model (readable ONNX, loadable
by ONNX Runtime, input and output names against the policy), the rule packs,
and every sample of the data (layout, count, shape, dtype, NaN/Inf). It runs
the same load stage as `qcheck run` (`run.load_stage`), so each problem is
the same message `qcheck run` would give, only sooner.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qcheck.errors import DataError, Problem
from qcheck.policy.loader import load_policy
from qcheck.run.load_stage import load

MAX_SAMPLE_PROBLEMS = 20  # bad samples listed one by one; the rest are counted


def validate(policy_path: Path, progress: Callable[[str, int, int], None] = lambda s, i, n: None) -> dict:
    """Check a policy and its data; returns a summary of what was checked. Raises QcheckError."""
    return validate_policy(load_policy(policy_path), progress)


def validate_policy(policy, progress: Callable[[str, int, int], None] = lambda s, i, n: None) -> dict:
    """`validate` of a loaded policy (a sweep's combination: a policy file with overrides)."""
    loaded = load(policy)
    summary = {"policy": str(policy.path), "model": str(policy.model.path),
               "inputs": [{"name": i.name, "shape": i.shape, "dtype": i.dtype} for i in loaded.inputs],
               "rules": len(loaded.rules), "requirements": [r.text for r in policy.require], "data": {},
               "warnings": []}
    if loaded.given is not None:
        summary["quantized"] = {"path": str(loaded.given.path), "format": loaded.given.format}
    sets = [("calibration", loaded.calibration)]
    if policy.data.evaluation:
        sets.append(("evaluation", loaded.evaluation))
    problems = []
    bad = 0
    for what, data in sets:
        if data is None:  # no calibration data: the scheme needs none (dynamic, float16)
            continue
        for i in range(len(data)):
            try:
                data[i]  # loads and checks shape, dtype and finiteness
            except DataError as exc:  # every bad sample is listed (up to a cap), not only the first
                bad += 1
                if len(problems) < MAX_SAMPLE_PROBLEMS:
                    problems.extend(exc.problems)
            progress(f"check {what} data", i + 1, len(data))
        if what == "calibration" and len(data) < 20:
            summary["warnings"].append(f"only {len(data)} calibration sample(s) in {data.source}; ranges from so few "
                                       f"rarely hold on new inputs (use 100-500)")
        summary["data"][what] = data.describe()
    if problems:
        if bad > MAX_SAMPLE_PROBLEMS:
            problems.append(Problem(f"... and {bad - MAX_SAMPLE_PROBLEMS} more bad sample(s), {bad} in all"))
        raise DataError(problems)
    return summary
