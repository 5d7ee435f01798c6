"""The one-screen summary of a run, as text or as JSON."""

from __future__ import annotations

from pathlib import Path


def json_summary(results: dict) -> dict:
    from qcheck.results.files import encode

    return encode({
        "verdict": results["verdict"]["status"],
        "requirements": results["verdict"]["requirements"],
        "model_metrics": results["model_metrics"]["aggregate"],
        "finding_counts": results["finding_counts"],
        "findings": results["findings"][:10],
        "search": None if not results.get("search") else {
            k: results["search"][k] for k in ("strategy", "status", "trials", "chosen", "why", "recommendation")},
        "output_folder": results.get("output_folder"),
    })


def text_summary(results: dict) -> str:
    v = results["verdict"]
    agg = results["model_metrics"]["aggregate"]
    lines = ["", f"verdict: {v['status'].upper()}" + (f" ({', '.join(v['failing_metrics'])})" if v.get("failing_metrics") else "")]
    for q in v["requirements"]:
        values = ", ".join(f"{k} = {fmt(val)}" for k, val in q["values"].items())
        lines.append(f"  [{'ok' if q['holds'] else 'FAIL'}] {q['text']}    ({values}){'  ' + q['note'] if q['note'] else ''}")
        if q.get("how_sure"):
            lines.append(f"        {q['how_sure']}")
    lines.append(f"outputs: cosine {fmt(agg['cosine'])}, SQNR {fmt(agg['sqnr'])} dB, max abs error {fmt(agg['max_abs'])}"
                 + (f", top-1 agreement {100 * agg['top1']:.1f}%" if agg.get("top1") is not None else ""))
    for name, t in (results["model_metrics"].get("tasks") or {}).items():  # task metrics (qcheck/tasks)
        ci = t["values"][t["primary"]]["ci"] if t.get("primary") else [None, None]
        interval = f" (95% interval {fmt(ci[0])} to {fmt(ci[1])})" if ci[0] is not None else ""
        lines.append(f"task metric {name} ({t['task']}): {t['primary']} {fmt(t['value'])}{interval}")
    quant = results.get("quantization") or {}
    recipe = quant.get("recipe") or {}
    given = results.get("given")
    if given:
        unmatched = f", {len(given['unmatched'])} not matched" if given["unmatched"] else ""
        lines.append(f"quantized model given: {given['file']} ({given['format']}); "
                     f"{given['matched'] if given['matched'] is not None else 'its'} tensors matched to the float model"
                     f"{unmatched}")
    if recipe:
        nodes = "" if quant.get("quantized_nodes") is None else f"; {quant.get('quantized_nodes')} nodes quantized, " \
            f"{len(quant.get('float_nodes') or [])} left in float"
        calibration = "its own scales" if given else f"{recipe.get('calibration')} calibration"
        lines.append(f"recipe: {recipe.get('activations')} activations, {recipe.get('weights')} weights "
                     f"{'per channel' if recipe.get('per_channel') else 'per tensor'}, {calibration}{nodes}")
        floats = quant.get("float_nodes") or []
        if floats:
            lines.append(f"  in float: {', '.join(floats[:6])}{f' and {len(floats) - 6} more' if len(floats) > 6 else ''}")
    counts = results["finding_counts"]
    lines.append(f"findings: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info")
    groups: dict[str, list] = {}
    for f in results["findings"]:  # already ordered: severity, rule, worst first
        groups.setdefault(f["code"], []).append(f)
    for code, items in list(groups.items())[:8]:
        worst = items[0]
        where = worst.get("tensor") or "model"
        more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
        lines.append(f"  {code} {worst['severity']:<7} {worst['rule']}: {where}: {worst['message']}{more}")
    if len(groups) > 8:
        lines.append(f"  ... {len(groups) - 8} more rules in the report")
    if results.get("compare"):
        from qcheck.run.compare import summary_lines

        lines.extend(summary_lines(results["compare"]))
    search = results.get("search")
    if search:
        if search["status"] == "found":
            lines.append(f"search ({search['strategy']}, {search['trials']} trials): {search['why']}")
        elif search["status"] == "failed":
            lines.append(f"search ({search['strategy']}, {search['trials']} trials): nothing meets the requirements "
                         f"within the budget; recommended: {search['recommendation']['action']}")
    from qcheck.results.next_step import next_step

    lines.append(f"next step: {next_step(results)['action']}")
    folder = results.get("output_folder")
    if folder:
        names = sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))
        report = [n for n in ("report.pdf", "report.html") if n in names]
        lines.append(f"report: {Path(folder) / report[0] if report else folder}  (in that folder: {', '.join(names)})")
    return "\n".join(lines)


def report_path(folder: str | None) -> str | None:
    """The run's report (HTML first: it opens anywhere), or None."""
    if not folder:
        return None
    found = [Path(folder) / n for n in ("report.html", "report.pdf") if (Path(folder) / n).exists()]
    return str(found[0]) if found else None


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
