"""What each task metric accepts in the policy and which values it gives (no numpy here).

A task metric is a `metrics:` entry with a `task:` key:

    text_iou: {task: segmentation, output: sigmoid_0.tmp_0, threshold: 0.3}

Its values are usable in `require:` as `<name>.<value>` (e.g. `ocr.cer`), and
the bare `<name>` is its primary value (the first one listed below).
"""

from __future__ import annotations

COMMON = ("task", "output", "slice")

# task -> (accepted keys besides COMMON, value names (primary first), value names that need labels)
TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "classification": (("k", "class_axis", "labels", "batch_axis"),
                       ("top1", "topk", "accuracy_float", "accuracy_quant", "accuracy_drop"),
                       ("accuracy_float", "accuracy_quant", "accuracy_drop")),
    "detection": (("axis", "boxes", "scores", "boxes_output", "scores_output", "box_format", "score_threshold",
                   "nms_iou", "match_iou", "max_detections", "batch_axis"),
                  ("f1", "precision", "recall", "score_max_error", "score_mean_error"), ()),
    "ctc": (("blank", "time_axis", "class_axis", "charset", "labels", "batch_axis"),
            ("string_agreement", "step_agreement", "cer", "cer_float", "cer_quant", "accuracy_float",
             "accuracy_quant"),
            ("cer_float", "cer_quant", "accuracy_float", "accuracy_quant")),
    "segmentation": (("threshold", "class_axis", "batch_axis"), ("iou", "pixel_agreement"), ()),
    "regression": (("peak", "batch_axis"), ("max_abs", "mean_abs", "relative", "psnr"), ()),
    "python": (("function", "values", "timeout"), (), ()),
}

# options that name an axis of the output; with `batch_axis`, they count axes on the output as the model
# returns it (measure.tasks.base moves the batch axis first and renumbers them)
AXIS_OPTIONS = ("time_axis", "class_axis", "axis")

# which way each value is better, and its ideal value: policy/metric_names.py (TASK_VALUES)


def value_names(task: str, options: dict) -> tuple[str, ...]:
    if task == "python":
        return tuple(options.get("values") or ("value",))
    return TASKS[task][1]


def require_names(name: str, task: str, options: dict) -> list[str]:
    """Names a `require:` line may use for this metric: `name` (primary value) and `name.<value>`."""
    return [name] + [f"{name}.{v}" for v in value_names(task, options)]


def check_options(name: str, spec: dict) -> list[tuple[tuple, str, str | None]]:
    """Problems the schema cannot see: (policy keys, message, hint) for one task metric."""
    task = spec["task"]
    own = TASKS[task][0]
    allowed = set(COMMON) | set(own)
    out = []
    for key in spec:
        if key not in allowed:
            out.append((("metrics", name, key), f"metric '{name}': '{key}' does not apply to task {task}",
                        f"task {task} takes: {', '.join(sorted(allowed - {'task'}))}"))
    if task == "python":
        if "function" not in spec:
            out.append((("metrics", name), f"metric '{name}': task python needs `function: module:function`", None))
        for key in ("output", "slice"):
            if key in spec:
                out.append((("metrics", name, key), f"metric '{name}': a python metric receives every output; "
                            f"'{key}' does not apply", None))
    elif task == "detection":
        single = "output" in spec
        separate = "boxes_output" in spec or "scores_output" in spec
        if single == separate or (separate and not ("boxes_output" in spec and "scores_output" in spec)):
            out.append((("metrics", name), f"metric '{name}': detection needs either `output` (boxes and scores in one "
                        f"output) or both `boxes_output` and `scores_output`", None))
    elif "output" not in spec:
        out.append((("metrics", name), f"metric '{name}': task {task} needs `output`", None))
    if task == "segmentation" and "threshold" in spec and "class_axis" in spec:
        out.append((("metrics", name), f"metric '{name}': give `threshold` (binary maps) or `class_axis` "
                    "(argmax maps), not both", None))
    if task == "python" and spec.get("values") and len(set(spec["values"])) != len(spec["values"]):
        out.append((("metrics", name, "values"), f"metric '{name}': the names in `values` must differ", None))
    return out


def outputs_used(spec: dict) -> list[tuple[str, str]]:
    """(policy key, output name) pairs a task metric reads."""
    return [(k, spec[k]) for k in ("output", "boxes_output", "scores_output") if spec.get(k)]
