"""`qcheck validate policy.yaml` (or a sweep file): check everything that can be checked without running the model."""

from __future__ import annotations

import json

from qcheck.cli import exit_codes
from qcheck.cli.progress import Reporter
from qcheck.errors import printable


def cmd_validate(args) -> int:
    from qcheck.run.sweep import is_sweep_file, validate_sweep
    from qcheck.run.validate import validate

    sweep = is_sweep_file(args.policy)  # told apart by its top-level keys (`policies:`, no `model:`)
    term = Reporter.for_terminal(quiet=args.quiet, json_lines=args.json)
    try:
        summary = (validate_sweep if sweep else validate)(args.policy, progress=term.progress)
    finally:
        term.close()
    if args.json:
        print(json.dumps({"valid": True, **summary}, indent=1))
    elif not args.quiet:
        print(printable(_sweep_text(args.policy, summary) if sweep else _policy_text(args.policy, summary)))
    return exit_codes.PASS


def _policy_text(path, summary: dict) -> str:
    data = "; ".join(f"{k}: {v['samples']} samples ({v['format']})" for k, v in summary["data"].items())
    given = summary.get("quantized")
    lines = [f"{path}: valid", f"  model: {summary['model']}"]
    lines += [f"  quantized: {given['path']} ({given['format']})"] if given else []
    lines += [f"  data: {data}",
             f"  rules: {summary['rules']}; requirements: {len(summary['requirements'])}"]
    return "\n".join(lines + [f"  warning: {w}" for w in summary["warnings"]])


def _sweep_text(path, summary: dict) -> str:
    return (f"{path}: valid sweep\n  {summary['runs']} runs: {len(summary['policies'])} policies x "
            f"{len(summary['combinations'])} combinations ({', '.join(summary['combinations'])})\n"
            f"  executor: {summary['executor']}")
