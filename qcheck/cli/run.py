"""`qcheck run policy.yaml`: the pipeline, then the one-screen summary."""

from __future__ import annotations

import json
from dataclasses import replace

from qcheck import __version__
from qcheck.cli import exit_codes
from qcheck.cli.progress import Reporter
from qcheck.cli.summary import json_summary, report_path, text_summary
from qcheck.errors import printable


def cmd_run(args) -> int:
    from qcheck.policy.loader import load_policy
    from qcheck.run.pipeline import Console, run

    policy = load_policy(args.policy)
    if args.junit or args.summary_md:
        from qcheck.cli.ci_outputs import check_paths
        from qcheck.run.pipeline import user_inputs

        check_paths({"--junit": args.junit, "--summary-md": args.summary_md}, user_inputs(policy))
    shard_options(policy.analyses, args)
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
        print(printable(text_summary(results)))
    return exit_codes.FAIL if status == "fail" else exit_codes.PASS


def shard_options(analyses, args) -> None:
    """--executor, --workers, --address, --shards over the policy's analyses.executor and analyses.shards."""
    from qcheck.errors import Problem, QcheckError
    from qcheck.policy.spec import ExecutorSpec

    given = {k: v for k, v in (("workers", args.workers), ("address", args.address)) if v is not None}
    for name, value in (("--workers", args.workers), ("--shards", args.shards)):
        if value is not None and value < 1:
            raise QcheckError(Problem(f"{name} must be at least 1, not {value}"))
    if args.executor:
        base = analyses.executor if analyses.executor and analyses.executor.kind == args.executor else ExecutorSpec()
        analyses.executor = replace(base, kind=args.executor, **given)
    elif given:
        if analyses.executor is None:
            raise QcheckError(Problem(f"{' and '.join('--' + k for k in given)} need an executor",
                                      hint="add --executor local or --executor ray (or analyses.executor in the policy)"))
        analyses.executor = replace(analyses.executor, **given)
    if analyses.executor and analyses.executor.kind == "local" and analyses.executor.address:
        raise QcheckError(Problem("--address is for --executor ray", hint="leave it out, or use --executor ray"))
    if args.shards is not None:
        analyses.shards = args.shards
