"""`qcheck validate policy.yaml`: everything that can be checked without calibrating or quantizing.

The policy (schema, paths, expressions), the model (readable ONNX, loadable
by ONNX Runtime, input and output names against the policy), the rule packs,
and every sample of the data (layout, count, shape, dtype, NaN/Inf). Each
problem is the same message `qcheck run` would give, only sooner.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qcheck.errors import QcheckError


def validate(policy_path: Path, progress: Callable[[str, int, int], None] = lambda s, i, n: None) -> dict:
    """Check a policy and its data; returns a summary of what was checked. Raises QcheckError."""
    from qcheck.data.readers import open_data
    from qcheck.model.diagnose import check_runtime_loads
    from qcheck.model.prepare import check_not_quantized, graph_inputs, load_onnx
    from qcheck.policy.loader import load_policy
    from qcheck.rules.engine import load_rules
    from qcheck.run.pipeline import _check_policy_inputs, _check_policy_outputs

    policy = load_policy(policy_path)
    if not policy.model.path.exists():
        raise QcheckError(policy.problem_at(("model",), f"model file not found: {policy.model.path}",
                                            hint="`qcheck run` fetches it (model.fetch); run it once, or fetch it "
                                                 "yourself"))
    model = load_onnx(policy.model.path)
    check_not_quantized(model, policy.model.path)
    inputs = graph_inputs(model)
    _check_policy_inputs(policy, inputs)
    _check_policy_outputs(policy, [o.name for o in model.graph.output])
    check_runtime_loads(policy.model.path, model, policy.model.path)
    del model
    for info in inputs:
        if policy.inputs.get(info.name):
            info.shape = list(policy.inputs[info.name])
    rules = load_rules(policy.rules, str(policy.path))
    summary = {"policy": str(policy.path), "model": str(policy.model.path),
               "inputs": [{"name": i.name, "shape": i.shape, "dtype": i.dtype} for i in inputs],
               "rules": len(rules), "requirements": [r.text for r in policy.require], "data": {},
               "warnings": []}
    sets = [("calibration", policy.data.calibration)]
    if policy.data.evaluation:
        sets.append(("evaluation", policy.data.evaluation))
    for what, source in sets:
        data = open_data(source, inputs, policy.data.preprocess)
        for i in range(len(data)):
            data[i]  # loads and checks shape, dtype and finiteness
            progress(f"check {what} data", i + 1, len(data))
        if what == "calibration" and len(data) < 20:
            summary["warnings"].append(f"only {len(data)} calibration sample(s) in {source.path}; ranges from so few "
                                       f"rarely hold on new inputs (use 100-500)")
        summary["data"][what] = data.describe()
    return summary
