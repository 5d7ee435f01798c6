"""ONNX Runtime sessions, and models with extra tensors exposed as outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx

from qcheck.errors import first_line


def session_options(threads: int = 0, quiet: bool = False):
    """`quiet`: not even ORT's errors reach stderr (for probes whose failure the caller handles and records)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4 if quiet else 3  # errors only; ORT warns about every unfused node otherwise
    if threads:
        so.intra_op_num_threads = threads
    return so


def make_session(model: onnx.ModelProto | Path | str, what: str = "model", threads: int = 0, quiet: bool = False):
    """An InferenceSession on the CPU (`threads`: intra-op threads, 0 = ORT's default, one per core).

    Every model a session is made for is one qcheck built: a quantized variant, an emulation model, or
    the float model (which ONNX Runtime already loaded once, in `diagnose.check_runtime_loads`) with
    extra outputs. So ORT refusing it is a bug (qcheck's or ORT's), not the user's: `ModelBuildError`,
    reported with its traceback. `quiet`: see session_options.
    """
    import onnxruntime as ort

    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, session_options(threads, quiet), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise ModelBuildError(f"ONNX Runtime {ort.__version__} cannot load the {what} qcheck built: "
                              f"{first_line(exc)}") from exc


class ModelBuildError(RuntimeError):
    """ONNX Runtime refuses a model qcheck built: a bug to report, not a problem with the user's input."""


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the tensors in `names` (existing outputs first)."""
    out = copy.deepcopy(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return out
