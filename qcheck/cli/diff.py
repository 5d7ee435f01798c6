"""`qcheck diff A B`: what changed between two runs; the exit code gates a merge."""

from __future__ import annotations

import json

from qcheck.cli import exit_codes
from qcheck.errors import QcheckError


def cmd_diff(args) -> int:
    from qcheck.results.files import encode
    from qcheck.run.diff import diff_runs, format_diff, load_run

    if args.tolerance < 0:
        raise QcheckError("--tolerance must be >= 0")
    if args.junit or args.summary_md:
        from qcheck.cli.ci_outputs import check_paths

        check_paths({"--junit": args.junit, "--summary-md": args.summary_md},
                    [(f"results of run {k}", p / "results.json" if p.is_dir() else p)
                     for k, p in (("A", args.a), ("B", args.b))])
    d = diff_runs(load_run(args.a), load_run(args.b), args.tolerance)
    print(json.dumps(encode(d), indent=1) if args.json else format_diff(d))
    if args.junit or args.summary_md:
        from qcheck.cli.ci_outputs import diff_junit, diff_markdown, write_outputs

        write_outputs(args.junit, diff_junit(d), args.summary_md, diff_markdown(d))
    return exit_codes.FAIL if d["fails"] else exit_codes.PASS
