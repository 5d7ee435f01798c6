"""Task-aware metrics: a detector judged by its detections, an OCR model by its strings.

One module per task kind (classification, detection, ctc, segmentation,
regression, python); `policy.task_options` says what each accepts and gives. `build`
turns the policy's task metrics into accumulators that `measure` feeds with
every evaluation sample's float and quantized outputs; `result()` of each is
plain data for results.json (values, per-sample values, bootstrap intervals,
worst samples).
"""

from __future__ import annotations

from pathlib import Path

from qcheck.errors import QcheckError
from qcheck.measure.tasks.base import TaskMetric, load_labels
from qcheck.measure.tasks.classification import Classification
from qcheck.measure.tasks.ctc import CTC, load_charset
from qcheck.measure.tasks.detection import Detection
from qcheck.measure.tasks.python import DEFAULT_TIMEOUT, PythonMetric, resolve
from qcheck.measure.tasks.regression import Regression
from qcheck.measure.tasks.segmentation import Segmentation
from qcheck.policy.paths import resolve_in
from qcheck.policy.task_options import TASKS, outputs_used


def build(policy, model_outputs: list[str]) -> list[TaskMetric]:
    """Accumulators for the policy's task metrics; problems (missing outputs, files) all at once."""
    problems, metrics = [], []
    for name, spec in policy.metrics.items():
        if spec.task is None:
            continue
        opts = dict(spec.options, task=spec.task)
        for key, out in outputs_used(opts):
            if out not in model_outputs:
                problems.append(policy.problem_at(("metrics", name, key), f"metric '{name}': the model has no output "
                                                  f"named '{out}'; its outputs are: {', '.join(model_outputs)}"))
        for key in ("labels", "charset"):
            if key in opts:
                path = resolve_in(policy.folder, opts[key])
                if not path.is_file():
                    why = ("not found" if not path.exists() else
                           "is a folder" if path.is_dir() else "is not a regular file (a pipe, device or socket)")
                    problems.append(policy.problem_at(("metrics", name, key), f"metric '{name}': {key} file {why}: "
                                                      f"{path}"))
                opts[key] = str(path)
        if problems:
            continue
        try:
            labels = None
            if "labels" in opts and spec.task in ("classification", "ctc"):
                labels = load_labels(Path(opts["labels"]), name,  # resolved above
                                     "int" if spec.task == "classification" else "str")
            if spec.task == "classification":
                metrics.append(Classification(name, opts, labels))
            elif spec.task == "detection":
                metrics.append(Detection(name, opts))
            elif spec.task == "ctc":
                charset = load_charset(Path(opts["charset"]), name) if "charset" in opts else None
                metrics.append(CTC(name, opts, labels, charset))
            elif spec.task == "segmentation":
                metrics.append(Segmentation(name, opts))
            elif spec.task == "regression":
                metrics.append(Regression(name, opts))
            elif spec.task == "python":
                where = policy.problem_at(("metrics", name, "function"), "")
                fn = resolve(opts["function"], policy.folder, where, float(opts.get("timeout", DEFAULT_TIMEOUT)))
                metrics.append(PythonMetric(name, opts, fn, where))
        except QcheckError as exc:
            problems.extend(exc.problems)
    if problems:
        raise QcheckError(problems)
    return metrics


__all__ = ["build", "TASKS"]
