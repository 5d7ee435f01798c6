"""What results.json holds, as dataclasses; its JSON Schema is generated from them.

`Results.to_dict()` is what `qcheck run` writes. The sections the pipeline
assembles itself are dataclasses here; sections another stage produces as
plain data (the verdict, findings, rules, analyses, the search) are dicts
whose guaranteed keys are listed in the field's `keys` metadata, so the
schema (and the report) can rely on them.

`python -m qcheck.results.schema` rewrites `qcheck/schema/results.schema.json`;
tests/results/test_results_schema.py checks the committed file is current.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2  # 2: typed sections; keys the report reads exist in every file (older ones are upgraded)
NON_FINITE = ("inf", "-inf", "nan")  # JSON has no Infinity/NaN: such floats are written as these strings


def _keys(*names: str, doc: str = "") -> Any:
    """A dict field whose producer (another stage) guarantees these keys."""
    return field(metadata={"keys": names, "doc": doc})


def _doc(text: str, **kw) -> Any:
    return field(metadata={"doc": text}, **kw)  # no default unless given: every key is always written


@dataclass
class PolicyRef:
    path: str
    sha256: str
    document: dict = _doc("the policy file as parsed YAML")


@dataclass
class ModelInput:
    name: str
    shape: list
    dtype: str


@dataclass
class ModelInfo:
    name: str
    source: str
    sha256: str
    opset: int
    original_opset: int
    nodes: int
    op_counts: dict[str, int]
    preprocess: str | None
    notes: list[str]
    inputs: list[ModelInput]
    outputs: list[str]
    size_bytes: int


@dataclass
class DataInfo:
    calibration: dict | None
    evaluation: dict
    preprocess: dict | None


@dataclass
class QuantizationInfo:
    scheme: str
    recipe: dict
    recipe_key: str
    ranges_file: str | None
    ranges_sha256: str | None
    calibration_samples: int
    quantized_model: str
    size_bytes: int
    quantized_tensors: dict[str, int]
    quantized_nodes: int | None
    float_nodes: list
    io: str
    io_params: dict
    float_ops: list
    notes: list[str]
    build_seconds: float


@dataclass
class ModelMetrics:
    aggregate: dict[str, float]
    outputs: list[dict]
    user: dict[str, dict]
    tasks: dict[str, dict]


@dataclass
class MeasureInfo:
    modes: list[str]
    samples: int
    notes: list[str]
    not_computed: dict[str, str] = _doc("optional column groups left null in `tensors` because nothing in the run reads "
                                        "them (qcheck.run.needs), each with the reason", default_factory=dict)


@dataclass
class GraphNode:
    """One node of the float model, for the report's graph view (report/graph_layout.py lays them out)."""

    name: str
    op_type: str
    inputs: list[str] = _doc("activations it reads (weights left out)")
    outputs: list[str]


@dataclass
class LayerMetricInfo:
    """A layer metric the policy declares (`layer_metrics:`); its values are a key of every row of `tensors`."""

    name: str
    expr: str | None
    function: str | None
    over: str
    mode: str
    chart: bool
    seconds: float


@dataclass
class LockInfo:
    file: str | None
    quantized_model: str
    recipe: dict
    recipe_key: str
    ranges_file: str | None


RULE_KEYS = ("code", "name", "scope", "severity", "when", "params", "kinds", "op_types", "summary", "why", "fix",
             "remedies", "pack", "reads")
FINDING_KEYS = ("code", "rule", "severity", "message", "tensor")
SEARCH_KEYS = ("strategy", "cost", "remedies", "budget", "target", "ranking", "ranking_source", "proposed", "status",
               "trials", "findings_measured", "stopped_by", "notes", "candidates", "chosen", "pareto", "recommendation")
ANALYSES_KEYS = ("samples", "nodes", "switches", "metric", "sensitivity", "curves", "distributions", "confirm", "runs",
                 "float_runs", "activations", "notes", "timings")
GIVEN_KEYS = ("file", "sha256", "format", "matched", "matched_by", "unmatched", "notes")
VERDICT_KEYS = ("status", "requirements", "failed", "failing_metrics")


