"""`qcheck report results.json`: render the report again, without running a model."""

from __future__ import annotations

from pathlib import Path

from qcheck.cli import exit_codes
from qcheck.errors import QcheckError
from qcheck.run.output_folder import add_to_manifest, read_manifest


def cmd_report(args) -> int:
    from qcheck.report import check_template_dirs, render_report
    from qcheck.results.files import load_results

    results = load_results(args.results)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("html", "pdf")]
    if bad:
        raise QcheckError(f"--formats: unknown format(s) {', '.join(bad)}; use html and/or pdf")
    out = args.out or args.results.parent
    _check_not_foreign(out, formats)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QcheckError(f"--out: cannot create {out}: {exc.strerror or exc}") from None
    for t in args.templates:
        if not t.is_dir():
            raise QcheckError(f"--templates: not a folder: {t}")
    templates = args.templates or _policy_templates(results)
    check_template_dirs(templates)
    written = render_report(results, out, formats, template_dirs=templates)
    add_to_manifest(out, [p.name for p in written])
    for path in written:
        print(path)
    return exit_codes.PASS


def _check_not_foreign(out: Path, formats: list[str]) -> None:
    """Overwrite a report.html/.pdf only when a qcheck run or report wrote it (the folder's manifest lists it)."""
    listed = set(read_manifest(out) or []) if out.is_dir() else set()
    foreign = [f"report.{f}" for f in formats if (out / f"report.{f}").exists() and f"report.{f}" not in listed]
    if foreign:
        raise QcheckError(f"--out: {out} already holds {', '.join(foreign)}, which qcheck did not write; refusing to "
                          "overwrite it", hint="choose another --out folder, or move the file")


def _policy_templates(results: dict) -> list[Path]:
    """The run's own report.templates folders, when they still exist, so a re-render looks the same."""
    policy = results["policy"]
    wanted = ((policy["document"] or {}).get("report") or {}).get("templates") or []
    folder = Path(policy["path"]).parent
    return [p for p in ((folder / t) for t in ([wanted] if isinstance(wanted, str) else wanted)) if p.is_dir()]
