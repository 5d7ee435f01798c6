"""ONNX Runtime sessions, and models with extra tensors exposed as outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx

from qcheck.errors import ModelError, Problem


def session_options(threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only; ORT warns about every unfused node otherwise
    if threads:
        so.intra_op_num_threads = threads
    return so


def make_session(model: onnx.ModelProto | Path | str, what: str = "model", threads: int = 0):
    """An InferenceSession on the CPU (`threads`: intra-op threads, 0 = ORT's default, one per core);
    ORT's load errors become a ModelError naming `what`."""
    import onnxruntime as ort

    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(Problem(f"ONNX Runtime cannot load the {what}: {text}",
                                 hint="check the op types and opset the model uses against ONNX Runtime's support")) from None


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the tensors in `names` (existing outputs first)."""
    out = copy.deepcopy(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return out