@dataclass
class Results:
    schema_version: int
    created: str
    title: str
    policy: PolicyRef
    verdict: dict = _keys(*VERDICT_KEYS)
    model: ModelInfo
    environment: dict[str, str]
    data: DataInfo
    target: dict
    quantization: QuantizationInfo
    compare: dict | None = _doc("null when the policy compares no schemes")
    model_metrics: ModelMetrics
    model_statistics: dict
    measure: MeasureInfo
    tensors: list[dict] = _doc("one row per quantized tensor: the statistics of results/layer_columns.py, and one "
                               "key per layer metric")
    layer_metrics: list[LayerMetricInfo] = _doc("the policy's layer metrics, in its order (empty when none)")
    graph: list[GraphNode] = _doc("the float model's nodes in graph order (empty in files of an older qcheck)")
    analyses: dict | None = _keys(*ANALYSES_KEYS, doc="null when no analysis ran")
    findings: list[dict] = _keys(*FINDING_KEYS)
    finding_counts: dict[str, int]
    rules: list[dict] = _keys(*RULE_KEYS)
    search: dict | None = _keys(*SEARCH_KEYS, doc="null when the policy has no search")
    lock: LockInfo
    given: dict | None = _keys(*GIVEN_KEYS, doc="null unless the policy gives a quantized model made elsewhere "
                                               "(`quantized:`): its file, format, and the tensors matched and not")
    timings: dict[str, float] = _doc("wall seconds per stage", default_factory=dict)
    peak_memory_mb: dict[str, float] = _doc("peak resident memory (MB) of each stage; `peak_memory_method` says "
                                            "whether per stage or cumulative", default_factory=dict)
    peak_memory_method: str = _doc("how peak_memory_mb was measured (qcheck.run.memory)", default="")

    def to_dict(self) -> dict:
        return plain(self)


def plain(value: Any) -> Any:
    """Dataclasses to dicts, keeping field order; the values inside are kept as they are (not copied)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- JSON Schema

_NUMBER = {"anyOf": [{"type": "number"}, {"enum": list(NON_FINITE)}]}
_SCALARS = {str: {"type": "string"}, int: {"type": "integer"}, bool: {"type": "boolean"}, float: {"$ref": "#/$defs/number"},
            type(None): {"type": "null"}}


def _type_schema(tp: Any, defs: dict) -> dict:
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    if tp is Any:
        return {}
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder against recursion
            defs[tp.__name__] = _dataclass_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is dict or origin is dict:
        out = {"type": "object"}
        if args and args[1] is not Any:
            out["additionalProperties"] = _type_schema(args[1], defs)
        return out
    if tp is list or origin is list:
        return {"type": "array", **({"items": _type_schema(args[0], defs)} if args else {})}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) for a in args]}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _field_schema(tp: Any, f: dataclasses.Field, defs: dict) -> dict:
    node = _type_schema(tp, defs)
    keys = f.metadata.get("keys")
    if keys:  # a dict (or a list of dicts) from another stage: its guaranteed keys
        shape = {"type": "object", "required": list(keys)}
        if node.get("type") == "array":
            node["items"] = shape
        elif "anyOf" in node:
            node["anyOf"] = [shape if alt.get("type") == "object" else alt for alt in node["anyOf"]]
        else:
            node = shape
    if f.metadata.get("doc"):
        node["description"] = f.metadata["doc"]
    return node


def _dataclass_schema(cls: type, defs: dict) -> dict:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    return {"type": "object", "properties": {f.name: _field_schema(hints[f.name], f, defs) for f in fields},
            "required": [f.name for f in fields]}


def json_schema() -> dict:
    """The JSON Schema of results.json, generated from `Results`."""
    defs: dict = {"number": _NUMBER}
    top = _dataclass_schema(Results, defs)
    top["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://qcheck.dev/schema/results.schema.json", "title": "qcheck results.json",
            "description": "What `qcheck run` writes; generated from qcheck/results/schema.py.",
            **top, "$defs": dict(sorted(defs.items()))}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=1) + "\n"


if __name__ == "__main__":  # python -m qcheck.results.schema: rewrite the published schema
    from qcheck.resources import schema_path

    schema_path("results.schema.json").write_text(schema_text(), encoding="utf-8")
    sys.exit(0)
