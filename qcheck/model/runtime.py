"""ONNX Runtime sessions, and models with extra tensors exposed as outputs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import onnx

from qcheck.errors import ModelError, Problem, first_line


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, e.g. a container's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session_options(threads: int = 0, quiet: bool = False, spin: bool = True, basic: bool = False):
    """`quiet`: not even ORT's errors reach stderr (for probes whose failure the caller handles and records).
    `spin=False`: ORT's threads sleep as soon as a run ends instead of spinning for the next one, leaving the
    cores to the numpy work between runs (measurement reduces every tensor after each run).
    `basic`: ORT's basic graph optimizations only (constant folding, no fusions): a model computes what its
    nodes say, bit for bit (the search's screening sessions; a fused Conv+Add rounds differently)."""
    import onnxruntime as ort

    # fatal only: ORT warns about every unfused node, and would print its own copy of an error qcheck reports
    # as one message (run_failure); the calibrator's sessions use the default logger
    ort.set_default_logger_severity(4)
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if threads:
        so.intra_op_num_threads = threads
    if basic:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def make_session(model: onnx.ModelProto | Path | str, what: str = "model", threads: int = 0, quiet: bool = False,
                 spin: bool = True, basic: bool = False):
    """An InferenceSession on the CPU (`threads`: intra-op threads, 0 = ORT's default, one per core).

    Every model a session is made for is one qcheck built: a quantized variant, an emulation model, or
    the float model (which ONNX Runtime already loaded once, in `diagnose.check_runtime_loads`) with
    extra outputs. So ORT refusing it is a bug (qcheck's or ORT's), not the user's: `ModelBuildError`,
    reported with its traceback. `quiet`, `spin`, `basic`: see session_options.
    """
    import onnxruntime as ort

    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, session_options(threads, quiet, spin, basic), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise ModelBuildError(f"ONNX Runtime {ort.__version__} cannot load the {what} qcheck built: "
                              f"{first_line(exc)}") from exc


class ModelBuildError(RuntimeError):
    """ONNX Runtime refuses a model qcheck built: a bug to report, not a problem with the user's input."""


def ort_errors() -> tuple[type[BaseException], ...]:
    """What ONNX Runtime raises when it refuses a model or a run (its pybind error types, plain Exception
    subclasses, plus ModelBuildError): for the fallbacks that may catch ORT's refusals and nothing else, so a
    bug of qcheck's in the same block still ends the run with exit 3."""
    import onnxruntime.capi.onnxruntime_pybind11_state as state

    found = tuple(c for c in vars(state).values() if isinstance(c, type) and issubclass(c, Exception))
    return (*found, ModelBuildError)


def run_failure(exc: BaseException, sample: tuple[Path, str] | None) -> ModelError | None:
    """ONNX Runtime failing while it runs a model on a sample (not while loading it): the sample's fault.

    An int64 index out of range, or a value a node refuses, in one sample; None for anything else.
    """
    text = str(exc)
    if not type(exc).__module__.startswith("onnxruntime") or "while running" not in text:
        return None
    detail = text.split("while running", 1)[1].strip()
    where = f"sample {sample[1]}" if sample else "a sample"
    return ModelError(Problem(f"ONNX Runtime failed on {where} while running {detail}",
                              file=str(sample[0]) if sample else None,
                              hint="check that sample's values (an index beyond a table, a shape the model does not "
                                   "take)"))


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the tensors in `names` (existing outputs first)."""
    out = copy.deepcopy(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return out
