"""What to do next, from a run's results: the report's first page, the terminal and CI summaries say it.

The order follows how sure each lead is: a recipe the search measured passing; a scheme the comparison
measured passing; nodes whose float fallback measured better on real int8; tensors that clip; the
search's recommendation when nothing passed; the worst finding's remedies. A remedy measured worse
(keeping nodes float that real int8 says cost more) is never proposed; `partial_float_rows` tells
the report which configurations those were.
"""

from __future__ import annotations

import math

from qcheck.results.values_text import value_text, values_text

MAX_NAMES = 3  # tensors or nodes named in one sentence; the rest are counted


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES])
    return shown + (f" and {len(items) - MAX_NAMES} more" if len(items) > MAX_NAMES else "")


def _failing(results: dict) -> list[str]:
    return [f"`{q['text']}` ({values_text(q['values'])})"
            for q in results["verdict"]["requirements"] if not q["holds"]]


def partial_float_rows(results: dict) -> tuple[dict | None, list[dict], list[dict]]:
    """The confirmation on real int8 (analyses.confirm): (all-quantized row, rows that measured better than
    it, rows that measured worse). A metric where lower is better (mse) is compared the other way."""
    confirm = (results.get("analyses") or {}).get("confirm") or {}
    rows = confirm.get("rows") or []
    base = next((r for r in rows if not r["keep_float"]), None)
    if base is None or base.get("real") is None:
        return base, [], []
    lower_better = (results.get("analyses") or {}).get("metric") == "mse"
    better, worse = [], []
    for r in rows:
        if r is base or r.get("real") is None or not math.isfinite(r["real"]):
            continue
        gain = (base["real"] - r["real"]) if lower_better else (r["real"] - base["real"])
        tol = confirm.get("tolerance", 0.0) * max(1.0, abs(base["real"]))
        (better if gain > tol else worse if gain < 0 else []).append(r)
    return base, better, worse


def next_step(results: dict) -> dict:
    """{"action": one sentence, "evidence": [sentences], "source": where the lead comes from}."""
    verdict = results["verdict"]
    search = results.get("search") or {}
    if search.get("status") == "found" and search.get("chosen") is not None:
        c = search["candidates"][search["chosen"]]
        if c.get("n_changes") and results.get("given"):
            return {"action": f"Use the edit to the given model the search found: {c.get('brief', c['label'])} "
                              f"(model.fixed.onnx and its lock are in the output folder), or make the same change "
                              f"when you export the model again.", "evidence": [search.get("why") or ""],
                    "source": "search"}
        if c.get("n_changes"):
            return {"action": f"Use the recipe the search found: {c.get('brief', c['label'])}; its model and lock "
                              f"file (with every change) are in the "
                              f"output folder.", "evidence": [search.get("why") or ""], "source": "search"}
    if verdict["status"] == "pass":
        errors = results.get("finding_counts", {}).get("error", 0)
        return {"action": "Nothing to fix: every requirement holds." + (
            f" Review the {errors} error finding(s) before relying on it." if errors else ""),
            "evidence": [], "source": "verdict"}
    if verdict["status"] == "no-requirements":
        return {"action": "Add `require:` lines to the policy (e.g. `model.cosine >= 0.99`) so the run can pass "
                          "or fail.", "evidence": [], "source": "policy"}
    failing = _failing(results)
    evidence = [f"fails {'; '.join(failing)}"] if failing else []
    if results.get("given"):
        if search.get("status") == "failed" and search.get("recommendation"):
            return _failed_search_step(search, evidence)
        return _given_next_step(results, evidence)
    rec = (results.get("compare") or {}).get("recommendation") or {}
    if rec.get("scheme") and rec["scheme"] != results["quantization"]["scheme"]:
        return {"action": f"Switch to scheme {rec['scheme']} (quantization.scheme: {rec['scheme']}): "
                          f"it passes.", "evidence": evidence + [rec.get("reason", "")], "source": "compare"}
    base, better, worse = partial_float_rows(results)
    metric = (results.get("analyses") or {}).get("metric", "cosine")
    if better:
        best = max(better, key=lambda r: r["real"]) if metric != "mse" else min(better, key=lambda r: r["real"])
        return {"action": f"Keep {_names(best['keep_float'])} in float (quantization.exclude.nodes).",
                "evidence": evidence + [f"measured on real int8: {metric} {value_text(base['real'])} with everything "
                                        f"quantized, {value_text(best['real'])} with {len(best['keep_float'])} node(s) "
                                        f"float"], "source": "analyses"}
    if worse:
        evidence.append(f"keeping the most sensitive nodes float measured worse on real int8 ({metric} "
                        f"{', '.join(value_text(r['real']) for r in worse[:3])} vs {value_text(base['real'])} all "
                        f"quantized): not recommended")
    if search.get("status") == "failed" and search.get("recommendation"):  # it tried the findings' remedies
        return _failed_search_step(search, evidence)
    clipped = [f for f in results.get("findings", []) if f.get("rule") == "range.clipping" and f.get("tensor")]
    if clipped:
        names = [f["tensor"] for f in clipped]
        return {"action": f"{len(names)} tensor(s) clip: widen their range ({_names(names)}) with "
                          f"quantization.overrides rmin/rmax, or calibrate with percentile or entropy.",
                "evidence": evidence + [clipped[0]["message"]], "source": "findings"}
    worst = next((f for f in results.get("findings", []) if f.get("remedies")), None)
    if worst:
        where = worst.get("tensor") or worst.get("node") or "the model"
        return {"action": f"Start with {worst['code']} on {where}: try {', '.join(worst['remedies'][:2])}; or "
                          f"add `search:` to the policy to let qcheck try the remedies.",
                "evidence": evidence + [worst["message"]], "source": "findings"}
    return {"action": "Add `search:` to the policy: qcheck then tries float fallback, int16 and calibration "
                      "remedies and keeps the cheapest that passes.", "evidence": evidence, "source": "default"}


