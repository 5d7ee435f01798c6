"""The graph view: the model's nodes drawn where graph_layout put them, colored by one statistic, marked.

`graph_view(results)` returns what the template needs:

- `svg`: the whole graph as inline SVG for the HTML report (pan and zoom by
  the script in templates/sections/graph.html.j2, a tooltip per node with its
  statistics and findings, a click jumps to the node's rows in the tables);
- `pages`: the same drawing cut into pages for the PDF at a readable size,
  or, when that would take more than MAX_PAGES pages, the region around each
  of the top findings;
- the legend: which statistic colors the nodes, its range, the marks.

Marks: a node some finding names (thick black outline, "!"), a node left in
float (dashed outline, "F"), a node writing an int16 tensor ("16"), a node the
search's chosen recipe changed ("★"). Constant nodes are not drawn (half the
nodes of many exported models, and no computation).
"""

from __future__ import annotations

import functools
import html
import math
from dataclasses import dataclass, field

from qcheck.report.graph_layout import GAP_Y, NODE_H, NODE_W, Layout, layout
from qcheck.results.layer_columns import PER_LAYER_GROUP

MAX_PAGES = 8  # beyond this, the PDF shows the regions around the top findings instead
PAGE_W, PAGE_H = 900.0, 1150.0  # layout units per PDF page (about 0.57 pt each on A4: 11 px text is 6 pt)
REGIONS = 3
HIDDEN_OPS = ("Constant",)
LOWER_IS_WORSE = ("cosine", "sqnr")  # statistics where a low value is the bad one (the rest: high is bad)
RAMP = ((255, 255, 255), (253, 204, 138), (227, 74, 51), (127, 0, 0))  # white -> orange -> dark red
NO_VALUE = "#e8ebef"


@dataclass
class NodeView:
    name: str
    op_type: str
    value: float | None = None
    rank: float | None = None  # 0 (best) .. 1 (worst) among the drawn nodes with a value
    stats: dict = field(default_factory=dict)
    findings: list[dict] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)  # flagged, float, int16, changed


def color_by_of(results: dict) -> str:
    """The policy's `report.graph.color_by`; by default per-layer rmse/scale, or the whole-model one when the
    per-layer statistics were not computed (results.measure.not_computed)."""
    report = (results["policy"]["document"] or {}).get("report") or {}
    named = (report.get("graph") or {}).get("color_by")
    if named:
        return named
    skipped = (results.get("measure") or {}).get("not_computed") or {}
    return "whole_rmse_scale" if PER_LAYER_GROUP in skipped else "rmse_scale"


def node_views(results: dict, nodes: list[dict], color_by: str) -> list[NodeView]:
    """Per drawn node: its color statistic (worst over its output tensors), statistics, findings and marks."""
    rows = {t["name"]: t for t in results["tensors"] if t["kind"] == "activation"}
    producer = {o: n["name"] for n in results["graph"] for o in n["outputs"]}
    findings: dict[str, list[dict]] = {}
    for f in results["findings"]:
        where = f.get("node") or producer.get(f.get("tensor") or "")
        if where:
            findings.setdefault(where, []).append(f)
    floats = set(results["quantization"]["float_nodes"])
    changed = _search_changes(results, producer)
    worse_low = any(k in color_by for k in LOWER_IS_WORSE)
    views = []
    for n in nodes:
        outs = [rows[o] for o in n["outputs"] if o in rows]
        values = [r.get(color_by) for r in outs if _finite(r.get(color_by))]
        v = NodeView(n["name"], n["op_type"], (min(values) if worse_low else max(values)) if values else None)
        v.stats = {k: outs[0].get(k) for k in ("name", "dtype", "scale", "rmse_scale", "cosine", "whole_cosine",
                                               "clip_fraction", "sensitivity_cosine", color_by) if outs}
        v.stats.update({m["name"]: outs[0].get(m["name"]) for m in results["layer_metrics"] if outs})
        v.findings = findings.get(n["name"], [])
        v.marks = [mark for mark, on in (("flagged", bool(v.findings)), ("float", n["name"] in floats),
                                         ("int16", any(r.get("dtype") in ("int16", "uint16") for r in outs)),
                                         ("changed", n["name"] in changed)) if on]
        views.append(v)
    ranked = sorted((v for v in views if v.value is not None), key=lambda v: -v.value if worse_low else v.value)
    for k, v in enumerate(ranked):
        v.rank = k / (len(ranked) - 1) if len(ranked) > 1 else 1.0
    return views


