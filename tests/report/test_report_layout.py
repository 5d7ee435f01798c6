"""The PDF as a reviewer reads it: cover, contents with page numbers, running header and footer;
a team's template folder overrides single blocks."""

import json
import re

import pytest
from helpers import basic_policy

from qcheck.cli.main import main
from qcheck.report import toc


@pytest.fixture(scope="module")
def pdf_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    policy = basic_policy(tmp, report={"out": "out", "formats": ["html", "pdf"]})
    assert main(["run", str(policy), "--quiet"]) == 0
    return tmp / "out"


def pages_text(pdf):
    from pypdf import PdfReader

    return [p.extract_text() for p in PdfReader(str(pdf)).pages]


def test_cover_has_verdict_numbers_and_contents_with_page_numbers(pdf_run):
    pages = pages_text(pdf_run / "report.pdf")
    results = json.loads((pdf_run / "results.json").read_text())
    cover = pages[0]
    assert "PASS" in cover and "Contents" in cover and "dB" in cover
    entries = toc.entries((pdf_run / "report.html").read_text())
    titles = [t for _, t in entries]
    assert titles[:2] == ["Verdict", "Model and run"] and "Findings" in titles
    for title in titles:
        m = re.search(re.escape(title) + r"[ .]*?(\d+)\s*$", cover, re.M)
        assert m, f"no page number for {title!r} in:\n{cover}"
        page = int(m.group(1))
        # the number points at the page where that heading really is
        assert title in pages[page - 1], (title, page)
    assert results["model"]["name"] in cover


def test_every_page_is_numbered_and_later_pages_carry_model_and_date(pdf_run):
    pages = pages_text(pdf_run / "report.pdf")
    results = json.loads((pdf_run / "results.json").read_text())
    n = len(pages)
    assert n >= 3
    for i, text in enumerate(pages, 1):
        assert f"page {i} of {n}" in text
        if i > 1:
            assert f"{results['model']['name']} · {results['created'][:10]}" in text


def test_toc_lists_sections_a_team_adds(tmp_path):
    page = ('<nav><!--qcheck:toc--></nav><section id="a"><h2>First <code>x</code></h2></section>'
            '<section class="x" id="team"><h2>Our &amp; checks</h2></section>')
    filled = toc.fill(page)
    assert toc.entries(page) == [("a", "First x"), ("team", "Our & checks")]
    assert '<a href="#team">Our &amp; checks</a>' in filled and toc.PLACEHOLDER not in filled


def test_a_team_template_folder_overrides_one_block_and_keeps_the_rest(tmp_path, capsys):
    team = tmp_path / "team_templates"
    team.mkdir()
    (team / "report.html.j2").write_text(
        '{% extends "qcheck/report.html.j2" %}\n'
        '{% block header %}<header class="cover"><h1>ACME model review</h1>{{ super() }}</header>{% endblock %}\n'
        '{% block findings %}{{ super() }}<section id="signoff"><h2>Sign-off</h2><p>Reviewed by ____</p></section>'
        '{% endblock %}\n')
    (team / "extra.css").write_text("h1 { color: rgb(1, 2, 3); }\n")
    policy = basic_policy(tmp_path, report={"out": "out", "formats": ["html"], "templates": "team_templates"})
    assert main(["run", str(policy), "--quiet"]) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "ACME model review" in html and "Reviewed by" in html
    assert "rgb(1, 2, 3)" in html  # the team's additions to the stylesheet
    assert 'id="layers"' in html and "Appendix: the rules that ran" in html  # the blocks not overridden
    assert '<a href="#signoff">Sign-off</a>' in html  # the team's section is in the contents
    # re-rendering from results.json finds the run's template folder again
    again = tmp_path / "again"
    assert main(["report", str(tmp_path / "out" / "results.json"), "--out", str(again), "--formats", "html"]) == 0
    assert (again / "report.html").read_text() == html


def test_a_missing_team_template_folder_is_a_policy_error(tmp_path, capsys):
    policy = basic_policy(tmp_path, report={"out": "out", "templates": ["nope"]})
    assert main(["run", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "report template folder not found" in err and "qcheck.yaml:" in err


def test_html_is_one_self_contained_file(pdf_run):
    html = (pdf_run / "report.html").read_text()
    sources = re.findall(r'\bsrc="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/svg+xml;base64,") for s in sources)
    assert "<link" not in html and "url(http" not in html
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts  # the graph view's pan and zoom, inline
    assert all("src" not in attrs and "http" not in code and "fetch(" not in code and "XMLHttpRequest" not in code
               for attrs, code in scripts)
    hrefs = re.findall(r'\bhref="([^"]*)"', html)
    assert hrefs and all(h.startswith("#") for h in hrefs)  # only the contents' links, inside the page
