"""The policy file: YAML -> validated, typed `Policy`.

Validation happens in two passes, and each reports every problem it finds at
once, with the file and line:

1. the document against the published JSON Schema (`schema/policy.schema.json`):
   unknown keys (with a "did you mean"), wrong types, values out of range;
2. what the schema cannot know: files that do not exist, expressions that do
   not parse.

Checks that need the model (input names, output names) happen once the model
is loaded, through `Policy.problem_at`, so they also point at the right line.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import stat
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from qcheck.errors import PolicyError, Problem, QcheckError
from qcheck.policy.expr import ExprError, Expression
from qcheck.policy.layer_metrics import check_color_by, read_layer_metrics
from qcheck.policy.paths import resolve_in
from qcheck.policy.schema_messages import schema_problems
from qcheck.policy.spec import (
    REQUIRE_NAMES,
    AnalysesSpec,
    DataSource,
    DataSpec,
    ExecutorSpec,
    FetchSpec,
    LayerMetricSpec,
    MeasureSpec,
    MetricSpec,
    ModelSpec,
    Policy,
    Preprocess,
    QuantizationSpec,
    ReportSpec,
    Requirement,
    RulesSpec,
    SearchBudget,
    SearchSpec,
    TensorOverride,
)
from qcheck.policy.targets import DEFAULT_TARGET, TargetProfile, builtin_profile, resolve_target
from qcheck.policy.yaml_spans import LineDict, LineList, line_of, load_yaml, to_plain
from qcheck.resources import schema_path

SCHEMA_PATH = schema_path("policy.schema.json")


@lru_cache(maxsize=1)
def policy_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def load_policy(path: str | Path) -> Policy:
    """Read, validate and type a policy file. Raises PolicyError listing every problem."""
    path = Path(path)
    return policy_from_document(path, read_policy_document(path))


def read_policy_document(path: Path) -> LineDict:
    """The policy file as a YAML mapping with lines, before any validation (a sweep overrides keys in it)."""
    try:
        doc = load_yaml(path, what="policy file")
    except QcheckError as exc:
        raise PolicyError(exc.problems) from None
    if doc is None:
        doc = LineDict()
    if not isinstance(doc, dict):
        raise PolicyError(Problem("a policy must be a YAML mapping (key: value lines)", file=str(path), line=1))
    return doc


def policy_from_document(path: Path, doc: dict) -> Policy:
    """Validate and type a policy document read from `path` (relative paths start at its folder)."""
    problems = schema_problems(doc, policy_schema(), str(path)) + _not_a_number(doc, str(path))
    if problems:
        raise PolicyError(problems)
    policy, problems = _build(path.resolve(), doc)
    if problems:
        raise PolicyError(problems)
    return policy


class _Section:
    """What every section reader needs: the document (with lines), the policy's folder, the problems so far."""

    def __init__(self, path: Path, doc: dict):
        self.doc, self.folder, self.file = doc, path.parent, str(path)
        self.problems: list[Problem] = []

    def at(self, *keys) -> int | None:
        return line_of(self.doc, list(keys))

    def resolve(self, p: str | Path) -> Path:
        """Relative paths start at the policy's folder."""
        return resolve_in(self.folder, p)

    def problem(self, message: str, keys: tuple, hint: str | None = None) -> None:
        self.problems.append(Problem(message, self.file, self.at(*keys), hint=hint))


def _given(section: dict, convert: dict[str, Callable[[Any], Any]]) -> dict:
    """The keys a section gives, converted; a key it leaves out keeps the spec dataclass's default (the one
    place defaults live; the schema's `default:` entries document them, tests/policy checks they agree)."""
    return {key: fn(section[key]) for key, fn in convert.items() if key in section}


def _same(value: Any) -> Any:
    return value


def _not_a_number(doc: Any, file: str, keys: tuple = ()) -> list[Problem]:
    """NaN passes every JSON Schema bound (each comparison with it is false) and means nothing in a policy."""
    if isinstance(doc, float) and math.isnan(doc):
        return [Problem(f"'{'.'.join(map(str, keys))}' is NaN; give a number", file, None)]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    out = []
    for k, v in items:
        for p in _not_a_number(v, file, (*keys, k)):
            p.line = p.line or (doc.lines.get(k) if isinstance(doc, LineDict) else
                                doc.lines[k] if isinstance(doc, LineList) and k < len(doc.lines) else None)
            out.append(p)
    return out


