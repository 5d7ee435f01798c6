"""The graph view: laid out from results.json alone, flagged nodes marked in the HTML's SVG, in the PDF's pages
(read back with pypdf) and in headless Chromium (pan/zoom and click-to-rows run there), and the PDF's choice of
pages or worst regions.

The run: `outlier_head_cnn`, whose last node `fc` writes one column 1000 times wider than the others, so the
channel-outlier rule fires on its output `logits` (and only there); the graph is colored by a layer metric.
"""

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from helpers import outlier_head_cnn, write_npy_samples, write_policy

from qcheck.cli.main import main
from qcheck.report.graph_layout import GAP_X, NODE_W, layout
from qcheck.report.graph_view import MAX_PAGES, graph_view, node_views, pdf_pages

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("graph")
    outlier_head_cnn(tmp / "model.onnx")
    write_npy_samples(tmp / "calib", 8)
    policy = write_policy(tmp / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib"}, "analyses": False,
        "layer_metrics": {"p999_err": "percentile(abs(diff), 99.9) / scale"},
        "require": ["model.cosine >= 0.99"],
        "report": {"out": "out", "formats": ["html", "pdf"], "graph": {"color_by": "p999_err"}}})
    assert main(["run", str(policy), "--quiet"]) == 0
    results = json.loads((tmp / "out" / "results.json").read_text())
    return tmp / "out", results


def _graph_svg(page: str) -> ET.Element:
    section = page[page.index('<section id="graph">'):]
    svg = section[section.index("<svg"):section.index("</svg>") + len("</svg>")]
    return ET.fromstring(svg)


def _nodes(svg: ET.Element) -> dict[str, ET.Element]:
    return {g.get("data-node"): g for g in svg.iter(f"{SVG}g") if "node" in (g.get("class") or "").split()}


def test_flagged_nodes_are_marked_in_the_html(run):
    out, results = run
    flagged = {f["node"] for f in results["findings"]}
    assert flagged == {"fc"}  # the outlier rule, on the head only
    svg = _graph_svg((out / "report.html").read_text())
    nodes = _nodes(svg)
    assert set(nodes) == {n["name"] for n in results["graph"]}  # every node drawn, no Constant in this model
    marked = {name for name, g in nodes.items() if "flagged" in g.get("class").split()}
    assert marked == flagged
    tooltip = nodes["fc"].find(f"{SVG}title").text
    assert "QC107" in tooltip and "p999_err" in tooltip  # hover: its findings and its statistics


def test_nodes_are_colored_by_the_chosen_statistic(run):
    out, results = run
    rows = {t["name"]: t for t in results["tensors"]}
    producer = {o: n["name"] for n in results["graph"] for o in n["outputs"]}
    valued = {producer[name]: row["p999_err"] for name, row in rows.items()
              if name in producer and row["kind"] == "activation" and row.get("p999_err") is not None}
    svg = _graph_svg((out / "report.html").read_text())
    fills = {name: g.find(f"{SVG}rect").get("fill") for name, g in _nodes(svg).items()}
    worst = max(valued, key=valued.get)
    assert fills[worst] == "#7f0000"  # the darkest end of the ramp
    assert all(fills[n] == "#e8ebef" for n in fills if n not in valued)  # no value: grey, not a color


def test_pdf_has_the_graph_with_its_nodes(run):
    pypdf = pytest.importorskip("pypdf")
    out, results = run
    pages = [p.extract_text() for p in pypdf.PdfReader(str(out / "report.pdf")).pages]
    graph_pages = [t for t in pages if "Graph, page" in t]
    assert graph_pages, "no graph page in the PDF"
    text = "\n".join(graph_pages)
    for n in results["graph"]:
        assert n["name"] in text and n["op_type"] in text
    assert "!" in text  # the flagged node's mark is drawn, not only colored


