"""Command line: `qcheck init`, `qcheck validate`, `qcheck run`, `qcheck report`, `qcheck rules`, `qcheck docs`,
`qcheck apply`, `qcheck diff`.

Exit codes, for CI:
  0  the policy's requirements hold (or it has none)
  1  they do not
  2  a usage, policy, model or data error (one message, no traceback)
  3  a bug in qcheck (with a traceback to report)
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from qcheck import __version__
from qcheck.errors import QcheckError

EXIT_PASS, EXIT_FAIL, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3

EPILOG_RUN = """example:
  qcheck run examples/ppocr-det/qcheck.yaml
  qcheck run policy.yaml --out reports/today --quiet

exit codes: 0 requirements hold, 1 they do not, 2 policy/model/data error, 3 qcheck bug"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with one line, as argparse does, plus a pointer to --help
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qcheck", description="Find where an int8 ONNX model loses accuracy, and what to do about it.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="commands:\n  init     write a commented starter policy for a model\n"
                       "  validate check a policy and its data without running anything\n"
                       "  run      quantize, measure, judge and report (from a policy file)\n"
                       "  report   re-render a report from results.json\n"
                       "  rules    list the rules, or show one rule's documentation\n"
                       "  docs     write the policy and rule references (docs/*.md)\n"
                       "  apply    rebuild the quantized model a lock file describes\n"
                       "  diff     compare two runs; the exit code gates a merge\n\n"
                       "example:\n  qcheck init model.onnx -o qcheck.yaml\n  qcheck validate qcheck.yaml\n"
                       "  qcheck run qcheck.yaml")
    p.add_argument("--version", action="version", version=f"qcheck {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    init = sub.add_parser("init", help="write a commented starter policy for a model",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Read a model's inputs and outputs and write a commented policy: input shapes "
                                      "and dtypes, a data section to fill in, and defaults for the kind of model "
                                      "(images get a preprocess block, classifiers a top-1 metric). Nothing runs.",
                          epilog="examples:\n  qcheck init resnet50.onnx\n"
                                 "  qcheck init model.onnx -o policies/model.yaml --data data/calibration\n\n"
                                 "then: qcheck validate qcheck.yaml && qcheck run qcheck.yaml")
    init.add_argument("model", type=Path, help="the float ONNX model")
    init.add_argument("-o", "--output", type=Path, default=Path("qcheck.yaml"), help="policy to write (default: qcheck.yaml)")
    init.add_argument("--data", help="calibration data folder to put in the policy (default: a placeholder)")
    init.add_argument("--force", action="store_true", help="overwrite an existing policy file")

    val = sub.add_parser("validate", help="check a policy and its data without running anything",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Check the policy (keys, types, paths, expressions), the model (readable, "
                                     "loadable by ONNX Runtime, input/output names) and every data sample (layout, "
                                     "count, shape, dtype, NaN/Inf). No calibration, no quantization.",
                         epilog="example:\n  qcheck validate examples/ppocr-det/qcheck.yaml\n\n"
                                "exit codes: 0 valid, 2 a problem (each printed with file and line)")
    val.add_argument("policy", type=Path, help="the policy file (YAML)")
    val.add_argument("--quiet", action="store_true", help="print nothing but errors")
    val.add_argument("--json", action="store_true", help="print what was checked as JSON on stdout")

    run = sub.add_parser("run", help="quantize, measure, judge and report", epilog=EPILOG_RUN,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Quantize the policy's model with ONNX Runtime, measure every tensor, run the "
                                     "rules, judge the `require:` lines and write the report.")
    run.add_argument("policy", type=Path, help="the policy file (YAML)")
    run.add_argument("--out", type=Path, help="output folder (default: the policy's report.out)")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    run.add_argument("--json", action="store_true",
                     help="print the verdict and summary as JSON on stdout, and progress as JSON lines on stderr")

    rep = sub.add_parser("report", help="re-render a report from results.json",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Render report.html and report.pdf again from a run's results.json, without "
                                     "running any model.",
                         epilog="example:\n  qcheck report qcheck-out/results.json --out /tmp/again")
    rep.add_argument("results", type=Path, help="a results.json written by `qcheck run`")
    rep.add_argument("--out", type=Path, help="folder for the report (default: next to results.json)")
    rep.add_argument("--formats", default="html,pdf", help="comma-separated: html, pdf (default: both)")
    rep.add_argument("--templates", type=Path, action="append", default=[],
                     help="a folder of templates overriding the built-in ones (repeatable)")

    rules = sub.add_parser("rules", help="list rules, or show one",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="List the rules a policy would run (code, severity, name, summary), or print "
                                       "one rule's documentation.",
                           epilog="examples:\n  qcheck rules\n  qcheck rules QC101\n  qcheck rules --policy policy.yaml")
    rules.add_argument("rule", nargs="?", help="a rule code or name, e.g. QC101 or quant.rmse_scale")
    rules.add_argument("--policy", type=Path, help="use the packs, disables and parameters of this policy")
    rules.add_argument("--stats", action="store_true", help="list the statistics rule conditions can use")

    docs = sub.add_parser("docs", help="write the policy and rule references",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Generate docs/policy.md from the policy schema and docs/rules.md from the "
                                      "rule packs, so the references cannot drift from the code.",
                          epilog="examples:\n  qcheck docs            # rewrite docs/ in the source checkout\n"
                                 "  qcheck docs --out /tmp/docs\n  qcheck docs --check    # exit 1 if docs/ is stale")
    docs.add_argument("--out", type=Path, help="folder to write (default: the checkout's docs/)")
    docs.add_argument("--check", action="store_true", help="write nothing; exit 1 when the files differ")

    ap = sub.add_parser("apply", help="rebuild the quantized model of a lock file",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Rebuild the quantized model that policy.lock.yaml describes, from the locked "
                                    "model, ranges and recipe, without calibrating or searching; check it is the same, "
                                    "byte for byte.",
                        epilog="example:\n  qcheck apply qcheck-out/policy.lock.yaml --out model.int8.onnx\n\n"
                               "exit codes: 0 identical to the locked model, 1 rebuilt but different bytes, "
                               "2 the model or ranges no longer match the lock")
    ap.add_argument("lock", type=Path, help="a policy.lock.yaml written by `qcheck run`")
    ap.add_argument("--out", type=Path, help="where to write the model (default: model.applied.onnx next to the lock)")
    ap.add_argument("--model", type=Path, help="the float model, if it moved (its hash must still match)")

    df = sub.add_parser("diff", help="compare two runs (results.json files or output folders)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Show what changed from run A to run B: verdict, model metrics, findings that "
                                    "appeared or went away, and the recipe. Fails (exit 1) on a new error-severity "
                                    "finding, a metric worse by more than --tolerance, or a verdict going from pass "
                                    "to fail.",
                        epilog="example:\n  qcheck diff main-out/ branch-out/ --tolerance 0.01\n\n"
                               "exit codes: 0 no regression, 1 regression, 2 unreadable input")
    df.add_argument("a", type=Path, help="the reference run: results.json or its folder")
    df.add_argument("b", type=Path, help="the new run: results.json or its folder")
    df.add_argument("--tolerance", type=float, default=0.001,
                    help="allowed worsening: absolute for cosine and top-k agreement, relative to A's value for the "
                         "others (default 0.001)")
    df.add_argument("--json", action="store_true", help="print the diff as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_ERROR
    try:
        return {"run": cmd_run, "report": cmd_report, "rules": cmd_rules, "init": cmd_init, "validate": cmd_validate,
                "docs": cmd_docs, "apply": cmd_apply, "diff": cmd_diff}[args.command](args)
    except QcheckError as exc:
        print(f"qcheck: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):  # CI parsing stdout gets the error too
            print(json.dumps({"error": [{"message": p.message, "file": p.file, "line": p.line, "hint": p.hint}
                                        for p in exc.problems], "exit_code": exc.exit_code}, indent=1))
        return exc.exit_code
    except KeyboardInterrupt:
        print("qcheck: interrupted; nothing was written over previous results", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("\nqcheck: internal error (a bug in qcheck, not in your input); please report it with the traceback above",
              file=sys.stderr)
        return EXIT_BUG


# --------------------------------------------------------------------------- run


def _reporter(quiet: bool, json_lines: bool = False):
    from qcheck.progress import Reporter

    return Reporter.for_terminal(quiet=quiet, json_lines=json_lines)


def cmd_run(args) -> int:
    from qcheck.pipeline import Console, run
    from qcheck.policy import load_policy

    policy = load_policy(args.policy)
    term = _reporter(args.quiet, args.json)
    term.log(f"qcheck {__version__}: {args.policy}")
    try:
        results = run(policy, out=args.out, console=Console(log=term.log, progress=term.progress))
    finally:
        term.finish()
    status = results["verdict"]["status"]
    if args.json:
        print(json.dumps(_summary(results), indent=1, default=str))
    elif not args.quiet:
        print(_text_summary(results))
    return EXIT_FAIL if status == "fail" else EXIT_PASS


def _summary(results: dict) -> dict:
    from qcheck.results import encode

    return encode({
        "verdict": results["verdict"]["status"],
        "requirements": results["verdict"]["requirements"],
        "model_metrics": results["model_metrics"]["aggregate"],
        "finding_counts": results["finding_counts"],
        "findings": results["findings"][:10],
        "search": None if not results.get("search") else {
            k: results["search"][k] for k in ("strategy", "status", "trials", "chosen", "why", "recommendation")},
        "output_folder": results.get("output_folder"),
    })


def _text_summary(results: dict) -> str:
    v = results["verdict"]
    agg = results["model_metrics"]["aggregate"]
    lines = ["", f"verdict: {v['status'].upper()}" + (f" ({', '.join(v['failing_metrics'])})" if v.get("failing_metrics") else "")]
    for q in v["requirements"]:
        values = ", ".join(f"{k} = {_fmt(val)}" for k, val in q["values"].items())
        lines.append(f"  [{'ok' if q['holds'] else 'FAIL'}] {q['text']}    ({values}){'  ' + q['note'] if q['note'] else ''}")
        if q.get("how_sure"):
            lines.append(f"        {q['how_sure']}")
    lines.append(f"outputs: cosine {_fmt(agg['cosine'])}, SQNR {_fmt(agg['sqnr'])} dB, max abs error {_fmt(agg['max_abs'])}"
                 + (f", top-1 agreement {100 * agg['top1']:.1f}%" if agg.get("top1") is not None else ""))
    for name, t in (results["model_metrics"].get("tasks") or {}).items():  # task metrics (qcheck/tasks)
        ci = t["values"][t["primary"]]["ci"] if t.get("primary") else [None, None]
        interval = f" (95% interval {_fmt(ci[0])} to {_fmt(ci[1])})" if ci[0] is not None else ""
        lines.append(f"task metric {name} ({t['task']}): {t['primary']} {_fmt(t['value'])}{interval}")
    quant = results.get("quantization") or {}
    recipe = quant.get("recipe") or {}
    if recipe:
        lines.append(f"recipe: {recipe.get('activations')} activations, {recipe.get('weights')} weights "
                     f"{'per channel' if recipe.get('per_channel') else 'per tensor'}, {recipe.get('calibration')} "
                     f"calibration; {quant.get('quantized_nodes')} nodes quantized, "
                     f"{len(quant.get('float_nodes') or [])} left in float")
        floats = quant.get("float_nodes") or []
        if floats:
            lines.append(f"  in float: {', '.join(floats[:6])}{f' and {len(floats) - 6} more' if len(floats) > 6 else ''}")
    counts = results["finding_counts"]
    lines.append(f"findings: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info")
    groups: dict[str, list] = {}
    for f in results["findings"]:  # already ordered: severity, rule, worst first
        groups.setdefault(f["code"], []).append(f)
    for code, items in list(groups.items())[:8]:
        worst = items[0]
        where = worst.get("tensor") or "model"
        more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
        lines.append(f"  {code} {worst['severity']:<7} {worst['rule']}: {where}: {worst['message']}{more}")
    if len(groups) > 8:
        lines.append(f"  ... {len(groups) - 8} more rules in the report")
    if results.get("compare"):
        from qcheck.compare import summary_lines

        lines.extend(summary_lines(results["compare"]))
    search = results.get("search")
    if search:
        if search["status"] == "found":
            lines.append(f"search ({search['strategy']}, {search['trials']} trials): {search['why']}")
        elif search["status"] == "failed":
            lines.append(f"search ({search['strategy']}, {search['trials']} trials): nothing meets the requirements "
                         f"within the budget; recommended: {search['recommendation']['action']}")
    folder = results.get("output_folder")
    if folder:
        names = sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
        report = [n for n in ("report.pdf", "report.html") if n in names]
        lines.append(f"report: {Path(folder) / report[0] if report else folder}  (in that folder: {', '.join(names)})")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# --------------------------------------------------------------------------- init, validate, docs


def cmd_init(args) -> int:
    from qcheck.init_policy import write_policy

    path = write_policy(args.model, args.output, data=args.data, force=args.force)
    print(f"wrote {path}\nnext: fill in its data section, then `qcheck validate {path}` and `qcheck run {path}`")
    return EXIT_PASS


def cmd_validate(args) -> int:
    from qcheck.validate import validate

    term = _reporter(args.quiet, args.json)
    try:
        summary = validate(args.policy, progress=term.progress)
    finally:
        term.finish()
    if args.json:
        print(json.dumps({"valid": True, **summary}, indent=1))
    elif not args.quiet:
        data = "; ".join(f"{k}: {v['samples']} samples ({v['format']})" for k, v in summary["data"].items())
        print(f"{args.policy}: valid\n  model: {summary['model']}\n  data: {data}\n"
              f"  rules: {summary['rules']}; requirements: {len(summary['requirements'])}")
        for w in summary["warnings"]:
            print(f"  warning: {w}")
    return EXIT_PASS


def cmd_docs(args) -> int:
    from qcheck.docs import check_docs, write_docs

    if args.check:
        stale = check_docs(args.out)
        for path in stale:
            print(f"stale: {path} (run `qcheck docs`)", file=sys.stderr)
        return EXIT_FAIL if stale else EXIT_PASS
    for path in write_docs(args.out):
        print(path)
    return EXIT_PASS


# --------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    from qcheck.report import render_report
    from qcheck.results import load_results

    results = load_results(args.results)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("html", "pdf")]
    if bad:
        raise QcheckError(f"--formats: unknown format(s) {', '.join(bad)}; use html and/or pdf")
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    for t in args.templates:
        if not t.is_dir():
            raise QcheckError(f"--templates: not a folder: {t}")
    templates = args.templates or _policy_templates(results)
    written = render_report(results, out, formats, template_dirs=templates)
    for path in written:
        print(path)
    return EXIT_PASS


def _policy_templates(results: dict) -> list[Path]:
    """The run's own report.templates folders, when they still exist, so a re-render looks the same."""
    policy = results.get("policy") or {}
    wanted = ((policy.get("document") or {}).get("report") or {}).get("templates") or []
    folder = Path(policy.get("path", ".")).parent
    return [p for p in ((folder / t) for t in ([wanted] if isinstance(wanted, str) else wanted)) if p.is_dir()]


# --------------------------------------------------------------------------- rules


def cmd_rules(args) -> int:
    from qcheck.catalog import TENSOR_STATISTICS
    from qcheck.policy import RulesSpec, load_policy
    from qcheck.rules import format_doc, load_rules

    if args.stats:
        from qcheck.model_stats import MODEL_STATISTICS

        width = max(len(k) for k in [*TENSOR_STATISTICS, *MODEL_STATISTICS])
        print("per tensor (scopes tensor, node, output):")
        for name, text in TENSOR_STATISTICS.items():
            print(f"  {name:<{width}}  {text}")
        print("per model (scope model):")
        for name, text in MODEL_STATISTICS.items():
            print(f"  {name:<{width}}  {text}")
        return EXIT_PASS
    spec = load_policy(args.policy).rules if args.policy else RulesSpec()
    rules = load_rules(spec, str(args.policy) if args.policy else None)
    if args.rule:
        match = [r for r in rules if args.rule in (r.code, r.name, *r.aliases)]
        if not match:
            raise QcheckError(f"no rule '{args.rule}'; `qcheck rules` lists them")
        print(format_doc(match[0].doc()))
        return EXIT_PASS
    for r in rules:
        print(f"{r.code}  {r.severity:<7}  {r.name:<26}  {r.summary}")
    return EXIT_PASS


# --------------------------------------------------------------------------- apply, diff


def cmd_apply(args) -> int:
    from qcheck.lock import apply_lock

    r = apply_lock(args.lock, args.out, args.model)
    for note in r["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if r["identical"]:
        print(f"{r['out']}: identical to the locked model (sha256 {r['sha256'][:16]}…)")
        return EXIT_PASS
    print(f"{r['out']}: rebuilt, but its bytes differ from the locked model (sha256 {r['sha256'][:16]}…, "
          f"locked {r['expected'][:16]}…)", file=sys.stderr)
    return EXIT_FAIL


def cmd_diff(args) -> int:
    from qcheck.diff import diff_runs, format_diff, load_run
    from qcheck.results import encode

    if args.tolerance < 0:
        raise QcheckError("--tolerance must be >= 0")
    d = diff_runs(load_run(args.a), load_run(args.b), args.tolerance)
    print(json.dumps(encode(d), indent=1) if args.json else format_diff(d))
    return EXIT_FAIL if d["fails"] else EXIT_PASS


if __name__ == "__main__":
    raise SystemExit(main())
