"""Plots of the deep analyses (results["analyses"]), as SVG text; black-and-white readable."""

from __future__ import annotations

import math

import numpy as np

from qcheck.report.plots import ACCENT, INK, MUTED, _finite, _svg, plt

LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 1))]
MARKERS = ["", "", "", "", "o", "s", "^", "v"]
TOP_BARS = 25


def sensitivity_bars(analyses: dict) -> str | None:
    """Worst nodes first: 1 - cosine of the outputs with only that node quantized (log scale)."""
    sens = analyses["sensitivity"]
    if not sens or not sens["nodes"]:
        return None
    rows = sens["nodes"][:TOP_BARS]
    loss = [max(1e-9, 1 - (r["views"]["node"]["cosine"] or 0)) for r in rows]
    fig, ax = plt.subplots(figsize=(7.2, 0.22 * len(rows) + 0.8))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, loss, color=INK, height=0.7)
    everything = sens["all_quantized"].get("cosine")
    if _finite(everything):
        ax.axvline(max(1e-9, 1 - everything), color=ACCENT, linestyle="--", linewidth=1,
                   label=f"all nodes quantized: 1 - cosine = {1 - everything:.2g}")
        ax.legend(loc="lower right", frameon=False)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['node'][:38]} ({r['op_type']})" for r in rows], fontsize=6.5)
    shown = loss + ([max(1e-9, 1 - everything)] if _finite(everything) else [])
    ax.set_xlim(min(shown) / 2, max(shown) * 2)  # equal values (a one-node model) would give an empty axis
    ax.set_xscale("log")
    ax.set_xlabel("1 - output cosine with only this node quantized (log; longer = more sensitive)")
    return _svg(fig)


def error_curves(analyses: dict, labels: list[str], title: str) -> str | None:
    """Cosine of every node's output to the float model's along the graph, one line per configuration."""
    curves = [c for c in (analyses["curves"] or {}).get("curves", []) if c["label"] in labels]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 2.6))
    low = 1.0
    for i, c in enumerate(curves):
        ys = [p["cosine"] if _finite(p["cosine"]) else np.nan for p in c["points"]]
        ax.plot(range(len(ys)), ys, color=INK if i == 0 else (ACCENT if i == 1 else MUTED),
                linestyle=LINESTYLES[i % len(LINESTYLES)], linewidth=1.1, label=c["label"])
        finite = [v for v in ys if not math.isnan(v)]
        if finite:
            low = min(low, min(finite))
    n = len(curves[0]["points"])
    ax.axvspan(n - 0.5 - max(1, n // 50), n - 0.5, color=MUTED, alpha=0.25, linewidth=0)
    ax.annotate("outputs", xy=(n - 1, 1.0), xytext=(-4, -10), textcoords="offset points", ha="right", fontsize=7)
    ax.set_ylim(max(-1.0, low - 0.05 * (1 - low) - 1e-4), 1.0 + 0.05 * (1 - low) + 1e-5)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("node outputs, in graph order (the tail, on the right, is what the model returns)")
    ax.set_ylabel("cosine to float")
    ax.set_title(title, loc="left")
    ax.legend(loc="lower left", frameon=False, fontsize=7)
    return _svg(fig)


def distribution(dist: dict) -> str | None:
    """Float and quantized histograms with the calibrated range and the largest |value|; the error histogram."""
    edges = np.asarray(dist["edges"])
    if edges.size < 2:
        return None
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(7.2, 2.3), gridspec_kw={"width_ratios": [3, 2]})
    a.bar(centers, dist["float_counts"], width=width, color=MUTED, label="float", linewidth=0)
    a.step(centers, dist["quant_counts"], where="mid", color=INK, linewidth=1, label="quantized")
    if dist.get("calib_min") is not None:
        for v in (dist["calib_min"], dist["calib_max"]):
            a.axvline(v, color=ACCENT, linestyle="--", linewidth=1)
        a.plot([], [], color=ACCENT, linestyle="--", label="calibrated range")
    a.axvline(dist["max_abs"], color=INK, linestyle=":", linewidth=1, label=f"max |float| = {dist['max_abs']:.3g}")
    a.set_yscale("log")
    a.set_xlabel(f"value of {dist['tensor'][:40]}")
    a.set_ylabel("count (log)")
    a.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False, fontsize=6.5)  # above: never on the lines
    e_edges = np.asarray(dist["error_edges"])
    b.bar((e_edges[:-1] + e_edges[1:]) / 2, dist["error_counts"], width=e_edges[1] - e_edges[0], color=INK, linewidth=0)
    b.set_yscale("log")
    b.set_xlabel("quantized - float")
    b.set_title(f"max |error| = {dist['max_abs_error']:.3g}", loc="left", fontsize=7.5)
    fig.tight_layout()
    return _svg(fig)


def channel_boxes(box: dict) -> str | None:
    """One box per channel (quartiles, whiskers to min/max); outlier channels drawn in the accent colour and hatched."""
    n = box["channels"]
    if n < 2:
        return None
    shown = list(range(n)) if n <= 96 else sorted(set(np.linspace(0, n - 1, 64).astype(int)) | set(box["outliers"]))
    fig, ax = plt.subplots(figsize=(7.2, 2.2))
    outliers = set(box["outliers"])
    for x, c in enumerate(shown):
        color = ACCENT if c in outliers else INK
        ax.plot([x, x], [box["min"][c], box["max"][c]], color=color, linewidth=0.7)
        ax.add_patch(plt.Rectangle((x - 0.35, box["q1"][c]), 0.7, max(box["q3"][c] - box["q1"][c], 1e-12),
                                   facecolor="white" if c not in outliers else color, edgecolor=color, linewidth=0.7,
                                   hatch="////" if c in outliers else None))
        ax.plot([x - 0.35, x + 0.35], [box["median"][c]] * 2, color=color, linewidth=0.9)
    ax.set_xlim(-1, len(shown))
    step = max(1, len(shown) // 16)
    ax.set_xticks(range(0, len(shown), step))
    ax.set_xticklabels([str(shown[i]) for i in range(0, len(shown), step)], fontsize=6.5)
    ax.set_xlabel(f"channel of {box['tensor'][:40]} ({box['role']}{', sampled' if len(shown) < n else ''})")
    ax.set_ylabel("value")
    ax.autoscale_view()
    return _svg(fig)


def analysis_plots(results: dict) -> dict:
    analyses = results["analyses"]
    if not analyses:
        return {}
    labels = (analyses["curves"] or {}).get("configurations", [])
    return {
        "sensitivity": sensitivity_bars(analyses),
        "curves_kind": error_curves(analyses, ["all quantized", "weights only", "activations only"],
                                    "Which kind of quantization hurts: weights or activations"),
        "curves_partial": error_curves(analyses, ["all quantized"] + [x for x in labels if x.startswith("top-")],
                                       "Leaving the most sensitive nodes float"),
        "distributions": [{"node": d["node"], "histogram": distribution(d),
                           "boxes": [channel_boxes(b) for b in d["channels"]]}
                          for d in analyses["distributions"] or []],
    }
