"""How a requirement's values read in a sentence: "model.cosine = 0.960408, scores = 0.12"."""

from __future__ import annotations


def value_text(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def values_text(values: dict) -> str:
    return ", ".join(f"{k} = {value_text(v)}" for k, v in values.items())
