"""Command line: `qcheck run`, `qcheck report`, `qcheck rules`, `qcheck apply`, `qcheck diff`.

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
                epilog="commands:\n  run      quantize, measure, judge and report (from a policy file)\n"
                       "  report   re-render a report from results.json\n"
                       "  rules    list the rules, or show one rule's documentation\n"
                       "  apply    rebuild the quantized model a lock file describes\n"
                       "  diff     compare two runs; the exit code gates a merge\n\n"
                       "example:\n  qcheck run examples/ppocr-det/qcheck.yaml")
    p.add_argument("--version", action="version", version=f"qcheck {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    run = sub.add_parser("run", help="quantize, measure, judge and report", epilog=EPILOG_RUN,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Quantize the policy's model with ONNX Runtime, measure every tensor, run the "
                                     "rules, judge the `require:` lines and write the report.")
    run.add_argument("policy", type=Path, help="the policy file (YAML)")
    run.add_argument("--out", type=Path, help="output folder (default: the policy's report.out)")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    run.add_argument("--json", action="store_true", help="print the verdict and summary as JSON on stdout")

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
        return {"run": cmd_run, "report": cmd_report, "rules": cmd_rules, "apply": cmd_apply,
                "diff": cmd_diff}[args.command](args)
    except QcheckError as exc:
        print(f"qcheck: error: {exc}", file=sys.stderr)
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


class _TerminalConsole:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"  {msg}", file=sys.stderr, flush=True)

    def progress(self, stage: str, i: int, n: int) -> None:
        if self.quiet or not self.tty:
            return
        end = "\n" if i == n else ""
        print(f"\r    {stage}: {i}/{n} samples", end=end, file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    from qcheck.pipeline import Console, run
    from qcheck.policy import load_policy

    policy = load_policy(args.policy)
    term = _TerminalConsole(args.quiet or args.json)
    term.log(f"qcheck {__version__}: {args.policy}")
    results = run(policy, out=args.out, console=Console(log=term.log, progress=term.progress))
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
    search = results.get("search")
    if search:
        if search["status"] == "found":
            lines.append(f"search ({search['strategy']}, {search['trials']} trials): {search['why']}")
        elif search["status"] == "failed":
            lines.append(f"search ({search['strategy']}, {search['trials']} trials): nothing meets the requirements "
                         f"within the budget; recommended: {search['recommendation']['action']}")
    lines.append(f"report: {results.get('output_folder')}/report.html (and report.pdf, layer_stats.csv, results.json)")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


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
    written = render_report(results, out, formats, template_dirs=args.templates)
    for path in written:
        print(path)
    return EXIT_PASS


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
