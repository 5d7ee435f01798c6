"""`qcheck report results.json`: render the report again, without running a model."""

from __future__ import annotations

from pathlib import Path

from qcheck.cli import exit_codes
from qcheck.errors import QcheckError


def cmd_report(args) -> int:
    from qcheck.report import render_report
    from qcheck.results.files import load_results

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
    return exit_codes.PASS


def _policy_templates(results: dict) -> list[Path]:
    """The run's own report.templates folders, when they still exist, so a re-render looks the same."""
    policy = results["policy"]
    wanted = ((policy["document"] or {}).get("report") or {}).get("templates") or []
    folder = Path(policy["path"]).parent
    return [p for p in ((folder / t) for t in ([wanted] if isinstance(wanted, str) else wanted)) if p.is_dir()]
