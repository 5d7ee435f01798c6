"""The load stage, shared by `qcheck run` and `qcheck validate`: policy -> model, inputs, data, rules.

Both commands go through `load`, so a policy that `qcheck validate` accepts
loads the same way in `qcheck run`, and each problem gets the same message
from both. The order is cheapest check first: rule packs, the model file,
the policy's input and output names, the input shapes (from the policy, the
model or the first sample), the first sample of each data set and the task
metrics' files, and last the model in ONNX Runtime (prepared, for a run).

`qcheck run` passes a working folder: the model is prepared there (shapes
fixed, opset upgraded, ORT's pre-processing; see `model.prepare`). `qcheck
validate` passes none: the user's model is only loaded once in ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from qcheck.data.readers import DataSet, open_data
from qcheck.errors import QcheckError
from qcheck.measure.layer_metrics import LayerMetrics
from qcheck.measure.tasks import TaskMetric
from qcheck.measure.tasks import build as build_tasks
from qcheck.model.diagnose import check_runtime_loads
from qcheck.model.fetch import fetch_model
from qcheck.model.prepare import InputInfo, PreparedModel, check_not_quantized, graph_inputs, load_onnx, prepare_model
from qcheck.policy.spec import Policy
from qcheck.report import check_template_dirs
from qcheck.rules.engine import Rule
from qcheck.rules.packs import load_rules
from qcheck.run.load_given import GivenFile, load_given, prepare_given
from qcheck.run.policy_names import check_policy_names


@dataclass
class Loaded:
    """What every later stage starts from."""

    rules: list[Rule]
    inputs: list[InputInfo]  # the model's inputs, with the policy's shapes (dynamic dims the policy leaves stay so)
    shapes: dict[str, list[int]]  # the static shape each input runs with
    outputs: list[str]
    calibration: DataSet | None  # None when the policy names none (dynamic, float16)
    evaluation: DataSet  # the calibration data when the policy names no evaluation data
    tasks: list[TaskMetric]
    prepared: PreparedModel | None = None  # only when loading for a run
    given: GivenFile | None = None  # the policy's `quantized:` model (a run also gets its measured copy)


def load(policy: Policy, work: Path | None = None, log: Callable[[str], None] = lambda msg: None) -> Loaded:
    """Load and check everything a run needs; with `work`, prepare the model there. Raises QcheckError."""
    rules = load_rules(policy.rules, str(policy.path))  # pack and inline-rule errors before any model runs
    check_template_dirs(policy.report.templates)  # a team's templates compile (syntax, names) before anything runs
    model = _model(policy, fetch=work is not None, log=log)
    given = load_given(policy, model, fetch=work is not None, log=log)
    inputs = graph_inputs(model)
    check_policy_inputs(policy, inputs)
    outputs = [o.name for o in model.graph.output]
    check_policy_outputs(policy, outputs)
    check_policy_names(policy, model)
    for info in inputs:  # policy shapes first, so images know their size
        if policy.inputs.get(info.name):
            info.shape = list(policy.inputs[info.name])
    shapes = input_shapes(policy, inputs)
    static = [InputInfo(i.name, list(shapes[i.name]), i.dtype) for i in inputs]
    first = work is not None  # a run checks each set's first sample now; validate reads every sample itself
    calibration = (open_data(policy.data.calibration, static, policy.data.preprocess, check_first=first)
                   if policy.data.calibration else None)
    evaluation = (open_data(policy.data.evaluation, static, policy.data.preprocess, check_first=first)
                  if policy.data.evaluation else calibration)
    tasks = build_tasks(policy, outputs)
    LayerMetrics(policy.layer_metrics, policy.folder)  # python layer metrics are found and imported, or exit 2
    prepared = None
    if work is not None:  # the slow part last: pre-processing a large model takes a while
        prepared = prepare_model(model, policy.model.path, shapes, work, optimize=given is None)
        check_policy_names(policy, onnx.load(str(prepared.path), load_external_data=False), after_preprocessing=True)
        if given is not None:
            prepare_given(given, shapes, work)
    else:
        check_runtime_loads(policy.model.path, model, policy.model.path)
    return Loaded(rules, inputs, shapes, outputs, calibration, evaluation, tasks, prepared, given)


def _model(policy: Policy, fetch: bool, log: Callable[[str], None]) -> onnx.ModelProto:
    """The user's float model, fetched first when the policy says where from (a run does, validate does not)."""
    path = policy.model.path
    if policy.model.fetch and not path.exists():
        if not fetch:
            raise QcheckError(policy.problem_at(("model",), f"model file not found: {path}",
                                                hint="`qcheck run` fetches it (model.fetch); run it once, or fetch it "
                                                     "yourself"))
        fetch_model(policy.model.fetch, path, log=log)
    model = load_onnx(path)
    check_not_quantized(model, path)
    return model


def input_shapes(policy: Policy, inputs: list[InputInfo]) -> dict[str, list[int]]:
    """Static shapes for every input: the policy's, else the model's, else the first sample's."""
    shapes = {}
    first = None
    for info in inputs:
        if info.name in policy.inputs and policy.inputs[info.name]:
            shapes[info.name] = policy.inputs[info.name]
        elif info.is_static:
            shapes[info.name] = list(info.shape)
        else:
            if first is None:  # calibration is optional (dynamic, float16): then the evaluation data
                source = policy.data.calibration or policy.data.evaluation
                first = open_data(source, inputs, policy.data.preprocess)[0]
            shapes[info.name] = list(first[info.name].shape)
    return shapes


def check_policy_inputs(policy: Policy, inputs: list[InputInfo]) -> None:
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


def check_policy_outputs(policy: Policy, outputs: list[str]) -> None:
    problems = [policy.problem_at(("metrics", name, "output"),
                                  f"metric '{name}': the model has no output named '{spec.output}'; its outputs are: "
                                  f"{', '.join(outputs)}")
                for name, spec in policy.generic_metrics.items() if spec.output not in outputs]
    if problems:
        raise QcheckError(problems)
