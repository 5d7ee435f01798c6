"""A sweep's summary.html and summary.pdf, rendered from the summary's plain data (run/sweep/summary.py)."""

from __future__ import annotations

from pathlib import Path

from qcheck.errors import printable_data
from qcheck.report.render import environment, write_atomic, write_pdf


def sweep_context(summary: dict) -> dict:
    """Rows grouped by policy, in the sweep's order, and the settings that vary (the table's columns)."""
    groups: dict[str, list[dict]] = {}
    for r in summary["runs"]:
        groups.setdefault(r["policy_name"], []).append(r)
    keys = list(dict.fromkeys(k for r in summary["runs"] for k in r["settings"]))
    return {"s": summary, "groups": groups, "keys": keys}


def render_sweep_html(summary: dict) -> str:
    env = environment()
    css, _, _ = env.loader.get_source(env, "report.css")
    return env.get_template("sweep_summary.html.j2").render(css=css, **sweep_context(printable_data(summary)))


def render_sweep_summary(summary: dict, folder: Path, formats: list[str]) -> list[Path]:
    html = render_sweep_html(summary)
    written = []
    if "html" in formats:
        write_atomic(folder / "summary.html", html.encode("utf-8"))
        written.append(folder / "summary.html")
    if "pdf" in formats:
        written.append(write_pdf(html, folder / "summary.pdf"))
    return written