def _search_changes(results: dict, producer: dict[str, str]) -> set[str]:
    """Nodes the run's final recipe (the search's choice) changes against the policy's recipe."""
    before, after = results["quantization"]["recipe"], results["lock"]["recipe"]
    nodes = set(after.get("exclude_nodes", [])) - set(before.get("exclude_nodes", []))
    tensors = {t for t, o in (after.get("overrides") or {}).items() if (before.get("overrides") or {}).get(t) != o}
    return nodes | {producer[t] for t in tensors if t in producer}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _color(rank: float | None) -> str:
    if rank is None:
        return NO_VALUE
    t = rank * (len(RAMP) - 1)
    k = min(int(t), len(RAMP) - 2)
    a, b = RAMP[k], RAMP[k + 1]
    return "#" + "".join(f"{round(x + (y - x) * (t - k)):02x}" for x, y in zip(a, b))


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def _tooltip(v: NodeView) -> str:
    lines = [f"{v.op_type} {v.name}"] + [f"{k}: {_fmt(x)}" for k, x in v.stats.items()]
    lines += [f"[{f['severity']}] {f['code']} {f['message']}" for f in v.findings[:6]]
    if len(v.findings) > 6:
        lines.append(f"... and {len(v.findings) - 6} more findings")
    return "\n".join(lines)


def _node_svg(v: NodeView, x: float, y: float) -> str:
    fill = _color(v.rank)
    dark = v.rank is not None and v.rank > 0.55
    label = v.name if len(v.name) <= 22 else v.name[:10] + "…" + v.name[-11:]
    badges = "".join(b for m, b in (("flagged", "!"), ("float", "F"), ("int16", "16"), ("changed", "★"))
                     if m in v.marks)
    # The op type is cut with "…" before it runs under the badge or past the box (GlobalAveragePool beside a
    # badge); the tooltip keeps the whole name.
    op = _fit(v.op_type, NODE_W - 12 - (_badge_width(badges) + 3 if badges else 0))
    e = html.escape
    return (f'<g class="node {" ".join(v.marks)}" data-node="{e(v.name)}" transform="translate({x - NODE_W / 2:.1f},'
            f'{y - NODE_H / 2:.1f})"><title>{e(_tooltip(v))}</title>'
            f'<rect width="{NODE_W:.0f}" height="{NODE_H:.0f}" rx="5" fill="{fill}"/>'
            f'<text x="6" y="15" class="op{" dark" if dark else ""}">{e(op)}</text>'
            f'<text x="6" y="30" class="nm{" dark" if dark else ""}">{e(label)}</text>'
            + (_badge(badges) if badges else "") + "</g>")


@functools.lru_cache(maxsize=4096)
def _op_width(text: str) -> float:
    """Width in px of `text` in the op label's font (bold 12 px DejaVu Sans, the font the PDF embeds)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    prop = FontProperties(family="DejaVu Sans", weight="bold", size=12)
    return TextPath((0, 0), text, prop=prop).get_extents().width if text else 0.0


def _fit(text: str, room: float) -> str:
    if _op_width(text) <= room:
        return text
    while len(text) > 1 and _op_width(text + "…") > room:
        text = text[:-1]
    return text + "…"


def _badge_width(text: str) -> float:
    return 8.0 * len(text) + 8


def _badge(text: str) -> str:
    """The marks as dark text on a white pill in the node's top-right corner: readable on any fill."""
    width = _badge_width(text)
    return (f'<rect class="pill" x="{NODE_W - width - 3:.0f}" y="3" width="{width:.0f}" height="15" rx="7"/>'
            f'<text x="{NODE_W - 7:.0f}" y="15" class="badge">{html.escape(text)}</text>')


def _edge_svg(points: list[tuple[float, float]]) -> str:
    (x0, y0), rest = points[0], points[1:]
    d = f"M{x0:.1f},{y0:.1f}"
    for x1, y1 in rest:
        mid = (y0 + y1) / 2
        d += f" C{x0:.1f},{mid:.1f} {x1:.1f},{mid:.1f} {x1:.1f},{y1:.1f}"
        x0, y0 = x1, y1
    return f'<path class="edge" d="{d}"/>'


STYLE = ("<style>.edge{fill:none;stroke:#6b7785;stroke-width:1.2;marker-end:url(#qg-arrow)}"
         ".node rect{stroke:#44505c;stroke-width:1}.node.float rect{stroke-dasharray:5 3;stroke-width:1.6}"
         ".node.changed rect{stroke:#1f6fb2;stroke-width:3}.node.flagged rect{stroke:#111111;stroke-width:4}"
         ".node rect.pill{fill:#ffffff;stroke:#c0392b;stroke-width:1;stroke-dasharray:none}"
         "text{font-family:'DejaVu Sans',Arial,sans-serif}.op{font-size:12px;font-weight:bold;fill:#1f2a44}"
         ".nm{font-size:10px;fill:#1f2a44}.dark{fill:#ffffff}.badge{font-size:12px;font-weight:bold;fill:#c0392b;"
         "text-anchor:end}</style>"
         '<defs><marker id="qg-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
         'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#6b7785"/></marker></defs>')


