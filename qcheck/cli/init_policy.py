"""`qcheck init model.onnx`: a commented starter policy written from what the model says about itself.

It reads the model's inputs (names, shapes, dtypes) and outputs, guesses what
kind of model it is, and writes a policy that loads and validates as soon as
the data path points at real data:

- one float 4-D input with 1 or 3 channels (NCHW or NHWC) looks like images:
  the data section gets an `images` preprocess block sized to the input;
- a 2-D output [N, classes] looks like class scores: a top-1 agreement metric
  and requirement;
- anything else gets .npy data and the output cosine requirement.

Everything here is text generation; the model is only read, never run.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from qcheck.errors import Problem, QcheckError
from qcheck.model.prepare import InputInfo, default_opset, graph_inputs, load_onnx
from qcheck.scratch import write_text_whole

IMAGE_SIZE_GUESS = 224  # for images whose height/width the model leaves dynamic


@dataclass
class OutputInfo:
    name: str
    shape: list


@dataclass
class ModelFacts:
    path: Path
    inputs: list[InputInfo]
    outputs: list[OutputInfo]
    opset: int
    nodes: int

    def image_input(self) -> tuple[InputInfo, str] | None:
        """(input, layout) when the model takes one batch of 1- or 3-channel images."""
        if len(self.inputs) != 1:
            return None
        info = self.inputs[0]
        if len(info.shape) != 4 or not info.dtype.startswith("float"):
            return None
        if info.shape[1] in (1, 3):
            return info, "NCHW"
        if info.shape[3] in (1, 3):
            return info, "NHWC"
        return None

    def classifier_outputs(self) -> list[OutputInfo]:
        """Outputs shaped [N, classes] with more than one class: class scores or logits."""
        return [o for o in self.outputs
                if len(o.shape) == 2 and isinstance(o.shape[1], int) and o.shape[1] > 1]


def read_facts(path: Path) -> ModelFacts:
    model = load_onnx(path)
    outputs = []
    for vi in model.graph.output:
        dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                for d in vi.type.tensor_type.shape.dim]
        outputs.append(OutputInfo(vi.name, dims))
    return ModelFacts(path, graph_inputs(model), outputs, default_opset(model), len(model.graph.node))


def _shape_text(shape: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (_c(d) if d else "?") for d in shape) + "]"


def _static_shape(info: InputInfo, image_layout: str | None) -> list[int]:
    """A concrete shape for a possibly dynamic input: batch 1, images IMAGE_SIZE_GUESS square, else 1."""
    out = []
    for axis, d in enumerate(info.shape):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif axis == 0:
            out.append(1)
        elif image_layout and ((image_layout == "NCHW" and axis in (2, 3)) or (image_layout == "NHWC" and axis in (1, 2))):
            out.append(IMAGE_SIZE_GUESS)
        else:
            out.append(1)
    return out


def _q(text: str) -> str:
    """A YAML scalar for a name or path taken from the model: plain when safe, else quoted by the YAML serializer.

    The quoted form escapes line breaks (\\n, and the ones only YAML counts, such as U+2028) and every non-ASCII
    character, so a hostile name can neither end a comment nor start a key. Comments use it too.
    """
    plain = re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./,+ -]*", text) and not text.endswith(" ") and \
        text.lower() not in ("yes", "no", "true", "false", "null", "on", "off", "y", "n")
    if plain:
        return text
    return yaml.safe_dump(text, default_style='"', width=float("inf"), allow_unicode=False).rstrip("\n")


def _c(text: str) -> str:
    """A name inside a comment: as it is when it is printable ASCII (no line break can end the comment), else quoted."""
    return text if text.isascii() and text.isprintable() else _q(text)


def policy_text(facts: ModelFacts, policy_path: Path, data: str | None = None, today: str | None = None) -> str:
    """The starter policy for `facts`, to be written at `policy_path` (paths are made relative to it).

    Long on purpose: it reads top to bottom like the file it writes, one section after another."""
    today = today or _dt.date.today().isoformat()
    folder = policy_path.resolve().parent
    model_rel = os.path.relpath(facts.path.resolve(), folder)
    if model_rel.startswith(os.path.join("..", "..")):  # far away: an absolute path reads better
        model_rel = str(facts.path.resolve())
    image = facts.image_input()
    classifiers = facts.classifier_outputs()
    kind = "image classifier" if image and classifiers else "image model" if image else \
        "classifier" if classifiers else "model"
    L: list[str] = []
    add = L.append
    add(f"# qcheck policy for {_c(facts.path.name)}, written by `qcheck init` on {today}.")
    if kind != "model":  # nothing recognised: no claim to make
        add(f"# It looks like {'an' if kind[0] in 'aeiou' else 'a'} {kind}; the defaults below follow from that.")
    add("# Next: point data.calibration at real samples, adjust the requirements, then")
    add(f"#   qcheck validate {_c(policy_path.name)}    (checks policy and data, runs nothing)")
    add(f"#   qcheck run {_c(policy_path.name)}")
    add("# Every key is described in docs/policy.md.")
    add("")
    add(f"model: {_q(model_rel)}    # {facts.nodes} nodes, opset {facts.opset}")
    add("")
    add("# The model's inputs, as the file declares them:")
    for info in facts.inputs:
        add(f"#   {_c(info.name)}: {info.dtype} {_shape_text(info.shape)}")
    dynamic = [i for i in facts.inputs if not i.is_static]
    add("# Shapes used for calibration and measurement (the batch is 1; a dynamic dimension needs a size):")
    add("inputs:")
    for info in facts.inputs:
        shape = _static_shape(info, image[1] if image else None)
        note = "    # dynamic in the model: set the size you deploy with" if info in dynamic else ""
        add(f"  {_q(info.name)}: {{shape: {_shape_text(shape)}}}{note}")
    add("")
    add("data:")
    add("  # Representative inputs: 100-500 samples like those seen in deployment. Ranges are computed")
    add("  # from `calibration`; errors are measured on `evaluation` (default: the calibration data).")
    if image:
        info, layout = image
        add(f"  # A folder of images (.png, .jpg, ...); `preprocess` turns each into input '{_c(info.name)}'.")
    elif len(facts.inputs) == 1:
        info = facts.inputs[0]
        add(f"  # A folder of .npy files, one sample each, {info.dtype} shaped {_shape_text(_static_shape(info, None))}")
        add("  # (or .npz files keyed by input name).")
    else:
        names = ", ".join(_c(i.name) for i in facts.inputs)
        add(f"  # One sub-folder per input ({names}) holding 0.npy, 1.npy, ... (the same names in each),")
        add("  # or a folder of .npz files, one sample each, keyed by input name.")
    add(f"  calibration: {_q(data or 'calibration')}" + ("" if data else "    # TODO: your data folder"))
    add("  # evaluation: evaluation        # held-out samples; recommended")
    add("  limit: 200                     # use at most this many samples of each")
    if image:
        info, layout = image
        channels = info.shape[1] if layout == "NCHW" else info.shape[3]
        shape = _static_shape(info, layout)
        size = shape[2:4] if layout == "NCHW" else shape[1:3]
        add("  preprocess:                    # must match the training / deployment pipeline")
        add(f"    size: [{size[0]}, {size[1]}]                # [height, width] to resize to")
        add("    resize: stretch                # or short_side_crop (classifiers), letterbox (detectors)")
        add(f"    layout: {layout}")
        add(f"    color: {'GRAY' if channels == 1 else 'RGB'}                   # or BGR (OpenCV-based pipelines)")
        add("    scale: 0.00392156862745098     # 1/255: pixels to [0, 1]")
        if channels == 3:
            add("    mean: [0.485, 0.456, 0.406]    # ImageNet statistics; use your model's")
            add("    std: [0.229, 0.224, 0.225]")
        else:
            add("    # mean: [0.5]")
            add("    # std: [0.5]")
    add("")
    add("target: cpu                       # or gpu, npu, mcu, edgetpu, or a profile file (docs/policy.md)")
    add("quantization:")
    add("  activations: uint8       # or int8, int16 (W8A16)")
    add("  weights: int8")
    add("  per_channel: true")
    add("  calibration: minmax      # or entropy, percentile")
    add("")
    metric_names = []
    if classifiers:
        add("metrics:")
        for o in classifiers:
            name = re.sub(r"_+", "_", "".join(c if c.isascii() and c.isalnum() else "_" for c in o.name)).strip("_") \
                or "output"
            if name[0].isdigit():
                name = "out_" + name
            name = f"{name}_top1"
            metric_names.append(name)
            add(f"  # {_c(o.name)} {_shape_text(o.shape)} looks like class scores: how often the int8 model's")
            add("  # top-1 class equals the float model's")
            add(f"  {name}: {{output: {_q(o.name)}, metric: top1}}")
        add("")
    add("# The verdict: every line must hold for `qcheck run` to exit 0. Names: model.cosine, model.sqnr,")
    add("# model.max_abs, model.top1, findings.error, ..." + (" and the metrics above." if metric_names else ""))
    add("require:")
    add("  - model.cosine >= 0.99       # worst output's cosine similarity to the float model")
    for name in metric_names:
        add(f"  - {name} >= 0.98")
    add("")
    add("report:")
    add("  out: qcheck-out              # replaced only when a run finishes")
    add("  formats: [html, pdf]")
    add(f"  title: {_q(facts.path.stem + ', int8')}")
    return "\n".join(_align_comments(L)) + "\n"


def _align_comments(lines: list[str], column: int = 34) -> list[str]:
    """Line up trailing comments (`value    # why`) so the file reads as two columns."""
    out = []
    for line in lines:
        m = re.match(r"^(\s*[^#\s].*?)\s{2,}(# .*)$", line)
        quoted = '"' in line  # a quoted name may hold "  # " itself: leave its spaces alone
        out.append(f"{m.group(1):<{column - 1}} {m.group(2)}" if m and not quoted else line)
    return out


def write_policy(model: Path, out: Path, data: str | None = None, force: bool = False) -> Path:
    if out.exists() and out.resolve() == model.resolve():
        raise QcheckError(Problem("the policy would be written over the model itself; refusing", file=str(out),
                                  hint="choose another name with -o"))
    if out.exists() and not out.is_file():
        raise QcheckError(Problem("the policy path exists and is not a regular file", file=str(out),
                                  hint="choose another name with -o"))
    if out.exists() and not force:
        raise QcheckError(Problem("the policy file already exists; not overwriting it", file=str(out),
                                  hint="choose another name with -o, or pass --force"))
    facts = read_facts(model)
    text = policy_text(facts, out, data)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_whole(out, text)  # --force: the old policy stays whole until the new one is
    except OSError as exc:
        raise QcheckError(Problem(f"cannot write the policy: {exc.strerror or exc}", file=str(out))) from None
    return out
