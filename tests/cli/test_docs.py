"""The reference docs are generated from the schema and the rule packs, and the committed ones are current."""

import json
import re
import shutil

from helpers import REPO, json_objects

from qcheck.cli.docs import check_docs, default_docs_dir, generated, policy_markdown, rules_markdown
from qcheck.cli.main import main
from qcheck.resources import rules_dir, schema_path

REPO_DOCS = REPO / "docs"  # the checkout's, also when qcheck is installed as a wheel


def test_committed_docs_are_what_the_code_generates():
    stale = check_docs(REPO_DOCS)
    assert not stale, f"run `qcheck docs` to regenerate: {[p.name for p in stale]}"


def test_every_schema_key_is_documented():
    schema = json.loads(schema_path("policy.schema.json").read_text())
    keys = {k for node in json_objects(schema) for k in (node.get("properties") or {})}
    text = policy_markdown()
    missing = [k for k in keys if f".{k}`" not in text and f"[`{k}`]" not in text]
    assert not missing and len(keys) > 30


def test_rule_docs_read_whatever_packs_exist(tmp_path):
    shutil.copy(rules_dir() / "builtin.yaml", tmp_path / "builtin.yaml")
    (tmp_path / "team.yaml").write_text(
        "pack: team\ndescription: Our own checks.\nrules:\n"
        "  - code: TM001\n    name: team.wide_range\n    scope: tensor\n    severity: info\n"
        "    when: range > limit\n    params: {limit: 100}\n    message: 'range {range:.1f}'\n"
        "    summary: The range is wide.\n    why: Wide ranges waste levels.\n    fix: Clip it.\n")
    text = rules_markdown(tmp_path)
    assert "## Pack `team` (team.yaml, 1 rule)" in text and "### TM001" in text and "`range > limit`" in text
    assert text.index("Pack `builtin`") < text.index("Pack `team`")


def test_docs_command_writes_and_checks(tmp_path, capsys):
    assert main(["docs", "--check", "--out", str(tmp_path)]) == 1  # nothing there yet
    assert main(["docs", "--out", str(tmp_path)]) == 0
    assert main(["docs", "--check", "--out", str(tmp_path)]) == 0
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == generated()
    assert default_docs_dir().name == "docs"


def test_docs_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    (tmp_path / "rules.md").write_text("our team's own notes\n")
    assert main(["docs", "--out", str(tmp_path)]) == 2
    assert "rules.md exists and was not written by `qcheck docs`" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["rules.md"]  # nothing written, the notes kept
    assert (tmp_path / "rules.md").read_text() == "our team's own notes\n"


def test_readme_points_at_the_generated_rule_reference_instead_of_copying_it():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "[docs/rules.md](docs/rules.md)" in readme
    assert not re.search(r"^\| QC\d+ \|", readme, re.M)  # no hand-kept table to drift
    assert "[QC114](#qc114)" in rules_markdown()