def test_layout_keeps_edges_downward_and_nodes_apart():
    # a block with a skip connection and a Constant read deep in the graph
    nodes = [{"name": "c", "op_type": "Conv", "inputs": ["x"], "outputs": ["a"]},
             {"name": "r", "op_type": "Relu", "inputs": ["a"], "outputs": ["b"]},
             {"name": "k", "op_type": "Constant", "inputs": [], "outputs": ["k0"]},
             {"name": "c2", "op_type": "Conv", "inputs": ["b"], "outputs": ["d"]},
             {"name": "m", "op_type": "Mul", "inputs": ["d", "k0"], "outputs": ["e"]},
             {"name": "add", "op_type": "Add", "inputs": ["e", "a"], "outputs": ["y"]}]
    lay = layout(nodes)
    assert lay.layer == [0, 1, 2, 2, 3, 4]  # the Constant sits just above its reader, not at the top
    for a, b, points in lay.edges:
        assert lay.layer[b] > lay.layer[a]
        assert all(p[1] < q[1] for p, q in zip(points, points[1:]))  # every edge runs downward
    skip = next(points for a, b, points in lay.edges if (a, b) == (0, 5))
    assert len(skip) == 2 + 3  # routed through the 3 layers it crosses
    for layer in set(lay.layer):
        xs = sorted(x for x, k in zip(lay.x, lay.layer) if k == layer)
        assert all(b - a >= NODE_W + GAP_X - 1e-6 for a, b in zip(xs, xs[1:]))


def _chain_results(n: int, flagged: int) -> dict:
    graph = [{"name": f"n{i}", "op_type": "Relu", "inputs": [f"t{i - 1}"] if i else ["x"], "outputs": [f"t{i}"]}
             for i in range(n)]
    tensors = [{"name": f"t{i}", "kind": "activation", "rmse_scale": 0.3 + i / n, "dtype": "uint8"}
               for i in range(n)]
    finding = {"code": "QC101", "rule": "r", "severity": "error", "message": "bad", "tensor": f"t{flagged}",
               "node": f"n{flagged}"}
    recipe = {"exclude_nodes": [], "overrides": {}}
    return {"graph": graph, "tensors": tensors, "findings": [finding], "layer_metrics": [],
            "quantization": {"float_nodes": [], "recipe": recipe}, "lock": {"recipe": recipe},
            "policy": {"document": {}}}


def test_pdf_shows_all_pages_of_a_small_graph_and_the_worst_region_of_a_large_one():
    small = _chain_results(20, 5)
    lay = layout(small["graph"])
    pages, why = pdf_pages(lay, node_views(small, small["graph"], "rmse_scale"), small)
    assert 1 < len(pages) <= MAX_PAGES and why == ""
    covered = set()
    for p in pages:  # together the pages show every node
        x, y, w, h = p["box"]
        covered |= {i for i, (nx, ny) in enumerate(zip(lay.x, lay.y)) if x <= nx <= x + w and y <= ny <= y + h}
    assert covered == set(range(20))

    large = _chain_results(400, 250)
    view = graph_view(large)
    assert "region around each of the top 3 findings or worst nodes" in view["pages_note"]
    captions = [p["caption"] for p in view["pages"]]
    assert len(captions) == 3 and "QC101 on node n250" in captions[0]  # the finding first
    assert "node n399" in captions[1]  # then the worst by the color statistic (rmse_scale grows along the chain)
    page = ET.fromstring(view["pages"][0]["svg"])
    shown = set(_nodes(page))
    assert "n250" in shown and len(shown) < 40  # the region around the finding, not the whole chain


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_html_graph_runs_in_headless_chromium(run, tmp_path):
    """The report's script runs in a real browser: it fits the view, zooms on the wheel, and a click on the
    flagged node highlights exactly that node's rows in the tables."""
    out, results = run
    probe = """<script>
    (function () {
      var svg = document.querySelector("#graph svg"), before = svg.getAttribute("viewBox");
      svg.querySelector('g.node[data-node="fc"]').dispatchEvent(new MouseEvent("click", {bubbles: true}));
      var box = document.querySelector("#graph .graph-box"), r = svg.getBoundingClientRect();
      box.dispatchEvent(new WheelEvent("wheel", {deltaY: -100, clientX: r.left + 10, clientY: r.top + 10,
                                                 bubbles: true, cancelable: true}));
      var hits = Array.prototype.map.call(document.querySelectorAll("tr.graph-hit"),
                                          function (t) { return t.getAttribute("data-node"); });
      var out = document.createElement("div");
      out.id = "probe";
      out.setAttribute("data-ready", box.getAttribute("data-ready"));
      out.setAttribute("data-hits", hits.join(","));
      out.setAttribute("data-before", before);
      out.setAttribute("data-after", svg.getAttribute("viewBox"));
      document.body.appendChild(out);
    })();
    </script></body>"""
    page = tmp_path / "probe.html"
    page.write_text((out / "report.html").read_text().replace("</body>", probe))
    dom = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    probe_div = re.search(r'<div id="probe"[^>]*>', dom)
    assert probe_div, "the probe did not run: the report's script failed in Chromium"
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', probe_div.group(0)))
    assert attrs["ready"] == "1"
    rows = len(re.findall(r'<tr data-node="fc"', (out / "report.html").read_text()))
    assert rows >= len([f for f in results["findings"] if f["node"] == "fc"])  # its findings, its tensor's row
    assert attrs["hits"].split(",") == ["fc"] * rows  # exactly the flagged node's rows
    before = [float(v) for v in attrs["before"].split()]
    after = [float(v) for v in attrs["after"].split()]
    assert after[2] == pytest.approx(before[2] / 1.2, rel=1e-6)  # the wheel zoomed in by one step


