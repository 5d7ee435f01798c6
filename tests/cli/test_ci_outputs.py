"""`--junit` and `--summary-md` on `qcheck run` and `qcheck diff`: standard JUnit XML that parses with
xml.etree and with junitparser, one test case per require: line and per error-severity finding; a Markdown summary, also
appended to $GITHUB_STEP_SUMMARY."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import junitparser
import pytest
import xmlschema
from helpers import basic_policy

from qcheck.cli.main import main

INLINE_ERROR = {"code": "IN001", "name": "inline.any_weight", "scope": "tensor", "severity": "error",
                "applies_to": {"kind": ["weight"]}, "when": "scale > 0", "message": "weight scale {scale:.3g}",
                "summary": "Every weight (to have an error finding).", "why": "Test.", "fix": "None."}


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ci")
    policy = basic_policy(tmp, require=["model.cosine >= 0.9", "model.cosine >= 0.999999"],
                          rules={"inline": [INLINE_ERROR]})
    summary_env = tmp / "step_summary.md"
    summary_env.write_text("earlier step\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("GITHUB_STEP_SUMMARY", str(summary_env))
    try:
        code = main(["run", str(policy), "--quiet", "--junit", str(tmp / "junit.xml"),
                     "--summary-md", str(tmp / "summary.md")])
    finally:
        mp.undo()
    return tmp, code, json.loads((tmp / "out" / "results.json").read_text())


def check_junit_structure(root: ET.Element) -> list[ET.Element]:
    """The structure JUnit consumers read (Jenkins' junit schema): testsuites > testsuite > testcase, counts
    that add up, a message on every failure. Returns the test cases."""
    assert root.tag == "testsuites"
    cases = []
    for suite in root:
        assert suite.tag == "testsuite" and suite.get("name")
        mine = suite.findall("testcase")
        assert int(suite.get("tests")) == len(mine)
        assert int(suite.get("failures")) == sum(1 for c in mine if c.find("failure") is not None)
        assert int(suite.get("errors")) == 0 and float(suite.get("time")) >= 0
        for case in mine:
            assert case.get("classname") and case.get("name") and float(case.get("time")) >= 0
            for child in case:
                assert child.tag in ("failure", "error", "skipped", "system-out", "system-err")
                if child.tag == "failure":
                    assert child.get("message")
        cases += mine
    assert int(root.get("tests")) == len(cases)
    assert int(root.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
    return cases


def test_junit_has_one_case_per_requirement_and_error_finding(ci_run):
    tmp, code, results = ci_run
    assert code == 1
    cases = check_junit_structure(ET.parse(tmp / "junit.xml").getroot())
    reqs = [c for c in cases if c.get("classname") == "qcheck.requirements"]
    assert [c.get("name") for c in reqs] == ["model.cosine >= 0.9", "model.cosine >= 0.999999"]
    assert reqs[0].find("failure") is None
    failure = reqs[1].find("failure").get("message")
    cosine = results["model_metrics"]["aggregate"]["cosine"]
    assert f"model.cosine = {cosine:.6g}" in failure and "0.999999" in failure
    errors = [f for f in results["findings"] if f["severity"] == "error"]
    found = [c for c in cases if c.get("classname") == "qcheck.findings"]
    assert errors and len(found) == len(errors)  # one per weight: the inline rule fires on each
    assert all(c.find("failure") is not None and c.get("name").startswith("IN001") for c in found)


JUNIT_SCHEMA = Path(__file__).with_name("junit-10.xsd")  # Jenkins' JUnit schema, as pytest validates with it


def test_junit_files_validate_against_the_jenkins_junit_schema(ci_run, tmp_path):
    tmp, _, _ = ci_run
    schema = xmlschema.XMLSchema(str(JUNIT_SCHEMA))
    schema.validate(str(tmp / "junit.xml"))  # raises with the offending element and rule
    out = tmp / "out"
    assert main(["diff", str(out), str(out), "--junit", str(tmp_path / "d.xml")]) == 0
    schema.validate(str(tmp_path / "d.xml"))


def test_junit_reads_the_same_in_a_ci_result_parser(ci_run):
    """junitparser (the reader CI result publishers such as GitHub's publish-unit-test-result action use) sees
    the same suites, counts and failure messages as the structure check above."""
    tmp, _, results = ci_run
    xml = junitparser.JUnitXml.fromfile(str(tmp / "junit.xml"))
    suites = list(xml)
    assert [s.name for s in suites] == [s.get("name") for s in ET.parse(tmp / "junit.xml").getroot()]
    cases = [c for s in suites for c in s]
    assert sum(s.tests for s in suites) == len(cases) and sum(s.errors for s in suites) == 0
    failed = [c for c in cases if any(isinstance(r, junitparser.Failure) for r in c.result)]
    assert sum(s.failures for s in suites) == len(failed)
    errors = [f for f in results["findings"] if f["severity"] == "error"]
    assert len(failed) == len(errors) + 1  # every error finding and the one failing requirement
    assert all(r.message for c in failed for r in c.result)


def test_summary_markdown_has_verdict_requirements_next_step_and_report_link(ci_run):
    tmp, _, _ = ci_run
    text = (tmp / "summary.md").read_text()
    assert text.startswith("## qcheck:") and "FAIL" in text.splitlines()[0]
    assert "| `model.cosine >= 0.999999` |" in text and "**FAILS**" in text
    assert "**Next step:**" in text
    assert f"]({tmp / 'out' / 'report.html'})" in text
    appended = (tmp / "step_summary.md").read_text()
    assert appended.startswith("earlier step\n") and text in appended


def test_diff_writes_junit_and_markdown(ci_run, tmp_path):
    tmp, _, _ = ci_run
    out = tmp / "out"
    code = main(["diff", str(out), str(out), "--junit", str(tmp_path / "d.xml"), "--summary-md",
                 str(tmp_path / "d.md")])
    assert code == 0
    cases = check_junit_structure(ET.parse(tmp_path / "d.xml").getroot())
    assert {c.get("name") for c in cases} >= {"model.cosine", "verdict"}
    assert all(c.find("failure") is None for c in cases)
    assert (tmp_path / "d.md").read_text().startswith("## qcheck diff — ok")


def test_unwritable_junit_path_is_a_user_error(ci_run, tmp_path, capsys):
    tmp, _, _ = ci_run
    (tmp_path / "file").write_text("x")
    code = main(["diff", str(tmp / "out"), str(tmp / "out"), "--junit", str(tmp_path / "file" / "j.xml")])
    assert code == 2 and "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("flag,target", [("--junit", "qcheck.yaml"), ("--summary-md", "model.onnx"),
                                         ("--junit", "calib/0.npy"), ("--summary-md", "calib/new.md")])
def test_a_ci_output_never_replaces_or_lands_among_what_the_run_reads(tmp_path, capsys, flag, target):
    """`--junit qcheck.yaml` replaced the policy with JUnit XML and `--summary-md model.onnx` the model (exit 0)."""
    policy = basic_policy(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["run", str(policy), "--quiet", flag, str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert f"{flag}: refusing to write" in err and ("it is the" in err or "inside the calibration data" in err)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written, nothing ran


def test_a_ci_output_inside_the_output_folder_survives_the_next_run(tmp_path, capsys):
    """`--junit out/junit.xml` is what a CI job writes; the second run refused the folder ('files qcheck did not
    write'). It is listed in the folder's manifest now; a run's own files (report.html) stay refused."""
    policy = basic_policy(tmp_path)
    for _ in range(2):
        assert main(["run", str(policy), "--quiet", "--junit", str(tmp_path / "out" / "junit.xml"),
                     "--summary-md", str(tmp_path / "out" / "ci" / "summary.md")]) == 0
    manifest = json.loads((tmp_path / "out" / ".qcheck-manifest.json").read_text())
    assert {"junit.xml", "ci/summary.md"} <= set(manifest["files"])
    ET.parse(tmp_path / "out" / "junit.xml")
    assert main(["run", str(policy), "--quiet", "--junit", str(tmp_path / "out" / "report.html")]) == 2
    assert "it is the report.html of the qcheck run" in capsys.readouterr().err


def test_diff_does_not_write_over_the_results_it_compares(ci_run, tmp_path, capsys):
    tmp, _, _ = ci_run
    results = tmp / "out" / "results.json"
    before = results.read_bytes()
    assert main(["diff", str(tmp / "out"), str(tmp / "out"), "--summary-md", str(results)]) == 2
    assert "refusing to write" in capsys.readouterr().err and results.read_bytes() == before
