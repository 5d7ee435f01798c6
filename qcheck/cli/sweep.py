"""`qcheck sweep sweep.yaml`: many ordinary runs (policies × overrides), one summary; the worst run's exit code."""

from __future__ import annotations

import sys
from dataclasses import replace

from qcheck.cli import exit_codes
from qcheck.errors import printable


def cmd_sweep(args) -> int:
    from qcheck.run.sweep import load_sweep, run_sweep

    spec = load_sweep(args.sweep, out=args.out)
    executor = replace(spec.executor, **{k: v for k, v in (("kind", args.executor), ("workers", args.workers),
                                                            ("address", args.address)) if v is not None})
    log = (lambda m: None) if args.quiet else (lambda m: print(printable(m), file=sys.stderr, flush=True))
    summary = run_sweep(spec, executor, force=args.force, log=log)
    if not args.quiet:
        c = summary["counts"]
        print(f"{len(summary['runs'])} runs: {c['pass']} pass, {c['fail']} fail, {c['no-requirements']} without "
              f"requirements, {c['error']} error, {c['bug']} qcheck bug"
              + (f", {c['resources']} out of resources" if c["resources"] else "") + f"; {summary['reused']} reused")
        for r in summary["runs"]:
            if r["exit_code"] >= exit_codes.USER_ERROR:
                print(printable(f"  {r['run']}: {r['status']}: "
                               f"{r['message'].strip().splitlines()[-1 if r['status'] == 'bug' else 0]}"))
        print(f"summary: {spec.out / 'summary' / 'summary.html'}")
    return summary["exit_code"]
