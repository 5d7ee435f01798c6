"""results.json: produced from the dataclasses of qcheck/results/schema.py, read back through one loader.

The loader upgrades a file an older qcheck wrote and refuses a damaged one with exit 2, naming the file
and the key (never a traceback).
"""

import dataclasses
import json

import jsonschema
import pytest
from helpers import basic_policy, write_npy_samples

from qcheck.cli.main import main
from qcheck.resources import schema_path
from qcheck.results.files import load_results
from qcheck.results.schema import SCHEMA_VERSION, Results, json_schema, schema_text


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("results")
    write_npy_samples(tmp / "eval", 4, seed=7)
    policy = basic_policy(tmp, data={"calibration": "calib", "evaluation": "eval"},
                          metrics={"err": {"output": "logits", "metric": "mse"}})
    assert main(["run", str(policy), "--quiet"]) == 0
    return tmp / "out"


def _copy(run_folder, tmp_path, edit) -> str:
    """A copy of the run's results.json changed by `edit(doc)`, in its own folder."""
    doc = json.loads((run_folder / "results.json").read_text())
    edit(doc)
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(doc))
    return str(folder / "results.json")


def test_published_schema_is_generated_from_the_dataclasses():
    assert schema_path("results.schema.json").read_text() == schema_text(), \
        "run `python -m qcheck.results.schema` to regenerate qcheck/schema/results.schema.json"


def test_a_run_writes_every_dataclass_field_and_fits_the_schema(run_folder):
    doc = json.loads((run_folder / "results.json").read_text())
    assert list(doc) == [f.name for f in dataclasses.fields(Results)]
    assert doc["schema_version"] == SCHEMA_VERSION
    jsonschema.Draft202012Validator(json_schema()).validate(doc)
    assert doc["model"]["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]


def _as_version_1(doc):
    """What an early version-1 qcheck wrote: no lock, no search/analyses extras, rules without pack or reads."""
    doc["schema_version"] = 1
    for key in ("lock", "model_statistics", "compare"):
        doc.pop(key)
    for rule in doc["rules"]:
        for key in ("scope", "pack", "reads", "kinds", "op_types"):
            rule.pop(key)
    for key in ("notes", "activations", "float_runs", "curves", "distributions", "timings"):
        doc["analyses"].pop(key, None)
    doc["verdict"].pop("failing_metrics")
    doc.pop("layer_metrics")  # keys added later in version 2's life: older files lack them
    doc.pop("graph")


def test_an_older_version_is_upgraded_and_renders(run_folder, tmp_path):
    path = _copy(run_folder, tmp_path, _as_version_1)
    old = load_results(path)
    assert old["schema_version"] == SCHEMA_VERSION
    assert old["lock"]["recipe"] == old["quantization"]["recipe"] and old["lock"]["file"] is None
    assert old["analyses"]["notes"] == [] and old["analyses"]["curves"] is None and old["compare"] is None
    assert {r["scope"] for r in old["rules"]} == {"tensor"} and all(r["reads"] == [] for r in old["rules"])
    assert old["verdict"]["failing_metrics"] == []
    assert main(["report", path]) == 0
    html = (tmp_path / "edited" / "report.html").read_text()
    assert "Which nodes hurt" in html and "tensor scope" in html
    assert old["layer_metrics"] == [] and old["graph"] == []
    assert "This results file holds no graph" in html  # the graph section says why it is empty, never fails
    # the old run and the new one hold the same measurements: diff finds no change
    assert main(["diff", path, str(run_folder)]) == 0


@pytest.mark.parametrize("edit, key", [
    (lambda d: d["model_metrics"]["aggregate"].update(cosine="very close"), "model_metrics.aggregate.cosine"),
    (lambda d: d.pop("verdict"), "verdict"),
    (lambda d: d["quantization"].pop("recipe_key"), "quantization.recipe_key"),
    (lambda d: d.update(tensors="none"), "tensors"),
    (lambda d: d["model"]["inputs"][0].update(shape=None), "model.inputs[0].shape"),
    (lambda d: d["rules"][3].pop("code"), "rules[3].code"),
])
@pytest.mark.parametrize("command", ["report", "diff"])
def test_a_damaged_file_is_refused_naming_the_file_and_key(run_folder, tmp_path, capsys, edit, key, command):
    path = _copy(run_folder, tmp_path, edit)
    args = ["report", path] if command == "report" else ["diff", str(run_folder), path]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}: not a valid qcheck results file: key '{key}'" in err
    assert "Traceback" not in err and not (tmp_path / "edited" / "report.html").exists()


@pytest.mark.parametrize("text, says", [
    ("[1, 2]", "not a qcheck results file (no schema_version/tensors)"),
    ('{"schema_version": "2", "tensors": []}', "not a qcheck results file (no schema_version/tensors)"),
    ('{"schema_version": 99, "tensors": []}', "results written by a newer qcheck (schema 99)"),
    ('{"schema_version": 2, "tensors": [', "not a qcheck results file (invalid JSON"),
])
def test_what_is_not_a_results_file_is_exit_2(tmp_path, capsys, text, says):
    (tmp_path / "results.json").write_text(text)
    assert main(["report", str(tmp_path / "results.json")]) == 2
    err = capsys.readouterr().err
    assert says in err and str(tmp_path / "results.json") in err and "Traceback" not in err

