"""Render results to report.html and report.pdf."""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from qcheck.errors import Problem, QcheckError, printable_data
from qcheck.report import plots
from qcheck.report.analysis_plots import analysis_plots
from qcheck.report.graph_view import graph_view
from qcheck.report.template_check import check_templates, from_user_template, template_problem
from qcheck.resources import templates_dir
from qcheck.results.layer_columns import PER_LAYER_GROUP
from qcheck.results.next_step import next_step, partial_float_rows
from qcheck.scratch import replaced_whole


def _num(value, digits: int = 3) -> str:
    """Compact numbers for tables: 3 significant digits, no noise."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _db(value) -> str:
    return "n/a" if value is None else ("∞ dB" if isinstance(value, float) and math.isinf(value) and value > 0 else f"{_num(value)} dB")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _size(n) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _cosine(value) -> str:
    """Cosines close to 1 need their nines shown: 0.99993, not 1."""
    if value is None or not isinstance(value, float) or not math.isfinite(value):
        return _num(value)
    if value >= 0.999:
        return f"{value:.6f}"
    return f"{value:.4f}"


def svg_data_uri(svg: str | None) -> str | None:
    if not svg:
        return None
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


MAX_SEQUENCE = 1_000_000  # items or characters `*` may build in a template
MAX_EXPONENT = 1000


MAX_LOOP_STEPS = 5_000_000  # for-loop iterations in one render: the built-in report on a 5,000-node model takes ~1 %


class _CountedLoops(CodeGenerator):
    """Compiles every `{% for %}` so its iterable passes through `environment.loop_steps`: nested loops that would
    run for hours (`range(99999)` inside `range(99999)`) stop at the budget instead of hanging a CI job."""

    def visit_For(self, node: nodes.For, frame) -> None:
        if not node.recursive:
            node.iter = nodes.Call(nodes.EnvironmentAttribute("loop_steps"), [node.iter], [], None, None,
                                   lineno=node.lineno)
        super().visit_For(node, frame)


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox (no attributes starting with `_`, no unsafe calls), plus bounded `*`, `**` and loops."""

    intercepted_binops = frozenset(["*", "**"])
    code_generator_class = _CountedLoops

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0  # an environment renders one report (see environment())

    def loop_steps(self, iterable):
        for item in iterable:
            self.steps += 1
            if self.steps > MAX_LOOP_STEPS:
                raise SecurityError(f"the template ran more than {MAX_LOOP_STEPS:,} loop steps")
            yield item

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_SEQUENCE:
                    raise SecurityError(f"repeating a sequence to more than {MAX_SEQUENCE:,} items is not allowed")
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"an exponent over {MAX_EXPONENT} is not allowed")
        return super().call_binop(context, operator, left, right)


def environment(extra_templates: list[Path] | None = None) -> jinja2.Environment:
    """Jinja environment; a team's template folder comes first, so it can override any block.

    Sandboxed: a template can read the results and format them, never reach Python objects' internals.
    """
    loaders = [jinja2.FileSystemLoader(str(p)) for p in (extra_templates or [])]
    loaders.append(jinja2.FileSystemLoader(str(templates_dir())))
    # "qcheck/<name>" is always the built-in template, so a team's own report.html.j2 can
    # {% extends "qcheck/report.html.j2" %} and replace only the blocks it names.
    loaders.append(jinja2.PrefixLoader({"qcheck": jinja2.FileSystemLoader(str(templates_dir()))}))
    env = _Sandbox(loader=jinja2.ChoiceLoader(loaders), autoescape=jinja2.select_autoescape(["html", "j2"]),
                   undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, db=_db, pct=_pct, size=_size, cos=_cosine)
    return env


def check_template_dirs(dirs: list[Path]) -> None:
    """Compile a team's templates now (syntax, undefined names): exit 2 before any model runs."""
    problems = check_templates(dirs, environment(dirs), templates_dir())
    if problems:
        raise QcheckError(problems)


def build_context(results: dict) -> dict:
    """What the template needs, computed from results: groups, worst lists, plots."""
    findings = results["findings"]
    rules = {r["code"]: r for r in results["rules"]}
    groups = []
    for code in dict.fromkeys(f["code"] for f in findings):
        items = [f for f in findings if f["code"] == code]
        groups.append({"rule": rules.get(code, {"code": code, "name": items[0]["rule"], "summary": "", "why": "", "fix": ""}),
                       "severity": items[0]["severity"], "findings": items})
    acts = [t for t in results["tensors"] if t["kind"] == "activation"]
    # without the per-layer twin (nothing read its columns: results.measure.not_computed) the worst are ranked by
    # the whole-model rmse/scale, and the report says so
    per_layer_skipped = (results["measure"].get("not_computed") or {}).get(PER_LAYER_GROUP)
    key = "whole_rmse_scale" if per_layer_skipped else "rmse_scale"
    worst = sorted((t for t in acts if isinstance(t.get(key), float) and math.isfinite(t[key])),
                   key=lambda t: -t[key])[:25]
    figures = {k: svg_data_uri(v) for k, v in plots.all_plots(results).items()}
    _, _, measured_worse = partial_float_rows(results)
    graph = graph_view(results)
    for page in (graph or {}).get("pages", []):
        page["uri"] = svg_data_uri(page.pop("svg"))
    layer_figures = [{"name": m["name"], "text": m["expr"] or f"function {m['function']}",
                      "uri": svg_data_uri(plots.layer_metric_per_layer(results, m["name"]))}
                     for m in results["layer_metrics"] if m["chart"]]
    return {"r": results, "graph": graph, "layer_figures": layer_figures, "groups": groups, "worst": worst, "figures": figures,
            "per_layer_skipped": per_layer_skipped,
            "next_step": next_step(results), "worst_sample": worst_sample(results),
            "measured_worse": {r["label"] for r in measured_worse},
            "odd_values": odd_values(results["tensors"]),
            "analysis_figures": _uris(analysis_plots(results)),
            "n_activations": len(acts), "n_weights": len(results["tensors"]) - len(acts)}


