"""A layered (Sugiyama-style) layout of the model's graph: where each node and edge goes, as plain numbers.

Pure Python, no layout engine to install: a 2,000-node model lays out in
about a second. The steps are the classic ones, kept simple:

1. layers: each node one layer below its deepest input (longest path; ONNX
   keeps nodes in topological order, so one pass suffices); a node that reads
   no activation (a Constant) sits just above its first reader, not at the top;
2. an edge spanning several layers gets a virtual point in each layer it
   crosses, so it is routed around the nodes rather than through them;
3. order within each layer: barycenter sweeps, down then up (fewer crossings);
4. x: each node placed at the mean x of its neighbours, then pushed apart to
   keep a gap, alternately from the layer above and from the layer below.

The result (`Layout`) is computed from results.json's `graph` alone; drawing
it is report/graph_view.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NODE_W, NODE_H = 150.0, 38.0
GAP_X, GAP_Y = 24.0, 46.0
DUMMY_W = 8.0
SWEEPS = 4


@dataclass
class Layout:
    x: list[float]  # centre of each node, in input order
    y: list[float]
    layer: list[int]
    edges: list[tuple[int, int, list[tuple[float, float]]]]  # (from, to, points from the source's bottom down)
    width: float = 0.0
    height: float = 0.0
    layers: int = 0
    extent: dict[int, tuple[float, float]] = field(default_factory=dict)  # layer -> (min x, max x) of its nodes


def layer_y(layer: int) -> float:
    return NODE_H / 2 + layer * (NODE_H + GAP_Y)


def layout(nodes: list[dict]) -> Layout:
    """`nodes`: results.json's `graph` entries (name, op_type, inputs, outputs), in graph order."""
    n = len(nodes)
    producer = {t: i for i, node in enumerate(nodes) for t in node["outputs"]}
    preds: list[list[int]] = [sorted({producer[t] for t in node["inputs"] if t in producer and producer[t] != i})
                              for i, node in enumerate(nodes)]
    layer = [0] * n
    for i in range(n):  # graph order is topological; a node read before it is written (invalid) stays at 0
        layer[i] = max((layer[p] + 1 for p in preds[i] if p < i), default=0)
    succs: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for p in preds[i]:
            succs[p].append(i)
    for i in range(n):  # a node reading no activation (Constant, Shape of an input) sits just above its readers
        if not preds[i] and succs[i]:
            layer[i] = max(min(layer[s] for s in succs[i]) - 1, 0)
    # virtual points: ids n.. ; chains[(p, i)] = the ids an edge passes through, top to bottom
    lay = list(layer)
    ups: list[list[int]] = [list(p) for p in preds]
    chains: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        for j, p in enumerate(ups[i]):
            if layer[i] - layer[p] > 1:
                chain, prev = [], p
                for depth in range(layer[p] + 1, layer[i]):
                    v = len(lay)
                    lay.append(depth)
                    ups.append([prev])
                    chain.append(v)
                    prev = v
                chains[(p, i)] = chain
                ups[i][j] = prev
    total = len(lay)
    downs: list[list[int]] = [[] for _ in range(total)]
    for v in range(total):
        for u in ups[v]:
            downs[u].append(v)
    rows = _order(lay, ups, downs)
    width = [NODE_W if v < n else DUMMY_W for v in range(total)]
    x = _coordinates(rows, ups, downs, width)
    out = Layout(x=x[:n], y=[layer_y(layer[i]) for i in range(n)], layer=layer, edges=[], layers=max(layer, default=-1) + 1)
    for i in range(n):
        for p in preds[i]:
            if p >= i:
                continue
            points = [(x[p], layer_y(layer[p]) + NODE_H / 2)]
            points += [(x[v], layer_y(lay[v])) for v in chains.get((p, i), [])]
            points.append((x[i], layer_y(layer[i]) - NODE_H / 2))
            out.edges.append((p, i, points))
    left = min((x[v] - width[v] / 2 for v in range(total)), default=0.0)
    for v in range(total):
        x[v] -= left
    out.x = x[:n]
    for (_p, _i, points) in out.edges:
        points[:] = [(px - left, py) for px, py in points]
    out.width = max((x[v] + width[v] / 2 for v in range(total)), default=0.0)
    out.height = layer_y(out.layers - 1) + NODE_H / 2 if n else 0.0
    for i in range(n):
        lo, hi = out.extent.get(layer[i], (out.x[i], out.x[i]))
        out.extent[layer[i]] = (min(lo, out.x[i]), max(hi, out.x[i]))
    return out


def _order(lay: list[int], ups: list[list[int]], downs: list[list[int]]) -> list[list[int]]:
    """Nodes per layer, ordered by barycenter sweeps (down using the layer above, up using the layer below)."""
    rows: list[list[int]] = [[] for _ in range(max(lay, default=-1) + 1)]
    for v in range(len(lay)):
        rows[lay[v]].append(v)
    pos = {v: k for row in rows for k, v in enumerate(row)}

    def sweep(row_ids, neighbours):
        for r in row_ids:
            row = rows[r]
            keys = {}
            for k, v in enumerate(row):
                adj = neighbours[v]
                keys[v] = sum(pos[u] for u in adj) / len(adj) if adj else float(k)
            row.sort(key=lambda v: keys[v])  # stable: ties keep their order
            for k, v in enumerate(row):
                pos[v] = k

    for _ in range(SWEEPS):
        sweep(range(1, len(rows)), ups)
        sweep(range(len(rows) - 2, -1, -1), downs)
    return rows


def _coordinates(rows: list[list[int]], ups: list[list[int]], downs: list[list[int]],
                 width: list[float]) -> list[float]:
    """x of every node: packed first, then pulled towards its neighbours' mean and pushed apart, a few times."""
    x = [0.0] * len(width)
    for row in rows:
        at = 0.0
        for v in row:
            x[v] = at + width[v] / 2
            at += width[v] + GAP_X
    for _ in range(SWEEPS):
        for row_ids, neighbours in ((range(1, len(rows)), ups), (range(len(rows) - 2, -1, -1), downs)):
            for r in row_ids:
                row = rows[r]
                want = [sum(x[u] for u in neighbours[v]) / len(neighbours[v]) if neighbours[v] else x[v] for v in row]
                _place(row, want, width, x)
    return x


def _place(row: list[int], want: list[float], width: list[float], x: list[float]) -> None:
    """Put the row's nodes as near their wanted x as their order and the gaps allow (left pass, right pass)."""
    placed = list(want)
    for k in range(1, len(row)):  # push right what overlaps its left neighbour
        least = placed[k - 1] + (width[row[k - 1]] + width[row[k]]) / 2 + GAP_X
        placed[k] = max(placed[k], least)
    shift = (sum(placed) - sum(want)) / len(row) if row else 0.0  # spread the push both ways
    placed = [p - shift for p in placed]
    for k in range(len(row) - 2, -1, -1):  # keep the gaps after the shift
        most = placed[k + 1] - (width[row[k + 1]] + width[row[k]]) / 2 - GAP_X
        placed[k] = min(placed[k], most)
    for v, p in zip(row, placed):
        x[v] = p