def test_float_int16_and_search_changes_are_marked():
    results = _chain_results(6, 1)
    results["quantization"]["float_nodes"] = ["n2"]
    results["tensors"][3]["dtype"] = "int16"
    results["lock"] = {"recipe": {"exclude_nodes": ["n4"], "overrides": {"t5": {"quant_type": "int16"}}}}
    marks = {v.name: v.marks for v in node_views(results, results["graph"], "rmse_scale")}
    assert marks == {"n0": [], "n1": ["flagged"], "n2": ["float"], "n3": ["int16"], "n4": ["changed"],
                     "n5": ["changed"]}


def test_color_by_must_name_a_numeric_statistic_or_a_layer_metric(tmp_path):
    from qcheck.errors import PolicyError
    from qcheck.policy.loader import load_policy

    outlier_head_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 1)
    doc = {"model": "model.onnx", "data": {"calibration": "calib"}, "layer_metrics": {"tail": "max(abs(diff))"},
           "report": {"graph": {"color_by": "tial"}}}
    with pytest.raises(PolicyError) as info:
        load_policy(write_policy(tmp_path / "qcheck.yaml", doc))
    assert "color_by: 'tial'" in str(info.value) and "did you mean 'tail'" in str(info.value)
    doc["report"]["graph"]["color_by"] = "op_type"  # text: nothing to color by
    with pytest.raises(PolicyError):
        load_policy(write_policy(tmp_path / "qcheck.yaml", doc))
    doc["report"]["graph"]["color_by"] = "tail"
    assert load_policy(write_policy(tmp_path / "qcheck.yaml", doc)).report.graph_color_by == "tail"


def test_a_long_op_type_is_cut_inside_its_box_and_whole_in_the_tooltip():
    from qcheck.report.graph_view import NodeView, _node_svg, _op_width

    for marks in ([], ["flagged", "float"]):
        svg = _node_svg(NodeView("pool", "GlobalAveragePoolWithAVeryLongVendorSuffix", marks=marks), 100.0, 50.0)
        label = re.search(r'class="op[^"]*">([^<]*)</text>', svg).group(1)
        assert label.endswith("…") and label[:-1] in "GlobalAveragePoolWithAVeryLongVendorSuffix"
        badge = 8.0 * (len(marks)) + 8 + 3 if marks else 0  # the pill of one character per mark
        assert _op_width(label) <= NODE_W - 12 - badge  # measured in the label's own font
        assert "GlobalAveragePoolWithAVeryLongVendorSuffix pool" in svg  # the tooltip keeps it whole
    short = _node_svg(NodeView("c", "Conv"), 100.0, 50.0)
    assert '">Conv</text>' in short