def worst_sample(results: dict) -> dict | None:
    """The lowest per-sample output cosine: {cosine, output, sample (0-based evaluation index)}."""
    best = None
    for o in results["model_metrics"]["outputs"]:
        for i, c in enumerate(o.get("per_sample_cosine") or []):
            if isinstance(c, float) and math.isfinite(c) and (best is None or c < best["cosine"]):
                best = {"cosine": c, "output": o["name"], "sample": i}
    return best


def odd_values(tensors: list[dict]) -> dict[str, int]:
    """How many tensors show rmse/scale = inf (zero scale) and cosine = NaN (a zero tensor): the report explains them."""
    def count(key, test):
        return sum(1 for t in tensors for k in (key, "whole_" + key)
                   if isinstance(t.get(k), float) and test(t[k]))
    return {"inf_rmse_scale": count("rmse_scale", math.isinf), "nan_cosine": count("cosine", math.isnan)}


def _uris(value):
    """SVG text -> data URIs, through nested dicts and lists."""
    if isinstance(value, dict):
        return {k: _uris(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_uris(v) for v in value]
    return svg_data_uri(value) if isinstance(value, str) and value.startswith("<svg") else value


def render_html(results: dict, template_dirs: list[Path] | None = None) -> str:
    from qcheck.report import toc

    env = environment(template_dirs)
    results = printable_data(results)  # a model's names may hold control characters: shown as escapes
    try:
        css, _, _ = env.loader.get_source(env, "report.css")  # a team folder may bring its own stylesheet
        extra = _optional_source(env, "extra.css")  # ... or only additions to ours
        page = env.get_template("report.html.j2").render(css=css + ("\n" + extra if extra else ""),
                                                           **build_context(results))
    except (jinja2.TemplateError, UnicodeDecodeError) as exc:
        raise template_problem(exc, template_dirs or []) from None
    except (ArithmeticError, TypeError, ValueError, RecursionError) as exc:  # `{{ 1 / 0 }}`, sandbox's range limit
        if not from_user_template(exc, template_dirs or []):
            raise
        raise template_problem(exc, template_dirs or []) from None
    return toc.fill(page)


def _optional_source(env: jinja2.Environment, name: str) -> str | None:
    try:
        return env.loader.get_source(env, name)[0]
    except jinja2.TemplateNotFound:
        return None


def write_atomic(path: Path, data: bytes) -> None:
    with replaced_whole(path) as staged:
        staged.write_bytes(data)


def render_report(results: dict, out_dir: Path, formats: list[str], template_dirs: list[Path] | None = None,
                  log: Callable[[str], None] = lambda m: None) -> list[Path]:
    html = render_html(results, template_dirs)
    written = []
    if "html" in formats:
        path = out_dir / "report.html"
        write_atomic(path, html.encode("utf-8"))
        written.append(path)
    if "pdf" in formats:
        log("writing the PDF ...")
        written.append(write_pdf(html, out_dir / "report.pdf", log))
    return written


def write_pdf(html: str, path: Path, log: Callable[[str], None] = lambda m: None) -> Path:
    try:
        import weasyprint
    except (ImportError, OSError) as exc:  # OSError: Pango or its fonts are missing
        raise QcheckError(Problem(
            f"cannot make the PDF: WeasyPrint is not usable here ({exc})",
            hint="install Pango (Debian/Ubuntu: apt-get install libpango-1.0-0 libpangoft2-1.0-0), "
                 "or set report.formats: [html]")) from None
    with weasyprint_errors() as errors:
        pdf = weasyprint.HTML(string=html, base_url=str(path.parent), url_fetcher=_embedded_only()).write_pdf()
    for message in dict.fromkeys(errors):
        log(f"warning: {path.name}: WeasyPrint left out what it could not draw: {message}")
    write_atomic(path, pdf)
    return path


@contextmanager
def weasyprint_errors():
    """WeasyPrint's errors (an image it cannot load, a template's `<img src=file:...>` the fetcher refuses) as
    short lines, kept from the terminal: its own log lines carry whole data: URIs, megabytes of base64."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            args = tuple(_short(a) for a in record.args) if isinstance(record.args, tuple) else record.args
            records.append(str(record.msg) % args if args else str(record.msg))

    logger, handler = logging.getLogger("weasyprint"), Keep(logging.ERROR)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _short(value) -> str:
    text = str(value)
    return text[:60] + "..." if text.startswith("data:") and len(text) > 60 else text[:300]



def _embedded_only():
    """The report embeds everything as data: URIs; a template cannot make the PDF read a local file or the network."""
    from weasyprint import urls

    if hasattr(urls, "URLFetcher"):  # WeasyPrint >= 68
        return urls.URLFetcher(allowed_protocols=["data"])

    def fetch(url, *args, **kwargs):
        if not url.startswith("data:"):
            raise ValueError(f"the report may only embed data: URIs, not {url[:80]}")
        return urls.default_url_fetcher(url, *args, **kwargs)
    return fetch
