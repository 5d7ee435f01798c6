"""Plots for the report, drawn from results data alone, returned as SVG text.

Styled to read in black and white: distinct line styles and markers, not
colour alone.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "svg.fonttype": "none",
    "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
    "svg.hashsalt": "qcheck",  # stable ids: the same results give the same SVG
})

INK = "#1f2a44"
ACCENT = "#c0392b"
MUTED = "#9aa5b1"
UNIFORM_RMSE_SCALE = 1 / math.sqrt(12)


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})  # no timestamp: same data, same SVG
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _activations(results: dict) -> list[dict]:
    return [t for t in results["tensors"] if t["kind"] == "activation"]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def range_per_layer(results: dict) -> str | None:
    """The range chart of TFLite's quantization debugger: the real interval each activation's grid covers, in graph order."""
    acts = [t for t in _activations(results) if _finite(t.get("range"))]
    if not acts:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 2.4))
    ax.bar(range(len(acts)), [t["range"] for t in acts], width=1.0, color=INK, edgecolor=INK, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("activation tensors, in graph order")
    ax.set_ylabel("range = scale × steps")
    ax.set_xlim(-1, len(acts))
    return _svg(fig)


def rmse_scale_per_layer(results: dict, threshold: float = 0.7) -> str | None:
    """The debugger's rmse/scale chart: rmse/scale per activation, with rounding noise and the suspect line."""
    acts = [t for t in _activations(results) if _finite(t.get("rmse_scale"))]
    if not acts:
        return None
    values = [t["rmse_scale"] for t in acts]
    fig, ax = plt.subplots(figsize=(7.2, 2.6))
    colors = [ACCENT if v > threshold else INK for v in values]
    bars = ax.bar(range(len(acts)), values, width=1.0, color=colors, linewidth=0)
    for bar, v in zip(bars, values):  # suspect bars are hatched, so they stand out on grey paper too
        if v > threshold:
            bar.set_hatch("////")
            bar.set_facecolor("white")
            bar.set_edgecolor(ACCENT)
            bar.set_linewidth(0.6)
    ax.axhline(UNIFORM_RMSE_SCALE, color=INK, linestyle=":", linewidth=1, label="0.289 = rounding noise (1/√12)")
    ax.axhline(threshold, color=ACCENT, linestyle="--", linewidth=1, label=f"{threshold} = suspect")
    if max(values) > 20 * threshold:
        ax.set_yscale("log")
    ax.set_xlabel("activation tensors, in graph order")
    ax.set_ylabel("rmse / scale (per-layer)")
    ax.set_xlim(-1, len(acts))
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)  # above the bars, never on them
    return _svg(fig)


def layer_metric_per_layer(results: dict, name: str) -> str | None:
    """A layer metric the policy declares with `chart: true`: its value per activation, in graph order."""
    acts = [t for t in _activations(results) if _finite(t.get(name))]
    if not acts:
        return None
    values = [t[name] for t in acts]
    fig, ax = plt.subplots(figsize=(7.2, 2.4))
    ax.bar(range(len(acts)), values, width=1.0, color=INK, linewidth=0)
    positive = [v for v in values if v > 0]
    if positive and min(values) > 0 and max(values) > 100 * min(positive):
        ax.set_yscale("log")
    ax.set_xlabel("activation tensors, in graph order")
    ax.set_ylabel(name)
    ax.set_xlim(-1, len(acts))
    return _svg(fig)


def cosine_along_depth(results: dict) -> str | None:
    """Whole-model cosine of every activation along the graph: where the accumulated error grows."""
    acts = [t for t in _activations(results) if _finite(t.get("whole_cosine"))]
    if len(acts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 2.4))
    xs = range(len(acts))
    ax.plot(xs, [t["whole_cosine"] for t in acts], color=INK, linewidth=1.2, marker=".", markersize=3,
            label="whole model (errors accumulate)")
    local = [(i, t["cosine"]) for i, t in enumerate(acts) if _finite(t.get("cosine"))]
    if local:
        ax.plot([i for i, _ in local], [c for _, c in local], color=MUTED, linestyle="--", linewidth=1,
                label="per layer (local)")
    low = min(min(t["whole_cosine"] for t in acts), min((c for _, c in local), default=1.0))
    ax.set_ylim(max(low - 0.02 * (1 - low) - 1e-4, -1), 1.0005)
    ax.set_xlabel("activation tensors, in graph order (the outputs are on the right)")
    ax.set_ylabel("cosine to float")
    ax.ticklabel_format(axis="y", useOffset=False)  # 0.9998, not "-0.0002 + 1"
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    return _svg(fig)


def search_tradeoff(results: dict) -> str | None:
    """The fallback search: each candidate's cost on the target (or, with `search.cost: latency`, its measured
    latency; only finalists have one) against how far it is from the requirements."""
    search = results["search"]
    if not search:
        return None
    axis = "latency_ms" if search["cost"] == "latency" else "cost"
    cands = [c for c in search["candidates"] if _finite(c.get(axis))]
    if len(cands) < 2:
        return None
    finite_gaps = [c["shortfall"] for c in cands if _finite(c["shortfall"])]
    cap = max(finite_gaps, default=1.0) * 2 or 1.0
    gap = {c["id"]: c["shortfall"] if _finite(c["shortfall"]) else cap for c in cands}
    fig, ax = plt.subplots(figsize=(7.2, 2.8))
    fail = [c for c in cands if not c["passes"]]
    ok = [c for c in cands if c["passes"]]
    ax.scatter([c[axis] for c in fail], [gap[c["id"]] for c in fail], marker="x", color=MUTED, s=18,
               label="misses a requirement")
    ax.scatter([c[axis] for c in ok], [gap[c["id"]] for c in ok], marker="o", facecolors="none", edgecolors=INK, s=22,
               label="meets every requirement")
    front = sorted((c for c in cands if c["id"] in set(search["pareto"])), key=lambda c: c[axis])
    if front:
        ax.step([c[axis] for c in front], [gap[c["id"]] for c in front], where="post", color=INK, linestyle="--",
                linewidth=1, label="Pareto front")
    chosen = next((c for c in cands if c["id"] == search["chosen"]), None)
    if chosen is not None:
        ax.scatter([chosen[axis]], [gap[chosen["id"]]], marker="*", color=ACCENT, s=90, zorder=5, label="chosen")
    ax.set_yscale("symlog", linthresh=1e-3)
    # symlog leaves the axis bare when the values span little: put 0 and the powers of ten they reach
    top = max(gap.values(), default=1.0)
    ticks = [0.0] + [10.0 ** k for k in range(-3, math.ceil(math.log10(max(top, 1e-3))) + 1)]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("median latency on this machine (ms; finalists only)" if axis == "latency_ms"
                  else f"cost on target '{search['target']}' (profile units)")
    ax.set_ylabel("shortfall from the requirements\n(0 = all hold)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _svg(fig)


def all_plots(results: dict) -> dict[str, str | None]:
    threshold = 0.7
    for rule in results["rules"]:
        if rule["code"] == "QC101":
            threshold = float(rule["params"].get("threshold", threshold))
    return {
        "range": range_per_layer(results),
        "rmse_scale": rmse_scale_per_layer(results, threshold),
        "cosine_depth": cosine_along_depth(results),
        "search": search_tradeoff(results),
    }