def draw(lay: Layout, views: list[NodeView], box: tuple[float, float, float, float] | None = None,
         interactive: bool = False) -> str:
    """The SVG of the graph, or of the part inside `box` (x, y, w, h in layout units)."""
    pad = 12.0
    x0, y0, w, h = box or (-pad, -pad, lay.width + 2 * pad, lay.height + 2 * pad)

    def inside(px: float, py: float, margin: float) -> bool:
        return x0 - margin <= px <= x0 + w + margin and y0 - margin <= py <= y0 + h + margin

    parts = [_edge_svg(pts) for _a, _b, pts in lay.edges
             if box is None or any(inside(px, py, NODE_W) for px, py in pts)]
    parts += [_node_svg(v, x, y) for v, x, y in zip(views, lay.x, lay.y)
              if box is None or inside(x, y, NODE_W)]
    size = ('width="100%" height="100%" class="qgraph"' if interactive
            else f'width="{w:.0f}" height="{h:.0f}"')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{x0:.1f} {y0:.1f} {w:.1f} {h:.1f}" {size} '
            f'role="img" aria-label="model graph">{STYLE}{"".join(parts)}</svg>')


def pdf_pages(lay: Layout, views: list[NodeView], results: dict) -> tuple[list[dict], str]:
    """Boxes for the PDF and how they were chosen: bands of layers at a readable size, or the worst regions."""
    per_page = max(int(PAGE_H // (NODE_H + GAP_Y)), 1)
    bands = []
    for first in range(0, lay.layers, per_page):
        last = min(first + per_page, lay.layers) - 1
        xs = [lay.extent[k] for k in range(first, last + 1) if k in lay.extent]
        lo = min((a for a, _ in xs), default=0.0) - NODE_W / 2 - 12
        hi = max((b for _, b in xs), default=0.0) + NODE_W / 2 + 12
        y = first * (NODE_H + GAP_Y) - GAP_Y / 2
        for k in range(max(math.ceil((hi - lo) / PAGE_W), 1)):
            left = lo + k * PAGE_W
            bands.append({"box": (left, y, min(PAGE_W, hi - left), per_page * (NODE_H + GAP_Y)),
                          "caption": f"layers {first + 1}–{last + 1} of {lay.layers}"})
    if len(bands) <= MAX_PAGES:
        for i, b in enumerate(bands):
            b["caption"] = f"Graph, page {i + 1} of {len(bands)}: {b['caption']}"
        return bands, ""
    where = {v.name: (x, y) for v, x, y in zip(views, lay.x, lay.y)}
    centres = []  # the nodes the top findings name, then the worst by the color statistic
    for f in results["findings"]:
        node = f.get("node") if f.get("node") in where else next((v.name for v in views if f in v.findings), None)
        if node is not None:
            centres.append((node, f"{f['code']} on node {node}: {f['message'][:160]}"))
    for v in sorted((v for v in views if v.rank is not None), key=lambda v: -v.rank):
        centres.append((v.name, f"node {v.name}, among the worst by {color_by_of(results)} ({_fmt(v.value)})"))
    regions, seen = [], set()
    for node, what in centres:
        if node in seen:
            continue
        seen.add(node)
        x, y = where[node]
        regions.append({"box": (max(x - PAGE_W / 2, -12.0), max(y - PAGE_H / 2, -12.0), PAGE_W, PAGE_H),
                        "caption": f"Region around {what}"})
        if len(regions) == REGIONS:
            break
    if not regions:  # nothing to centre on: the top of the graph
        return bands[:MAX_PAGES], (f"At a readable size the whole graph takes {len(bands)} pages; the PDF shows the "
                                   f"first {MAX_PAGES} (the HTML report has the whole graph).")
    why = (f"At a readable size the whole graph takes {len(bands)} pages; the PDF shows the region around each of "
           f"the top {len(regions)} finding{'s' if len(regions) != 1 else ''} or worst node{'s' if len(regions) != 1 else ''} "
           "(the HTML report has the whole graph).")
    return regions, why


def graph_view(results: dict) -> dict | None:
    """The graph section's content, or None when results.json holds no graph (written by an older qcheck)."""
    nodes = [n for n in results["graph"] if n["op_type"] not in HIDDEN_OPS]
    if not nodes:
        return None
    color_by = color_by_of(results)
    lay = layout(nodes)
    views = node_views(results, nodes, color_by)
    pages, why = pdf_pages(lay, views, results)
    values = [v.value for v in views if v.value is not None]
    return {
        "svg": draw(lay, views, interactive=True),
        "pages": [{"svg": draw(lay, views, box=p["box"]), "caption": p["caption"]} for p in pages],
        "pages_note": why,
        "color_by": color_by,
        "low": min(values, default=None), "high": max(values, default=None),
        "worse_low": any(k in color_by for k in LOWER_IS_WORSE),
        "ramp": [_color(k / 4) for k in range(5)], "no_value": NO_VALUE,
        "hidden": len(results["graph"]) - len(nodes), "nodes": len(nodes), "layers": lay.layers,
        "counts": {m: sum(m in v.marks for v in views) for m in ("flagged", "float", "int16", "changed")},
    }