def _build(path: Path, doc: dict) -> tuple[Policy, list[Problem]]:
    """Schema-valid document -> Policy, plus the problems only semantics can find."""
    s = _Section(path, doc)
    # section by section, in the order their problems are listed
    model = _model(s, doc["model"])
    quantized = _model(s, doc["quantized"], "quantized") if "quantized" in doc else None
    data = _data(s, doc["data"])
    quant = _quantization(s, doc.get("quantization") or {})
    metrics = _metrics(s, doc.get("metrics") or {})
    layer_metrics = _layer_metrics(s, doc.get("layer_metrics") or {}, metrics)
    require = _require(s, doc.get("require") or [], metrics)
    rules = _rules(s, doc.get("rules") or {})
    rules.layer_metrics = list(layer_metrics)
    measure = MeasureSpec(**_given(doc.get("measure") or {}, {"modes": list, "weights": _same}))
    analyses = _analyses(doc.get("analyses", True))
    if analyses.metric == "auto":
        analyses.metric = required_metric(require, metrics)
    _check_analyses_metric(s, analyses, metrics)
    report = _report(s, doc.get("report") or {}, layer_metrics)
    inputs = {name: list(spec.get("shape", [])) for name, spec in (doc.get("inputs") or {}).items()}
    target = _target(s, doc.get("target", DEFAULT_TARGET))
    if quantized is not None:
        _given_model_limits(s, doc)
    compare = _compare_schemes(doc, quant, data, s.file, s.at, s.problems, given=quantized is not None)
    search = _search(doc["search"] or {}) if "search" in doc else None  # `search:` alone: on, with defaults
    policy = Policy(
        path=path, model=model, data=data, quantized=quantized, inputs=inputs, target=target,
        quantization=quant, metrics=metrics, layer_metrics=layer_metrics, require=require, rules=rules, measure=measure,
        analyses=analyses, report=report, compare=compare, search=search, raw=to_plain(doc), _doc=doc,
    )
    return policy, s.problems


def _model(s: _Section, m: str | dict, key: str = "model") -> ModelSpec:
    """`model:` or `quantized:` (same forms)."""
    if isinstance(m, str):
        model = ModelSpec(s.resolve(m))
    else:
        f = m.get("fetch")
        model = ModelSpec(s.resolve(m["path"]), FetchSpec(f["pip"], f["member"], f.get("sha256")) if f else None)
    kind = _kind(model.path)
    if kind == "missing" and model.fetch is None:
        s.problem(f"{key} file not found: {model.path}", (key,),
                  hint="check the path (relative paths start at the policy's folder)")
    elif kind == "folder":
        s.problem(f"{key} path is a folder, not an .onnx file: {model.path}", (key,))
    elif kind not in ("file", "missing"):
        s.problem(f"{key} path {model.path}: {kind}", (key,))
    if model.fetch is not None and not PINNED.fullmatch(model.fetch.pip):
        s.problem(f"{key}.fetch.pip must be one pinned requirement, name==version; got {model.fetch.pip!r}",
                  (key, "fetch", "pip"), hint="e.g. rapidocr-onnxruntime==1.4.4 (never a pip option or a URL)")
    return model


# remedies that only change how ORT quantizes the float model's weights: a given model's weights are its own
GIVEN_REFUSED_REMEDIES = ("per_channel", "symmetric", "reduced_range")
# remedies that set new ranges from the calibration data (calibrated once, when the search needs them)
CALIBRATING_REMEDIES = ("explicit_range", "calibration_method")


def _given_model_limits(s: _Section, doc: dict) -> None:
    """With `quantized:` qcheck builds no model of its own: `compare:` and `quantization:` are refused; the search
    edits the given model (quantize/given_edit.py), with the remedies that can apply to it."""
    for key, what in (("compare", "the comparison builds qcheck's own schemes"),
                      ("quantization", "its settings say how qcheck quantizes `model:`, and the given model "
                                       "is quantized already")):
        if key in doc:
            s.problem(f"`{key}:` cannot be used with `quantized:` ({what}; qcheck does not quantize a model it was "
                      "given again)", (key,), hint=f"remove `{key}:`, or remove `quantized:` to let qcheck quantize "
                                                   "`model:`")
    remedies = list((doc.get("search") or {}).get("remedies") or [])
    refused = [r for r in remedies if r in GIVEN_REFUSED_REMEDIES]
    if refused:
        s.problem(f"search.remedies {', '.join(refused)} cannot be used with `quantized:` (they change how the float "
                  "model's weights are quantized; the search edits the given model's Q/DQ pairs and keeps its "
                  "weights)", ("search", "remedies"),
                  hint="use keep_float, int16_activations, explicit_range, widen_range, calibration_method, "
                       "scheme, skip_first or keep_float_flagged")
    calibrating = [r for r in remedies if r in CALIBRATING_REMEDIES]
    if calibrating and (doc.get("data") or {}).get("calibration") is None:
        s.problem(f"search.remedies {', '.join(calibrating)} set new ranges on the given model, calibrated from "
                  "data.calibration, and the policy has none", ("search", "remedies"),
                  hint="add data.calibration (the data the new ranges are computed from), or remove "
                       f"{', '.join(calibrating)}")


