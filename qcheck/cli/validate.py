"""`qcheck validate policy.yaml`: check everything that can be checked without running the model."""

from __future__ import annotations

import json

from qcheck.cli import exit_codes
from qcheck.cli.progress import Reporter


def cmd_validate(args) -> int:
    from qcheck.run.validate import validate

    term = Reporter.for_terminal(quiet=args.quiet, json_lines=args.json)
    try:
        summary = validate(args.policy, progress=term.progress)
    finally:
        term.close()
    if args.json:
        print(json.dumps({"valid": True, **summary}, indent=1))
    elif not args.quiet:
        data = "; ".join(f"{k}: {v['samples']} samples ({v['format']})" for k, v in summary["data"].items())
        print(f"{args.policy}: valid\n  model: {summary['model']}\n  data: {data}\n"
              f"  rules: {summary['rules']}; requirements: {len(summary['requirements'])}")
        for w in summary["warnings"]:
            print(f"  warning: {w}")
    return exit_codes.PASS