def _failed_search_step(search: dict, evidence: list[str]) -> dict:
    """The search tried the allowed remedies and nothing within its budget passed. When a confirmed candidate
    passed outside the budget, that is the cheaper next step than retraining: say what it costs."""
    r = search["recommendation"]
    over = [c for c in search.get("candidates", []) if c.get("passes") and not c.get("within_budget", True)
            and c.get("figure", "confirmed") == "confirmed"]
    if over:
        c = min(over, key=lambda c: (c.get("cost", float("inf")), c.get("n_changes", 0)))
        return {"action": f"Nothing within the search's budget passes; the cheapest recipe that does needs "
                          f"{c['float_nodes']} float node(s) and {c['int16_tensors']} int16 tensor(s) "
                          f"({c.get('brief', c['label'])}): raise search.budget to accept that cost, or use "
                          f"{r['action']}.",
                "evidence": evidence + [r["reason"]], "source": "search"}
    return {"action": f"{r['action'][0].upper()}{r['action'][1:]}: no post-training recipe within the "
                      f"search's budget passes.", "evidence": evidence + [r["reason"]], "source": "search"}


def _given_next_step(results: dict, evidence: list[str]) -> dict:
    """A quantized model made elsewhere: qcheck changes nothing in it, so the lead is what to change at export."""
    by_rule: dict[str, list[dict]] = {}
    for f in results.get("findings", []):
        if f.get("tensor"):
            by_rule.setdefault(f.get("rule"), []).append(f)
    clipped = by_rule.get("qat.range_too_narrow") or by_rule.get("range.clipping") or []
    wide = by_rule.get("qat.range_too_wide") or []
    if clipped:
        names = [f["tensor"] for f in clipped]
        return {"action": f"{len(names)} tensor(s) of the given model clip: widen their exported range "
                          f"({_names(names)}) when you make the model again (range estimates on data that cover "
                          f"what it will see).", "evidence": evidence + [clipped[0]["message"]], "source": "findings"}
    if wide:
        names = [f["tensor"] for f in wide]
        return {"action": f"{len(names)} tensor(s) of the given model use a fraction of their exported range "
                          f"({_names(names)}): let their range estimates converge before export.",
                "evidence": evidence + [wide[0]["message"]], "source": "findings"}
    return {"action": "Add `search:` to the policy: qcheck then tries edits to the given model (nodes in float, "
                      "int16 or new ranges for tensors) and keeps the cheapest that passes; or remove `quantized:` "
                      "to let qcheck quantize the float model itself.", "evidence": evidence, "source": "default"}