def _data(s: _Section, d: dict) -> DataSpec:
    def source(key: str) -> DataSource | None:
        given = d.get(key)
        if given is None:
            return None
        if isinstance(given, str):
            src = DataSource(s.resolve(given))
        else:
            src = DataSource(s.resolve(given["path"]), **_given(given, {"format": _same, "limit": _same}))
        if src.limit is None:
            src.limit = d.get("limit")
        kind = _kind(src.path)
        if kind == "missing":
            s.problem(f"{key} data not found: {src.path}", ("data", key))
        elif kind not in ("file", "folder"):
            s.problem(f"{key} data {src.path}: {kind}", ("data", key))
        return src

    pre = d.get("preprocess") or {}
    preprocess = Preprocess(**_given(pre, {"size": tuple, "resize": _same, "resize_short": int, "pad_value": float,
                                           "layout": _same, "color": _same, "scale": float, "mean": list, "std": list}))
    return DataSpec(source("calibration"), source("evaluation"), preprocess)


def _quantization(s: _Section, q: dict) -> QuantizationSpec:
    excl = q.get("exclude") or {}
    quant = QuantizationSpec(
        **_given(q, {"scheme": _same, "io": _same, "activations": _same, "weights": _same, "per_channel": _same,
                     "calibration": _same, "percentile": float, "num_bins": int, "symmetric_activations": _same,
                     "reduce_range": _same}),
        **{field: list(excl[key]) for key, field in (("nodes", "exclude_nodes"), ("op_types", "exclude_op_types"))
           if key in excl},
        overrides={name: TensorOverride(**dict(o)) for name, o in (q.get("overrides") or {}).items()},
    )
    for name, o in quant.overrides.items():
        if any(v is not None and not math.isfinite(v) for v in (o.rmin, o.rmax)):
            s.problem(f"override for '{name}': rmin and rmax must be finite numbers", ("quantization", "overrides", name))
        elif o.rmin is not None and o.rmax is not None and o.rmin >= o.rmax:
            s.problem(f"override for '{name}': rmin ({o.rmin}) must be below rmax ({o.rmax})",
                      ("quantization", "overrides", name))
    return quant


def _metrics(s: _Section, given: dict) -> dict[str, MetricSpec]:
    metrics = {name: MetricSpec(name, spec.get("output"), spec.get("slice"), task=spec.get("task"),
                                options={k: to_plain(v) for k, v in spec.items() if k != "task"},
                                **_given(spec, {"metric": _same}))
               for name, spec in given.items()}
    for name, spec in metrics.items():
        if spec.task is not None:
            from qcheck.policy.task_options import check_options

            for keys, message, hint in check_options(name, {"task": spec.task, **spec.options}):
                s.problem(message, keys, hint=hint)
        elif spec.output is None:
            s.problem(f"'metrics.{name}' is missing the required key 'output'", ("metrics", name))
        if spec.slice is not None:
            from qcheck.policy.slices import SliceError, parse_slice  # local: metrics imports numpy

            try:
                parse_slice(spec.slice)
            except SliceError as exc:
                s.problem(f"metric '{name}': {exc}", ("metrics", name, "slice"))
        if name in ("model", "findings"):
            s.problem(f"metric name '{name}' is reserved", ("metrics", name))
    return metrics


def _layer_metrics(s: _Section, given: dict, metrics: dict[str, MetricSpec]) -> dict[str, LayerMetricSpec]:
    specs, issues = read_layer_metrics(given, s.file, lambda keys: s.at(*keys))
    for keys, message, hint in issues:
        s.problem(message, keys, hint=hint)
    for name in sorted(set(specs) & set(metrics)):
        s.problem(f"'{name}' is both a model metric (`metrics:`) and a layer metric; give them different names",
                  ("layer_metrics", name))
    return specs


