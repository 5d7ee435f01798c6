"""A model's node and tensor names are the model author's text: a hostile or broken exporter can put terminal
commands (ESC sequences), bidi overrides, markup and path parts in them. The run must show them, not act on them:
no escape sequence reaches the terminal, every SVG in the report stays well-formed XML (WeasyPrint drops a figure
it cannot parse), the HTML escapes markup, and no file is written outside the output folder."""

import base64
import re
import xml.etree.ElementTree as ET

import numpy as np
import onnx
from helpers import write_npy_samples, write_policy
from onnx import TensorProto, helper, numpy_helper

from qcheck.cli.main import main
from qcheck.errors import printable

ESC_NAME = "relu\x1b[2J\x1b[31mRED"
BIDI_NAME = "conv\u202eevil"
MARKUP_NAME = "<script>alert(1)</script>"
PATH_NAME = "../../escaped_conv"


def hostile_model(path):
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
    b = np.zeros(4, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name=PATH_NAME, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], [MARKUP_NAME], name=ESC_NAME),
             helper.make_node("Conv", [MARKUP_NAME, "w2", "b2"], ["y"], name=BIDI_NAME, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        initializer=[numpy_helper.from_array(a, n) for n, a in {"w1": w1, "b1": b, "w2": w2, "b2": b}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_printable_escapes_controls_and_bidi_but_keeps_lines():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("x\u202ey") == "x\\u202ey"
    assert printable("one\n\ttwo") == "one\n\ttwo"
    assert printable("\x00\x7f\x85") == "\\x00\\x7f\\x85"


def test_hostile_names_are_shown_not_acted_on(tmp_path, capsys):
    hostile_model(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 4)
    # a requirement that fails at a named tensor puts the names into the terminal's summary too
    policy = write_policy(tmp_path / "qcheck.yaml", {
        "model": "model.onnx", "data": {"calibration": "calib"},
        "require": ["model.cosine >= 0.9999999"],
        "report": {"out": "out", "formats": ["html", "pdf"]}})
    assert main(["run", str(policy)]) == 1
    shown = capsys.readouterr()
    terminal = shown.out + shown.err
    assert "\x1b" not in terminal and "\u202e" not in terminal
    assert "WeasyPrint left out" not in terminal  # every figure was drawn
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<script>alert" not in html
    assert "\\x1b[2J" in html and "\\u202e" in html  # the names are there, as escapes
    assert "\x1b" not in html and "\u202e" not in html
    svgs = [base64.b64decode(m) for m in re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html)]
    assert svgs
    for svg in svgs:
        ET.fromstring(svg)  # well-formed XML, as WeasyPrint needs it
    assert not (tmp_path.parent / "escaped_conv").exists() and not (tmp_path / "escaped_conv").exists()
