"""The report: results data -> HTML (self-contained) and PDF (WeasyPrint).

This layer reads results only; it never runs a model. `qcheck report
results.json` re-renders a report from a previous run.
"""

from qcheck.report.render import check_template_dirs, render_report

__all__ = ["check_template_dirs", "render_report"]
