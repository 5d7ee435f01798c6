"""How a requirement's values read in a sentence: "model.cosine = 0.960408, scores = 0.12"."""

from __future__ import annotations


def value_text(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def values_text(values: dict) -> str:
    return ", ".join(f"{k} = {value_text(v)}" for k, v in values.items())


def margin_text(line: dict) -> str:
    """A requirement line's bootstrap bound (search.confidence), when it has one: "90% lower bound 0.912" or
    "holds on 87% of resamples"; "" without."""
    m = line.get("margin")
    if not m:
        return ""
    pct = f"{100 * m['confidence']:g}%"
    if m.get("bound") is None:
        return f"holds on {100 * m['share']:.3g}% of resamples (needs {pct})"
    return f"{pct} {m['side']} bound {value_text(m['bound'])}"


def line_text(line: dict) -> str:
    """A requirement line's values, with its bound when judged with a margin: "dets.f1 = 0.94; 90% lower bound
    0.912"."""
    bound = margin_text(line)
    return values_text(line["values"]) + (f"; {bound}" if bound else "")
