"""Why ONNX Runtime cannot load a model, in words a user can act on.

ORT's own message names one node at best ("com.acme:Swish(-1) is not a
registered function/op"). `unsupported_ops` looks at every node against the
ONNX op registry and the model's opset imports, so the message can list each
op, its domain and opset, and the nodes that use it.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from qcheck.errors import ModelError, Problem, first_line

# Domains whose ops ONNX Runtime implements itself (besides the standard one).
ORT_DOMAINS = {"ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental"}


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def unsupported_ops(model: onnx.ModelProto) -> list[str]:
    """One sentence per op that no ONNX Runtime build can run as written, with the nodes using it."""
    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    opsets.setdefault("", opsets.get("ai.onnx", 0))
    local_functions = {(f.domain, f.name) for f in model.functions}
    found: dict[tuple[str, str], list[str]] = {}
    reasons: dict[tuple[str, str], str] = {}
    for node in _nodes(model.graph):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        key = (domain, node.op_type)
        if (node.domain, node.op_type) in local_functions:
            continue
        version = opsets.get(domain)
        if domain == "":
            try:
                onnx.defs.get_schema(node.op_type, version, "")
                continue
            except onnx.defs.SchemaError:
                if onnx.defs.has(node.op_type):
                    since = min(s.since_version for s in onnx.defs.get_all_schemas_with_history()
                                if s.name == node.op_type and s.domain == "")
                    reasons[key] = (f"op {node.op_type} exists only from opset {since}, but the model declares "
                                    f"opset {version}")
                else:
                    reasons[key] = f"op {node.op_type} (opset {version}) is not an ONNX op"
        elif domain in ORT_DOMAINS:
            continue  # ORT's own ops: only ORT can tell
        else:
            reasons[key] = (f"op {node.op_type} from the custom domain {domain} (opset {version}) is not part of "
                            f"ONNX or ONNX Runtime")
        found.setdefault(key, []).append(node.name or "(unnamed)")
    out = []
    for key, names in found.items():
        shown = ", ".join(f"'{n}'" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        out.append(f"{reasons[key]}; used by node{'s' if len(names) > 1 else ''} {shown}")
    return out


def check_runtime_loads(path: Path, model: onnx.ModelProto, source: Path) -> None:
    """Raise a ModelError naming the ops and opset when ONNX Runtime cannot create a session for `path`."""
    import onnxruntime as ort

    from qcheck.model.runtime import session_options

    try:
        ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        return
    except Exception as exc:  # ORT raises Fail / InvalidGraph / NotImplemented
        text = first_line(exc, {path: source})  # the user knows their file, not our working copy
        ops = unsupported_ops(model)
        opset = next((imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")), None)
        detail = "\n    ".join(ops) if ops else text
        raise ModelError(Problem(
            f"ONNX Runtime {ort.__version__} cannot load the model (opset {opset}):\n    {detail}"
            + (f"\n    (ONNX Runtime says: {text})" if ops else ""),
            file=str(source), hint=_load_hint(ops, text))) from exc


# ORT's words for a graph that breaks ONNX's own rules (not an op it lacks).
_MALFORMED = ("invalid model", "not acyclic", "duplicate definition", "same node name", "shapeinferenceerror",
              "type error", "typeinferenceerror")


def _load_hint(ops: list[str], ort_text: str) -> str:
    if ops:
        return "replace or decompose these ops in the exporter, or export for an opset that has them"
    if any(word in ort_text.lower() for word in _MALFORMED):
        return ("the graph itself breaks ONNX's rules: export the model again; onnx.checker.check_model(path, "
                "full_check=True) lists every problem")
    return "check the op types and opset the model uses against ONNX Runtime's support"
