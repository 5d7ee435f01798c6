"""Policy loading: every problem at once, each with file and line, and a useful sentence."""

from pathlib import Path

import pytest
from helpers import basic_policy, small_cnn, write_npy_samples

from qcheck.errors import PolicyError
from qcheck.policy.loader import load_policy, policy_schema


def messages(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return [str(p) for p in info.value.problems]


def write(tmp_path: Path, text: str) -> Path:
    small_cnn(tmp_path / "model.onnx")
    write_npy_samples(tmp_path / "calib", 2)
    p = tmp_path / "qcheck.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_misspelled_key_names_file_line_and_suggestion(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: calib\nquantization:\n  per_channel: true\n  calibraton: minmax\n")
    (msg,) = messages(p)
    assert msg.startswith(f"{p}:6: unknown key 'calibraton'")
    assert "did you mean 'calibration'?" in msg


def test_all_problems_are_reported_at_once_in_line_order(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: calib\nquantization:\n"
                        "  per_channel: maybe\n  calibration: minmaxx\nrepport: {}\n")
    msgs = messages(p)
    assert len(msgs) == 3
    assert f"{p}:5: 'quantization.per_channel' must be a boolean" in msgs[0]
    assert f"{p}:6: 'quantization.calibration' must be one of: minmax, entropy, percentile; got 'minmaxx'" in msgs[1]
    assert "did you mean 'minmax'?" in msgs[1]
    assert f"{p}:7: unknown key 'repport'" in msgs[2] and "did you mean 'report'?" in msgs[2]


def test_missing_model_file_names_the_line(tmp_path):
    p = write(tmp_path, "data:\n  calibration: calib\nmodel: nowhere/model.onnx\n")
    (msg,) = messages(p)
    assert msg.startswith(f"{p}:3: model file not found")
    assert "nowhere/model.onnx" in msg


def test_missing_required_key(tmp_path):
    p = write(tmp_path, "model: model.onnx\n")
    (msg,) = messages(p)
    assert "the policy is missing the required key 'data'" in msg


def test_bad_require_expression_points_at_its_line(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata: {calibration: calib}\nrequire:\n  - model.cosine >= 0.99\n  - model.cosin >= 0.9\n")
    (msg,) = messages(p)
    assert msg.startswith(f"{p}:5:")
    assert "unknown name 'model.cosin'" in msg and "did you mean 'model.cosine'?" in msg


def test_require_naming_an_undeclared_metric_says_to_declare_it(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata: {calibration: calib}\nrequire:\n  - accuracy >= 0.98\n")
    (msg,) = messages(p)
    assert msg.startswith(f"{p}:4:") and "unknown name 'accuracy'" in msg
    assert "declare 'accuracy' under `metrics:`" in msg and "model.top1" not in msg


def test_unsafe_require_is_refused(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata: {calibration: calib}\nrequire: ['__import__(\"os\").system(\"x\") == 0']\n")
    (msg,) = messages(p)
    assert "not allowed" in msg


def test_relative_paths_resolve_against_the_policy_folder(tmp_path, monkeypatch):
    p = basic_policy(tmp_path)
    monkeypatch.chdir("/")
    policy = load_policy(p)
    assert policy.model.path == tmp_path / "model.onnx"
    assert policy.data.calibration.path == tmp_path / "calib"
    assert policy.report.out == tmp_path / "out"


def test_invalid_yaml_names_the_line(tmp_path):
    p = write(tmp_path, "model: model.onnx\ndata:\n  calibration: [calib\n")
    (msg,) = messages(p)
    assert msg.startswith(f"{p}:") and "invalid YAML" in msg


def test_schema_defaults_match_the_typed_policy(tmp_path):
    """The published schema and the dataclasses must not drift apart."""
    from qcheck.policy.spec import MeasureSpec, QuantizationSpec, ReportSpec

    defs = policy_schema()["$defs"]
    q = QuantizationSpec()
    for key, prop in defs["quantization"]["properties"].items():
        if "default" in prop:
            assert getattr(q, key) == prop["default"], key
    assert MeasureSpec().modes == defs["measure"]["properties"]["modes"]["default"]
    assert ReportSpec().formats == defs["report"]["properties"]["formats"]["default"]
    assert str(ReportSpec().out) == defs["report"]["properties"]["out"]["default"]


def test_the_schemas_documented_defaults_are_the_spec_defaults():
    """Defaults live in the spec dataclasses (the loader passes only what a policy gives); the schema's
    `default:` entries, which the generated docs show, must say the same."""
    from dataclasses import fields
    from pathlib import Path

    from qcheck.policy import spec
    from qcheck.policy.targets import DEFAULT_TARGET

    defs = policy_schema()["$defs"]

    def default_of(cls, name):
        f = next(f for f in fields(cls) if f.name == name)
        return f.default_factory() if callable(f.default_factory) else f.default

    sections = {"dataSource": spec.DataSource, "preprocess": spec.Preprocess, "quantization": spec.QuantizationSpec,
                "rules": spec.RulesSpec, "measure": spec.MeasureSpec, "search": spec.SearchSpec,
                "analyses": spec.AnalysesSpec, "report": spec.ReportSpec, "layerMetric": spec.LayerMetricSpec}
    renamed = {("quantization", "exclude", "nodes"): "exclude_nodes",
               ("quantization", "exclude", "op_types"): "exclude_op_types",
               ("analyses", "sensitivity", "metric"): "metric", ("analyses", "sensitivity", "detail"): "detail",
               ("analyses", "curves", "top_k"): "top_k", ("analyses", "distributions", "nodes"): "focus_nodes",
               ("analyses", "confirm", "tolerance"): "tolerance", ("report", "graph", "color_by"): "graph_color_by"}
    checked = 0

    def walk(node, keys, cls):
        nonlocal checked
        for key, sub in (node.get("properties") or {}).items():
            path = keys + (key,)
            if "default" in sub:
                name = renamed.get(path, key)
                owner = spec.SearchBudget if path[:2] == ("search", "budget") else cls
                want = default_of(owner, name)
                want = str(want) if isinstance(want, Path) else want
                assert sub["default"] == (list(want) if isinstance(want, tuple) else want), path
                checked += 1
            for alt in [sub] + sub.get("oneOf", []) + sub.get("anyOf", []):
                walk(alt, path, cls)

    for section, cls in sections.items():
        for alt in [defs[section]] + defs[section].get("anyOf", []) + defs[section].get("oneOf", []):
            walk(alt, (section,), cls)
    assert default_of(spec.MetricSpec, "metric") == defs["metric"]["properties"]["metric"]["default"]
    assert policy_schema()["properties"]["target"]["default"] == DEFAULT_TARGET
    assert checked == 50  # every documented default of these sections