def _require(s: _Section, lines: list, metrics: dict[str, MetricSpec]) -> list[Requirement]:
    from qcheck.policy.task_options import require_names
    from qcheck.policy.vacuous import always, domain_of, domain_text

    known = set(REQUIRE_NAMES) | set(metrics)
    for name, spec in metrics.items():
        if spec.task is not None:
            known |= set(require_names(name, spec.task, spec.options))
    require = []
    for i, text in enumerate(lines):
        try:
            expression = Expression(text, known_names=known, requirement=True)
        except ExprError as exc:
            hint = _unknown_name_hint(exc.args[1], known) if len(exc.args) > 1 else None
            s.problem(f"require: {exc.args[0]}", ("require", i), hint=hint)
            continue
        fixed = always(expression, metrics)
        if fixed is not None:
            where = "; ".join(domain_text(n, domain_of(n, metrics)) for n in sorted(expression.names))
            s.problem(f"require: '{expression.text}' {'holds' if fixed else 'fails'} for every value it can read "
                      f"({where}), so it {'never fails' if fixed else 'fails every run'} whatever the model does",
                      ("require", i), hint="compare with a threshold inside that range, e.g. `model.cosine >= 0.99`")
            continue
        require.append(Requirement(text, expression, s.at("require", i), s.file))
    return require


def _rules(s: _Section, r: dict) -> RulesSpec:
    rules = RulesSpec(**_given(r, {"packs": list, "disable": list, "inline": lambda v: list(v or []),
                                   "params": lambda p: {k: dict(v) for k, v in (p or {}).items()}}),
                      doc=r if isinstance(r, LineDict) else None)
    for i, pack in enumerate(rules.packs):
        if pack != "builtin" and _kind(s.resolve(pack)) != "file":
            s.problem(f"rule pack not found: {s.resolve(pack)}", ("rules", "packs", i))
    rules.packs = [p if p == "builtin" else str(s.resolve(p)) for p in rules.packs]
    return rules


def _check_analyses_metric(s: _Section, analyses: AnalysesSpec, metrics: dict[str, MetricSpec]) -> None:
    if analyses.sensitivity and analyses.metric not in ("cosine", "sqnr", "mse") and analyses.metric not in metrics:
        s.problem(f"analyses.sensitivity.metric '{analyses.metric}' is neither cosine, sqnr, mse nor a metric "
                  f"declared under `metrics:`", ("analyses", "sensitivity", "metric"),
                  hint=f"usable metrics: cosine, sqnr, mse{''.join(', ' + g for g in metrics)}")


def _report(s: _Section, rp: dict, layer_metrics: dict[str, LayerMetricSpec]) -> ReportSpec:
    report = ReportSpec(**_given(rp, {"formats": list, "title": _same}))
    report.graph_color_by = (rp.get("graph") or {}).get("color_by", report.graph_color_by)
    issue = check_color_by(report.graph_color_by, layer_metrics)
    if issue:
        s.problem(issue[1], issue[0], hint=issue[2])
    report.out = s.resolve(rp.get("out", report.out))
    tdirs = rp.get("templates") or []
    for i, t in enumerate([tdirs] if isinstance(tdirs, str) else tdirs):
        report.templates.append(s.resolve(t))
        if _kind(s.resolve(t)) != "folder":
            keys = ("report", "templates") if isinstance(tdirs, str) else ("report", "templates", i)
            s.problem(f"report template folder not found: {s.resolve(t)}", keys)
    return report


def _target(s: _Section, given: str | dict) -> TargetProfile:
    try:
        return resolve_target(given, s.folder, s.file, s.at("target"))
    except QcheckError as exc:
        s.problems.extend(exc.problems)
        return builtin_profile(DEFAULT_TARGET)


def _search(sd: dict) -> SearchSpec:
    return SearchSpec(**_given(sd, {
        "strategy": _same, "remedies": lambda r: list(dict.fromkeys(r)), "candidates": int, "width": int,
        "budget": lambda b: SearchBudget(**dict(b or {})), "finalists": int, "latency_repeats": int,
        "cost": _same, "explicit_range_from": _same, "holdout": _same,
        "confidence": lambda c: float(c or 0)}))  # `off` (YAML false): no margin


