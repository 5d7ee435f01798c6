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
from functools import lru_cache
from pathlib import Path
from typing import Any

from qcheck.errors import PolicyError, Problem, QcheckError
from qcheck.policy.expr import ExprError, Expression
from qcheck.policy.schema_messages import schema_problems
from qcheck.policy.spec import (
    REQUIRE_NAMES,
    AnalysesSpec,
    DataSource,
    DataSpec,
    FetchSpec,
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
from qcheck.policy.targets import builtin_profile, resolve_target
from qcheck.policy.yaml_spans import LineDict, line_of, load_yaml, to_plain
from qcheck.resources import schema_path

SCHEMA_PATH = schema_path("policy.schema.json")


@lru_cache(maxsize=1)
def policy_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def load_policy(path: str | Path) -> Policy:
    """Read, validate and type a policy file. Raises PolicyError listing every problem."""
    path = Path(path)
    try:
        doc = load_yaml(path, what="policy file")
    except QcheckError as exc:
        raise PolicyError(exc.problems) from None
    if doc is None:
        doc = LineDict()
    if not isinstance(doc, dict):
        raise PolicyError(Problem("a policy must be a YAML mapping (key: value lines)", file=str(path), line=1))
    problems = schema_problems(doc, policy_schema(), str(path))
    if problems:
        raise PolicyError(problems)
    policy, problems = _build(path.resolve(), doc)
    if problems:
        raise PolicyError(problems)
    return policy


def _build(path: Path, doc: dict) -> tuple[Policy, list[Problem]]:
    """Schema-valid document -> Policy, plus the problems only semantics can find."""
    folder = path.parent
    problems: list[Problem] = []
    file = str(path)

    def at(*keys):
        return line_of(doc, list(keys))

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else folder / q

    # model
    m = doc["model"]
    if isinstance(m, str):
        model = ModelSpec(resolve(m))
    else:
        f = m.get("fetch")
        model = ModelSpec(resolve(m["path"]), FetchSpec(f["pip"], f["member"], f.get("sha256")) if f else None)
    if not model.path.exists() and model.fetch is None:
        problems.append(Problem(f"model file not found: {model.path}", file, at("model"),
                                hint="check the path (relative paths start at the policy's folder)"))
    elif model.path.exists() and model.path.is_dir():
        problems.append(Problem(f"model path is a folder, not an .onnx file: {model.path}", file, at("model")))

    # data
    d = doc["data"]

    def source(key: str) -> DataSource | None:
        s = d.get(key)
        if s is None:
            return None
        src = DataSource(resolve(s)) if isinstance(s, str) else DataSource(resolve(s["path"]), s.get("format", "auto"), s.get("limit"))
        if src.limit is None:
            src.limit = d.get("limit")
        if not src.path.exists():
            problems.append(Problem(f"{key} data not found: {src.path}", file, at("data", key)))
        return src

    pre = d.get("preprocess") or {}
    preprocess = Preprocess(
        size=tuple(pre["size"]) if "size" in pre else None,
        layout=pre.get("layout", "NCHW"),
        color=pre.get("color", "RGB"),
        scale=float(pre.get("scale", 1.0 / 255.0)),
        mean=list(pre["mean"]) if "mean" in pre else None,
        std=list(pre["std"]) if "std" in pre else None,
    )
    data = DataSpec(source("calibration"), source("evaluation"), preprocess)

    # quantization
    q = doc.get("quantization") or {}
    excl = q.get("exclude") or {}
    quant = QuantizationSpec(
        scheme=q.get("scheme", "int8"),
        io=q.get("io"),
        activations=q.get("activations", "uint8"),
        weights=q.get("weights", "int8"),
        per_channel=q.get("per_channel", True),
        calibration=q.get("calibration", "minmax"),
        percentile=float(q.get("percentile", 99.999)),
        num_bins=int(q.get("num_bins", 2048)),
        symmetric_activations=q.get("symmetric_activations", False),
        reduce_range=q.get("reduce_range", False),
        exclude_nodes=list(excl.get("nodes", [])),
        exclude_op_types=list(excl.get("op_types", [])),
        overrides={name: TensorOverride(**dict(o)) for name, o in (q.get("overrides") or {}).items()},
    )
    for name, o in quant.overrides.items():
        if o.rmin is not None and o.rmax is not None and o.rmin >= o.rmax:
            problems.append(Problem(f"override for '{name}': rmin ({o.rmin}) must be below rmax ({o.rmax})", file,
                                    at("quantization", "overrides", name)))

    # metrics and requirements
    metrics = {name: MetricSpec(name, spec.get("output"), spec.get("slice"), spec.get("metric", "max_abs"),
                                spec.get("task"), {k: to_plain(v) for k, v in spec.items() if k != "task"})
               for name, spec in (doc.get("metrics") or {}).items()}
    task_names: list[str] = []
    for name, spec in metrics.items():
        if spec.task is not None:
            from qcheck.policy.task_options import check_options, require_names

            for keys, message, hint in check_options(name, {"task": spec.task, **spec.options}):
                problems.append(Problem(message, file, at(*keys), hint=hint))
            task_names += require_names(name, spec.task, spec.options)
        elif spec.output is None:
            problems.append(Problem(f"'metrics.{name}' is missing the required key 'output'", file, at("metrics", name)))
        if spec.slice is not None:
            from qcheck.policy.slices import SliceError, parse_slice  # local: metrics imports numpy

            try:
                parse_slice(spec.slice)
            except SliceError as exc:
                problems.append(Problem(f"metric '{name}': {exc}", file, at("metrics", name, "slice")))
        if name in ("model", "findings"):
            problems.append(Problem(f"metric name '{name}' is reserved", file, at("metrics", name)))
    known = set(REQUIRE_NAMES) | set(metrics) | set(task_names)
    require = []
    for i, text in enumerate(doc.get("require") or []):
        try:
            require.append(Requirement(text, Expression(text, known_names=known), at("require", i)))
        except ExprError as exc:
            hint = None
            if len(exc.args) > 1:
                guess = difflib.get_close_matches(exc.args[1], sorted(known), n=1)
                hint = f"did you mean '{guess[0]}'?" if guess else f"known names: {', '.join(sorted(known))}"
            problems.append(Problem(f"require: {exc.args[0]}", file, at("require", i), hint=hint))

    r = doc.get("rules") or {}
    rules = RulesSpec(list(r.get("packs", ["builtin"])), list(r.get("disable", [])),
                      {k: dict(v) for k, v in (r.get("params") or {}).items()},
                      list(r.get("inline") or []), r if isinstance(r, LineDict) else None)
    for i, pack in enumerate(rules.packs):
        if pack != "builtin" and not resolve(pack).exists():
            problems.append(Problem(f"rule pack not found: {resolve(pack)}", file, at("rules", "packs", i)))
    rules.packs = [p if p == "builtin" else str(resolve(p)) for p in rules.packs]

    ms = doc.get("measure") or {}
    measure = MeasureSpec(list(ms.get("modes", ["local", "whole"])), ms.get("weights", True))
    analyses = _analyses(doc.get("analyses", True))
    if analyses.sensitivity and analyses.metric not in ("cosine", "sqnr", "mse") and analyses.metric not in metrics:
        problems.append(Problem(f"analyses.sensitivity.metric '{analyses.metric}' is neither cosine, sqnr, mse nor a "
                                f"metric declared under `metrics:`", file, at("analyses", "sensitivity", "metric"),
                                hint=f"usable metrics: cosine, sqnr, mse{''.join(', ' + g for g in metrics)}"))
    rp = doc.get("report") or {}
    report = ReportSpec(resolve(rp.get("out", "qcheck-out")), list(rp.get("formats", ["html", "pdf"])), rp.get("title"))
    tdirs = rp.get("templates") or []
    for i, t in enumerate([tdirs] if isinstance(tdirs, str) else tdirs):
        report.templates.append(resolve(t))
        if not resolve(t).is_dir():
            keys = ("report", "templates") if isinstance(tdirs, str) else ("report", "templates", i)
            problems.append(Problem(f"report template folder not found: {resolve(t)}", file, at(*keys)))

    inputs = {name: list(spec.get("shape", [])) for name, spec in (doc.get("inputs") or {}).items()}

    target = builtin_profile("cpu")
    try:
        target = resolve_target(doc.get("target", "cpu"), folder, file, at("target"))
    except QcheckError as exc:
        problems.extend(exc.problems)

    compare = _compare_schemes(doc, quant, data, file, at, problems)
    search = None
    if "search" in doc:  # `search:` alone turns the search on with its defaults
        sd = doc["search"] or {}
        search = SearchSpec(
            strategy=sd.get("strategy", "greedy"),
            remedies=list(dict.fromkeys(sd.get("remedies", ["keep_float", "int16_activations"]))),
            candidates=int(sd.get("candidates", 20)), width=int(sd.get("width", 8)),
            budget=SearchBudget(**dict(sd.get("budget") or {})),
            finalists=int(sd.get("finalists", 3)), latency_repeats=int(sd.get("latency_repeats", 7)),
            cost=sd.get("cost", "profile"), explicit_range_from=sd.get("explicit_range_from", "percentile"),
        )

    policy = Policy(
        path=path, model=model, data=data, inputs=inputs, target=target,
        quantization=quant, metrics=metrics, require=require, rules=rules, measure=measure,
        analyses=analyses, report=report, compare=compare, search=search, raw=to_plain(doc), _doc=doc,
    )
    return policy, problems


def _compare_schemes(doc: dict, quant: QuantizationSpec, data: DataSpec, file: str, at, problems: list) -> list[str]:
    """`compare:` -> the schemes to build, and the data checks the schemes need (scheme list in qcheck.quantize.schemes)."""
    from qcheck.policy.schemes import CALIBRATED, SCHEMES

    c = doc.get("compare")
    compare = list(SCHEMES) if c == "all" else list(c or [])
    if quant.scheme == "int8-only" and quant.io in ("float32", "float16"):
        problems.append(Problem(f"quantization.io: {quant.io} does not fit scheme int8-only, whose inputs and outputs "
                                "are integer", file, at("quantization", "io"), hint="use int8 or uint8"))
    needs = [s for s in dict.fromkeys([quant.scheme] + compare) if s in CALIBRATED]
    if data.calibration is None and needs:
        where = ("compare",) if quant.scheme not in CALIBRATED else ("quantization", "scheme")
        problems.append(Problem(f"scheme{'s' if len(needs) > 1 else ''} {', '.join(needs)} need calibration data, and "
                                "the policy has no data.calibration", file, at(*where) or at("data"),
                                hint="add data.calibration, or use only the schemes dynamic and float16"))
    if data.calibration is None and data.evaluation is None:
        problems.append(Problem("the policy has no data: give data.evaluation (and data.calibration for calibrated "
                                "schemes)", file, at("data")))
    return compare


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
    spec.metric = (s or {}).get("metric", spec.metric)
    spec.detail = int((s or {}).get("detail", spec.detail))
    spec.top_k = int((c or {}).get("top_k", spec.top_k))
    spec.focus_nodes = int((d or {}).get("nodes", spec.focus_nodes))
    spec.tolerance = float((k or {}).get("tolerance", spec.tolerance))
    return spec
