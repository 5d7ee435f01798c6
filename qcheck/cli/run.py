"""`qcheck run policy.yaml`: the pipeline, then the one-screen summary."""

from __future__ import annotations

import json

from qcheck import __version__
from qcheck.cli import exit_codes
from qcheck.cli.progress import Reporter
from qcheck.cli.summary import json_summary, report_path, text_summary


def cmd_run(args) -> int:
    from qcheck.policy.loader import load_policy
    from qcheck.run.pipeline import Console, run

    policy = load_policy(args.policy)
    term = Reporter.for_terminal(quiet=args.quiet, json_lines=args.json)
    term.log(f"qcheck {__version__}: {args.policy}")
    try:
        results = run(policy, out=args.out, console=Console(log=term.log, progress=term.progress))
    finally:
        term.close()
    if args.junit or args.summary_md:
        from qcheck.cli.ci_outputs import run_junit, run_markdown, write_outputs

        write_outputs(args.junit, run_junit(results), args.summary_md,
                      run_markdown(results, report_path(results.get("output_folder"))))
    status = results["verdict"]["status"]
    if args.json:
        print(json.dumps(json_summary(results), indent=1, default=str))
    elif not args.quiet:
        print(text_summary(results))
    return exit_codes.FAIL if status == "fail" else exit_codes.PASS
