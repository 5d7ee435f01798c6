"""The argument parser: every subcommand, its help and its examples."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcheck import __version__
from qcheck.cli import exit_codes

EPILOG_RUN = """example:
  qcheck run examples/ppocr-det/qcheck.yaml
  qcheck run policy.yaml --out reports/today --quiet
  qcheck run policy.yaml --junit qcheck.junit.xml --summary-md qcheck.md   # in CI
  qcheck run policy.yaml --executor ray --address auto   # sensitivity and screening in shards on a Ray cluster

exit codes: 0 requirements hold, 1 they do not, 2 policy/model/data error, 3 qcheck bug"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors exit 2 with one line, as argparse does, plus a pointer to --help
        self.print_usage(sys.stderr)
        self.exit(exit_codes.USER_ERROR, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


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
                       "  diff     compare two runs; the exit code gates a merge\n"
                       "  sweep    many runs (policies x overrides) locally or on Ray, one summary\n\n"
                       "example:\n  qcheck init model.onnx -o qcheck.yaml\n  qcheck validate qcheck.yaml\n"
                       "  qcheck run qcheck.yaml")
    p.add_argument("--version", action="version", version=f"qcheck {__version__}")
    sub = p.add_subparsers(dest="command", metavar="command", parser_class=_Parser)
    _add_init(sub)
    _add_validate(sub)
    _add_run(sub)
    _add_report(sub)
    _add_rules(sub)
    _add_docs(sub)
    _add_apply(sub)
    _add_diff(sub)
    _add_sweep(sub)
    return p


def _add_sweep(sub) -> None:
    sw = sub.add_parser("sweep", help="run many policies x overrides, locally or on Ray; one summary",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Run every policy the sweep file names under every combination of its `matrix:` "
                                    "overrides, each an ordinary run in its own folder (runs/<policy>/<combination>/), "
                                    "and write summary/summary.{html,pdf,csv,json}. A run whose fingerprint (policy "
                                    "with overrides, model, data, qcheck version) matches a finished run of the sweep "
                                    "folder is reused. A run that fails does not stop the others.",
                        epilog="examples:\n  qcheck sweep examples/zoo/sweep.yaml\n"
                               "  qcheck sweep sweep.yaml --workers 4\n"
                               "  qcheck sweep sweep.yaml --executor ray --address auto\n\n"
                               "exit codes: the worst run's: 0 all pass, 1 a run fails its requirements, 2 a policy/"
                               "model/data error in a run (the others still ran), 3 a qcheck bug")
    sw.add_argument("sweep", type=Path, help="the sweep file (YAML: policies, matrix, out, executor)")
    sw.add_argument("--out", type=Path, help="sweep folder (default: the sweep file's out:, else sweep-out)")
    sw.add_argument("--executor", choices=["local", "ray"], help="where runs execute (default: the sweep file's "
                                                                 "executor:, else local)")
    sw.add_argument("--workers", type=int, help="local: processes at once (default: the number of cores); ray "
                                                "without --address: CPUs of the local cluster it starts")
    sw.add_argument("--address", help="ray: auto (a running cluster) or ray://host:port (default: start a local "
                                      "cluster)")
    sw.add_argument("--force", action="store_true", help="run every combination again, even finished ones")
    sw.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _add_init(sub) -> None:
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


def _add_validate(sub) -> None:
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


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="quantize, measure, judge and report", epilog=EPILOG_RUN,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Quantize the policy's model with ONNX Runtime, measure every tensor, run the "
                                     "rules, judge the `require:` lines and write the report.")
    run.add_argument("policy", type=Path, help="the policy file (YAML)")
    run.add_argument("--out", type=Path, help="output folder (default: the policy's report.out)")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    run.add_argument("--json", action="store_true",
                     help="print the verdict and summary as JSON on stdout, and progress as JSON lines on stderr")
    run.add_argument("--junit", type=Path, metavar="FILE",
                     help="also write a JUnit XML file: one test case per require: line and per error-severity "
                          "finding (for CI test reporters)")
    run.add_argument("--summary-md", type=Path, metavar="FILE",
                     help="also write a Markdown summary for a PR comment; appended to $GITHUB_STEP_SUMMARY when set")
    run.add_argument("--executor", choices=["local", "ray"],
                     help="where node sensitivity's configurations and the search's screened candidates run, in "
                          "shards (default: the policy's analyses.executor, else threads of this process): local, a "
                          "process pool; ray, a Ray cluster")
    run.add_argument("--workers", type=int, help="with --executor: local worker processes, or the CPUs of the local "
                                                 "Ray cluster it starts (default: the number of cores)")
    run.add_argument("--address", help="with --executor ray: auto (a running cluster) or ray://host:port (default: "
                                       "start a local cluster on 127.0.0.1)")
    run.add_argument("--shards", type=int, help="shards per group of configurations or candidates (default: the "
                                                   "workers)")


def _add_report(sub) -> None:
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


def _add_rules(sub) -> None:
    rules = sub.add_parser("rules", help="list rules, or show one",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="List the rules a policy would run (code, severity, name, summary), or print "
                                       "one rule's documentation.",
                           epilog="examples:\n  qcheck rules\n  qcheck rules QC101\n  qcheck rules --policy policy.yaml")
    rules.add_argument("rule", nargs="?", help="a rule code or name, e.g. QC101 or quant.rmse_scale")
    rules.add_argument("--policy", type=Path, help="use the packs, disables and parameters of this policy")
    rules.add_argument("--stats", action="store_true", help="list the statistics rule conditions can use")


def _add_docs(sub) -> None:
    docs = sub.add_parser("docs", help="write the policy and rule references",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Generate docs/policy.md from the policy schema and docs/rules.md from the "
                                      "rule packs, so the references cannot drift from the code.",
                          epilog="examples:\n  qcheck docs            # rewrite docs/ in the source checkout\n"
                                 "  qcheck docs --out /tmp/docs\n  qcheck docs --check    # exit 1 if docs/ is stale")
    docs.add_argument("--out", type=Path, help="folder to write (default: the checkout's docs/)")
    docs.add_argument("--check", action="store_true", help="write nothing; exit 1 when the files differ")


def _add_apply(sub) -> None:
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


def _add_diff(sub) -> None:
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
    df.add_argument("--junit", type=Path, metavar="FILE",
                    help="also write a JUnit XML file: one test case per metric, per new error finding and for "
                         "the verdict (for CI test reporters)")
    df.add_argument("--summary-md", type=Path, metavar="FILE",
                    help="also write a Markdown summary for a PR comment; appended to $GITHUB_STEP_SUMMARY when set")
