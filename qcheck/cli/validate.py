"""`qcheck validate policy.yaml`: check everything that can be checked without running the model."""

from __future__ import annotations

import json

from qcheck.cli import exit_codes
from qcheck.cli.progress import Reporter


def cmd_validate(args) -> int:
    from qcheck.run.validate import validate

    if _is_sweep_file(args.policy):
        return _validate_sweep(args)
    term = Reporter.for_terminal(quiet=args.quiet, json_lines=args.json)
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
    return exit_codes.PASS


def _is_sweep_file(path) -> bool:
    """A sweep file is told from a policy by its top-level keys (`policies:`, no `model:`)."""
    from qcheck.errors import QcheckError
    from qcheck.policy.yaml_spans import load_yaml
    from qcheck.run.sweep import is_sweep_document

    try:
        return is_sweep_document(load_yaml(path))
    except QcheckError:  # unreadable or not YAML: the policy loader says so, with the line
        return False


def _validate_sweep(args) -> int:
    from qcheck.run.sweep import validate_sweep

    term = Reporter.for_terminal(quiet=args.quiet, json_lines=args.json)
    try:
        summary = validate_sweep(args.policy, progress=term.progress)
    finally:
        term.finish()
    if args.json:
        print(json.dumps({"valid": True, **summary}, indent=1))
    elif not args.quiet:
        print(f"{args.policy}: valid sweep\n  {summary['runs']} runs: {len(summary['policies'])} policies x "
              f"{len(summary['combinations'])} combinations ({', '.join(summary['combinations'])})\n"
              f"  executor: {summary['executor']}")
    return exit_codes.PASS