# `name==version` (extras allowed): handed to `pip download`, so never an option (-r ...), a path or a URL
PINNED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9][A-Za-z0-9.+!_-]*")


def _kind(path: Path) -> str:
    """"file", "folder", "missing", or why the path cannot be used (a device, a name too long, ...)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "not a regular file or folder (a pipe, device or socket)"


def _compare_schemes(doc: dict, quant: QuantizationSpec, data: DataSpec, file: str, at, problems: list,
                     given: bool = False) -> list[str]:
    """`compare:` -> the schemes to build, and the data checks the schemes need (scheme list in qcheck.quantize.schemes)."""
    from qcheck.policy.schemes import CALIBRATED, SCHEMES

    c = doc.get("compare")
    compare = list(SCHEMES) if c == "all" else list(c or [])
    if quant.scheme == "int8-only" and quant.io in ("float32", "float16"):
        problems.append(Problem(f"quantization.io: {quant.io} does not fit scheme int8-only, whose inputs and outputs "
                                "are integer", file, at("quantization", "io"), hint="use int8 or uint8"))
    needs = [s for s in dict.fromkeys([quant.scheme] + compare) if s in CALIBRATED]
    if data.calibration is None and needs and not given:  # a given quantized model needs no calibration
        where = ("compare",) if quant.scheme not in CALIBRATED else ("quantization", "scheme")
        problems.append(Problem(f"scheme{'s' if len(needs) > 1 else ''} {', '.join(needs)} need calibration data, and "
                                "the policy has no data.calibration", file, at(*where) or at("data"),
                                hint="add data.calibration, or use only the schemes dynamic and float16"))
    if data.calibration is None and data.evaluation is None:
        problems.append(Problem("the policy has no data: give data.evaluation (and data.calibration for calibrated "
                                "schemes)", file, at("data")))
    return compare


def required_metric(require: list, metrics: dict) -> str:
    """`analyses.sensitivity.metric: auto`: the first declared metric a `require:` line names (a task metric or
    an output metric), so nodes are ranked by what the requirements judge; cosine when they name none."""
    for q in require:
        for name in sorted(q.expression.names):
            if name.split(".")[0] in metrics:
                return name.split(".")[0]
    return "cosine"


def _analyses(value: Any) -> AnalysesSpec:
    """`analyses:` as written (true/false, or a mapping of sections that are each true/false/a mapping)."""
    if value is False:
        return AnalysesSpec(sensitivity=False, curves=False, distributions=False, confirm=False)
    spec = AnalysesSpec()
    if not isinstance(value, dict):
        return spec

    def section(key: str) -> dict | None:
        v = value.get(key, True)
        return None if v is False else (v if isinstance(v, dict) else {})

    spec.samples = int(value.get("samples", spec.samples))
    spec.memory_mb = int(value.get("memory_mb", spec.memory_mb))
    s, c, d, k = section("sensitivity"), section("curves"), section("distributions"), section("confirm")
    spec.sensitivity, spec.curves, spec.distributions, spec.confirm = (x is not None for x in (s, c, d, k))
    spec.metric = (s or {}).get("metric", "auto")
    spec.detail = int((s or {}).get("detail", spec.detail))
    spec.top_k = int((c or {}).get("top_k", spec.top_k))
    spec.focus_nodes = int((d or {}).get("nodes", spec.focus_nodes))
    spec.tolerance = float((k or {}).get("tolerance", spec.tolerance))
    if "executor" in value:
        spec.executor = ExecutorSpec.from_document(value["executor"])
    spec.shards = value.get("shards")
    return spec


def _unknown_name_hint(name: str, known: set[str]) -> str:
    """A `require:` name that is not known: a built-in misspelt gets a did-you-mean; any other name most
    likely is a metric the policy has not declared yet."""
    guess = difflib.get_close_matches(name, sorted(known), n=1)
    if name.split(".")[0] in ("model", "findings"):
        return f"did you mean '{guess[0]}'?" if guess else f"known names: {', '.join(sorted(known))}"
    base = name.split(".")[0]
    hint = (f"declare '{base}' under `metrics:` first, e.g. `{base}: {{output: <output name>, metric: top1}}` or "
            f"a task metric (`task: classification`, ...; docs/policy.md)")
    return hint + (f"; or did you mean '{guess[0]}'?" if guess else "")
