"""The fallback search on a model with one node made to quantize badly, the lock file and `qcheck apply`.

The model (`helpers.outlier_head_cnn`) is small_cnn whose last node `fc` writes a column 1000 times wider
than the others into `logits`, as detector heads join box pixels and class scores. Per-tensor uint8 on
`logits` rounds the narrow columns away; the policy's metric watches exactly those columns. Only `fc`
decides how `logits` is quantized, so only a remedy on `fc` (float, or int16 output) can fix it.
"""

import hashlib
import json
import math
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from helpers import outlier_head_cnn, write_npy_samples, write_policy

from qcheck.cli.main import main
from qcheck.errors import PolicyError
from qcheck.policy.loader import load_policy
from qcheck.policy.targets import builtin_profile
from qcheck.run.pipeline import run
from qcheck.search import pareto_front
from qcheck.search.evaluate import shortfall
from qcheck.search.space import Change, Graph, cost

LIMIT = 0.05


def _policy(folder, target="cpu", remedies=("keep_float",), budget=1, strategy="greedy", search=True):
    folder.mkdir(parents=True, exist_ok=True)
    outlier_head_cnn(folder / "model.onnx")
    write_npy_samples(folder / "calib", 8)
    write_npy_samples(folder / "eval", 4, seed=7)
    doc = {"model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"}, "target": target,
           "metrics": {"scores": {"output": "logits", "slice": "[:, 1:]", "metric": "max_abs"}},
           "require": [f"scores <= {LIMIT}"], "report": {"out": "out", "formats": ["html"]}}
    if search:
        doc["search"] = {"strategy": strategy, "remedies": list(remedies),
                         "budget": {"max_float_nodes": budget, "max_int16_tensors": budget}}
    return write_policy(folder / "qcheck.yaml", doc)


def _scores_error(model_path, folder):
    """Independent check: max |float - quantized| over logits[:, 1:] on the evaluation samples, with numpy."""
    f = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i in range(4):
        x = np.load(folder / "eval" / f"{i}.npy")
        a, b = f.run(None, {"x": x})[0], q.run(None, {"x": x})[0]
        worst = max(worst, float(np.abs(a[:, 1:].astype(np.float64) - b[:, 1:]).max()))
    return worst


@pytest.fixture(scope="module")
def greedy_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("greedy")
    results = run(load_policy(_policy(folder)))
    return folder, results


def test_greedy_finds_the_bad_node_and_only_it_within_a_budget_of_one(greedy_run):
    folder, r = greedy_run
    s = r["search"]
    baseline = s["candidates"][0]
    assert baseline["label"] == "the policy's recipe" and not baseline["passes"]
    assert s["status"] == "found"
    chosen = s["candidates"][s["chosen"]]
    assert [c["subject"] for c in chosen["changes"]] == ["fc"] and chosen["float_nodes"] == 1
    assert r["lock"]["recipe"]["exclude_nodes"] == ["fc"] and r["lock"]["recipe"]["overrides"] == {}
    assert all(c["float_nodes"] <= 1 for c in s["candidates"])  # the budget held for every trial
    # every other single node kept float still misses: fc is the one
    others = [c for c in s["candidates"] if c["n_changes"] == 1 and c["changes"][0]["subject"] != "fc"]
    assert others and not any(c["passes"] for c in others)
    # the verdict is the chosen recipe's, and the model it names really does meet the requirement
    assert r["verdict"]["status"] == "pass" and s["baseline_verdict"]["status"] == "fail"
    fixed = folder / "out" / "model.fixed.onnx"
    err = _scores_error(fixed, folder)
    assert err <= LIMIT
    assert chosen["metrics"]["scores"] == pytest.approx(err, rel=1e-5, abs=1e-7)
    assert baseline["metrics"]["scores"] == pytest.approx(_scores_error(folder / "out" / "model.quant.onnx", folder),
                                                          rel=1e-5)
    # cost from the cpu profile: one float node (1.0) forming one float island (0.5)
    assert chosen["cost"] == pytest.approx(1.5)
    assert chosen["latency_ms"] is not None and chosen["id"] in s["finalists"]
    assert 'id="search"' in (folder / "out" / "report.html").read_text()


def test_budget_zero_fails_and_recommends_qat(tmp_path):
    policy = _policy(tmp_path, budget=0)
    assert main(["run", str(policy), "--quiet"]) == 1
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    s = r["search"]
    assert s["status"] == "failed" and s["chosen"] is None and s["trials"] == 1
    assert s["recommendation"]["action"] == "quantization-aware training"
    assert "scores <= 0.05" in s["recommendation"]["reason"] and "max_float_nodes 0" in s["recommendation"]["reason"]
    assert s["closest"] == [0]
    assert r["verdict"]["status"] == "fail" and r["verdict"]["search"]["status"] == "failed"
    assert "quantization-aware training" in (tmp_path / "out" / "report.html").read_text()


def test_integer_only_target_chooses_int16_instead_of_float(tmp_path):
    r = run(load_policy(_policy(tmp_path, target="npu", remedies=("keep_float", "int16_activations"))))
    s = r["search"]
    assert s["status"] == "found"
    assert r["lock"]["recipe"]["exclude_nodes"] == []
    assert r["lock"]["recipe"]["overrides"] == {"logits": {"quant_type": "int16"}}
    assert all(c["float_nodes"] == 0 for c in s["candidates"])
    assert any("keep_float is not available on target 'npu'" in n for n in s["notes"])
    assert _scores_error(tmp_path / "out" / "model.fixed.onnx", tmp_path) <= LIMIT
    assert s["candidates"][s["chosen"]]["cost"] == pytest.approx(1.0)  # npu: int16_tensor costs 1.0


def test_exhaustive_finds_the_cheapest_fix(tmp_path):
    """On cpu int16 (0.5) is cheaper than a float node (1.0 + an island 0.5): trying every combination ends on int16 fc."""
    r = run(load_policy(_policy(tmp_path, remedies=("keep_float", "int16_activations"), budget=2, strategy="exhaustive")))
    assert r["search"]["status"] == "found"
    assert r["lock"]["recipe"]["overrides"] == {"logits": {"quant_type": "int16"}}
    assert r["lock"]["recipe"]["exclude_nodes"] == []


def test_bisect_finds_the_bad_node(tmp_path):
    """Bisect walks prefixes of the ranking with the first remedy the budget allows, then prunes: only fc is left."""
    r = run(load_policy(_policy(tmp_path, remedies=("keep_float", "int16_activations"), budget=2, strategy="bisect")))
    s = r["search"]
    assert s["status"] == "found"
    assert [c["subject"] for c in s["candidates"][s["chosen"]]["changes"]] == ["fc"]


def test_apply_rebuilds_the_locked_model_byte_for_byte(greedy_run, tmp_path, capsys):
    folder, _ = greedy_run
    lock = folder / "out" / "policy.lock.yaml"
    out = tmp_path / "again.onnx"
    assert main(["apply", str(lock), "--out", str(out)]) == 0
    assert out.read_bytes() == (folder / "out" / "model.fixed.onnx").read_bytes()
    assert "identical" in capsys.readouterr().out


def test_apply_fails_clearly_when_model_or_ranges_changed(greedy_run, tmp_path, capsys):
    folder, _ = greedy_run
    copy = tmp_path / "out"
    shutil.copytree(folder / "out", copy)
    other = outlier_head_cnn(tmp_path / "other.onnx", factor=999.0)
    assert main(["apply", str(copy / "policy.lock.yaml"), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "the model changed since the lock was written" in err and "Traceback" not in err
    ranges = json.loads((copy / "ranges.json").read_text())
    ranges["ranges"]["logits"][1] += 1.0
    (copy / "ranges.json").write_text(json.dumps(ranges))
    assert main(["apply", str(copy / "policy.lock.yaml")]) == 2
    assert "calibration ranges changed" in capsys.readouterr().err


def test_runs_are_deterministic_apart_from_timings(greedy_run, tmp_path):
    folder, first = greedy_run
    again = run(load_policy(folder / "qcheck.yaml"), out=tmp_path / "again")

    def strip(value):  # timings (stage, analysis and build times, latencies) and where/when the run was written
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if k not in ("timings", "peak_memory_mb", "created", "output_folder", "render_seconds", "seconds",
                                 "latency_ms", "build_seconds")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    first, again = (json.loads(json.dumps(r, default=str)) for r in (first, again))
    assert strip(first) == strip(again)
    assert (tmp_path / "again" / "model.fixed.onnx").read_bytes() == (folder / "out" / "model.fixed.onnx").read_bytes()


# --------------------------------------------------------------------------- the parts, in isolation


def test_shortfall_is_the_relative_distance_to_the_threshold():
    assert shortfall("scores <= 0.05", {"scores": 0.15}) == pytest.approx(2.0)  # (0.15 - 0.05) / 0.05
    assert shortfall("model.cosine >= 0.999", {"model.cosine": 0.899}) == pytest.approx(0.1 / 0.999)
    assert shortfall("0.999 <= model.cosine", {"model.cosine": 0.899}) == pytest.approx(0.1 / 0.999)
    assert shortfall("scores <= 0.05", {"scores": 0.01}) == 0.0
    assert shortfall("scores <= 0.05", {"scores": math.nan}) == math.inf
    assert shortfall("a <= 1 and b <= 2", {"a": 3, "b": 1}) == 1.0  # not a single comparison: counts 1


def test_pareto_front_keeps_candidates_nothing_beats_on_both_axes():
    c = lambda i, cost, failed, gap: {"id": i, "cost": cost, "failed": failed, "shortfall": gap}  # noqa: E731
    cands = [c(0, 0.0, 1, 5.0), c(1, 1.0, 1, 2.0), c(2, 1.5, 0, 0.0), c(3, 2.0, 0, 0.0), c(4, 1.0, 1, 3.0)]
    assert pareto_front(cands) == [0, 1, 2]


def test_cost_and_islands_follow_the_target_profile(tmp_path):
    import onnx
    from helpers import small_cnn

    model = onnx.load(str(small_cnn(tmp_path / "m.onnx")))
    g = Graph(model, {"x", "c1", "r1", "c2", "r2", "gap", "flat", "logits"})
    cpu, npu = builtin_profile("cpu"), builtin_profile("npu")
    adjacent = (Change("keep_float", "conv1"), Change("keep_float", "relu1"))
    apart = (Change("keep_float", "conv1"), Change("keep_float", "fc"))
    assert g.islands(["conv1", "relu1"]) == 1 and g.islands(["conv1", "fc"]) == 2
    assert cost(adjacent, g, cpu) == pytest.approx(2 * 1.0 + 1 * 0.5)
    assert cost(apart, g, cpu) == pytest.approx(2 * 1.0 + 2 * 0.5)
    assert cost(apart, g, npu) == math.inf  # integer only: a float node is not allowed at all
    assert cost((Change("int16_activations", "fc"),), g, npu) == pytest.approx(1.0)


def test_search_section_errors_point_at_the_policy_line(tmp_path):
    folder = tmp_path
    policy = _policy(folder)
    text = policy.read_text().replace("strategy: greedy", "strategy: greedyy")
    policy.write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policy(policy)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "greedyy" in t)
    assert f"qcheck.yaml:{line}:" in str(exc.value) and "did you mean 'greedy'" in str(exc.value)


def test_lock_names_the_hashes(greedy_run):
    import yaml

    folder, r = greedy_run
    lock = yaml.safe_load((folder / "out" / "policy.lock.yaml").read_text())
    assert lock["model"]["sha256"] == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    assert lock["quantized_model"]["sha256"] == hashlib.sha256((folder / "out" / "model.fixed.onnx").read_bytes()).hexdigest()
    assert lock["ranges"]["sha256"] == r["quantization"]["ranges_sha256"]
    assert lock["versions"]["onnxruntime"] == ort.__version__


def test_ranking_puts_rule_findings_first_then_the_worst_local_statistics():
    from qcheck.search.ranking import candidate_ranking, rank_nodes

    rows = [
        {"name": "a", "kind": "activation", "node": "n1", "op_type": "Conv", "order": 1, "cosine": 0.999, "rmse_scale": 0.3},
        {"name": "b", "kind": "activation", "node": "n2", "op_type": "Conv", "order": 2, "cosine": 0.90, "rmse_scale": 0.3},
        {"name": "w", "kind": "weight", "node": "n3", "op_type": "Conv", "order": 3, "cosine": 0.999, "rmse_scale": 2.0},
        {"name": "c", "kind": "activation", "node": "n3", "op_type": "Conv", "order": 3, "cosine": 0.999, "rmse_scale": 0.3},
        {"name": "x", "kind": "activation", "node": "(input)", "op_type": "Input", "order": -1, "cosine": 0.5},
        # per-layer statistics missing (null in results.json): not a perfect node, an unmeasured one
        {"name": "d", "kind": "activation", "node": "n0", "op_type": "HardSigmoid", "order": 0, "cosine": None,
         "rmse_scale": None},
    ]
    # lowest cosine first; equal cosine: highest rmse/scale (over the node's weights too); graph inputs are no node;
    # unmeasured nodes last, with their values left empty
    ranked = rank_nodes(rows)
    assert [w["node"] for w in ranked] == ["n2", "n3", "n1", "n0"]
    assert ranked[-1]["cosine"] is None and ranked[-1]["rmse_scale"] is None
    findings = [{"severity": "warning", "node": "n3"}, {"severity": "error", "node": "n1"}, {"severity": "info", "node": None}]
    assert candidate_ranking(rows, findings)[0] == ["n1", "n3", "n2", "n0"]
    assert candidate_ranking(rows, findings, sensitivity=["n3", "n2", "n3"])[0] == ["n3", "n2"]


def test_apply_without_search_and_when_the_calibration_data_changed(tmp_path, capsys):
    policy = _policy(tmp_path, search=False)
    assert main(["run", str(policy), "--quiet"]) == 1  # fails, no search: the lock holds the policy's own recipe
    lock = tmp_path / "out" / "policy.lock.yaml"
    assert main(["apply", str(lock), "--out", str(tmp_path / "a.onnx")]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "out" / "model.quant.onnx").read_bytes()
    capsys.readouterr()
    x = np.load(tmp_path / "calib" / "3.npy")
    np.save(tmp_path / "calib" / "3.npy", x * 1.01)
    assert main(["apply", str(lock), "--out", str(tmp_path / "b.onnx")]) == 2
    err = capsys.readouterr().err
    assert "calibration data changed" in err and "policy.lock.yaml" in err


def test_apply_never_writes_over_what_it_reads_and_replaces_out_only_when_whole(tmp_path, capsys):
    """`--out model.onnx` once replaced the user's float model with the int8 one. Every file apply reads is
    refused as --out (exit 2, nothing changed); an existing other file is replaced by the whole rebuilt model."""
    policy = _policy(tmp_path, search=False)
    main(["run", str(policy), "--quiet"])
    lock = tmp_path / "out" / "policy.lock.yaml"
    inputs = [tmp_path / "model.onnx", lock, tmp_path / "out" / "ranges.json"]
    before = [p.read_bytes() for p in inputs]
    capsys.readouterr()
    for target, what in zip(inputs, ["the float model", "the lock file", "the locked ranges"]):
        assert main(["apply", str(lock), "--out", str(target)]) == 2
        assert f"is {what} this apply reads" in capsys.readouterr().err
    for target, words in ((tmp_path / "out", "is a folder"), (tmp_path / "nowhere" / "m.onnx", "does not exist")):
        assert main(["apply", str(lock), "--out", str(target)]) == 2
        assert words in capsys.readouterr().err
    assert [p.read_bytes() for p in inputs] == before
    old = tmp_path / "old.onnx"
    old.write_bytes(b"an older build")
    assert main(["apply", str(lock), "--out", str(old)]) == 0
    assert old.read_bytes() == (tmp_path / "out" / "model.quant.onnx").read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".qcheck-" in p.name]  # no staged copy left beside it


def test_a_whole_model_remedy_with_its_own_calibration_is_locked_and_applied(tmp_path):
    """Entropy calibration clips the wide column's range, which helps the narrow ones: with a looser limit it
    passes, is calibrated once for the search, and its ranges are written next to the lock."""
    policy = _policy(tmp_path, remedies=("calibration_method",), budget=0)
    policy.write_text(policy.read_text().replace(f"scores <= {LIMIT}", "scores <= 0.5"))
    r = run(load_policy(policy))
    assert r["search"]["status"] == "found" and r["lock"]["recipe"]["calibration"] == "entropy"
    assert r["lock"]["ranges_file"] == "ranges.entropy.json"
    chosen = r["search"]["candidates"][r["search"]["chosen"]]
    assert chosen["cost"] == 0.0 and chosen["metrics"]["scores"] <= 0.5
    assert chosen["metrics"]["scores"] == pytest.approx(_scores_error(tmp_path / "out" / "model.fixed.onnx", tmp_path),
                                                        rel=1e-5)
    assert main(["apply", str(tmp_path / "out" / "policy.lock.yaml"), "--out", str(tmp_path / "e.onnx")]) == 0
    assert (tmp_path / "e.onnx").read_bytes() == (tmp_path / "out" / "model.fixed.onnx").read_bytes()


def test_search_judges_task_metrics_too(tmp_path):
    """A classification task metric on the narrow columns: top-1 agreement with float. The search feeds each
    candidate's outputs to the task metric as the measurement does, so the requirement can be met."""
    policy = _policy(tmp_path, remedies=("keep_float",))
    text = policy.read_text().replace("metric: max_abs", "task: classification").replace(
        f"scores <= {LIMIT}", "scores >= 1.0")
    policy.write_text(text)
    r = run(load_policy(policy))
    s = r["search"]
    base = s["candidates"][0]
    assert base["metrics"]["scores"] == pytest.approx(r["model_metrics"]["tasks"]["scores"]["value"])
    assert base["metrics"]["scores"] < 1.0 and s["status"] == "found"
    assert r["lock"]["recipe"]["exclude_nodes"] == ["fc"]
    assert s["candidates"][s["chosen"]]["metrics"]["scores"] == 1.0


def test_findings_requirements_are_judged_on_each_candidates_own_findings(tmp_path):
    """`findings.warning == 0` fails for the policy's recipe: QC107 warns that one column of `logits` is ~1000x
    wider than the others under one per-tensor scale. With `fc` in float, `logits` is not quantized, so the
    candidate, measured per tensor and judged by the rule packs itself, has no warning and passes."""
    policy = _policy(tmp_path)
    policy.write_text(policy.read_text().replace(f"scores <= {LIMIT}", "findings.warning == 0"))
    r = run(load_policy(policy))
    s = r["search"]
    base = s["candidates"][0]
    assert s["findings_measured"] and base["findings_measured"]
    assert base["finding_counts"] == r["finding_counts"]  # the policy's recipe: the pipeline's own counts
    assert base["finding_counts"]["warning"] >= 1 and not base["passes"]
    assert any(f["code"] == "QC107" and f["tensor"] == "logits" for f in r["findings"])
    chosen = s["candidates"][s["chosen"]]
    assert s["status"] == "found" and [c["subject"] for c in chosen["changes"]] == ["fc"]
    assert chosen["finding_counts"]["warning"] == 0
    assert r["verdict"]["status"] == "pass"
    assert r["verdict"]["requirements"][0]["values"] == {"findings.warning": 0}
    # another node kept float does not remove the warning on logits
    assert all(not c["passes"] and c["finding_counts"]["warning"] >= 1 for c in s["candidates"]
               if c["n_changes"] == 1 and c["changes"][0]["subject"] != "fc")
    assert "findings (error / warning / info)" in (tmp_path / "out" / "report.html").read_text()


def test_candidates_keep_the_baseline_findings_when_no_requirement_reads_them(greedy_run):
    _, r = greedy_run
    s = r["search"]
    assert s["cost"] == "profile"  # the default: the target profile's costs choose
    assert not s["findings_measured"]
    assert all(c["finding_counts"] == r["finding_counts"] for c in s["candidates"])


def test_a_search_stopped_by_its_budget_before_trying_a_remedy_asks_for_more_budget_not_qat():
    """Orientation classifier under load: 10 whole-model trials filled max_seconds, keep_float and int16_weights
    were never tried; recommending retraining then would rest on nothing. Once every allowed remedy was tried,
    or the search ended on its own, the recommendation is QAT again."""
    from qcheck.policy.spec import SearchBudget, SearchSpec
    from qcheck.policy.targets import builtin_profile
    from qcheck.search import recommend

    def cand(remedy, value):
        return {"id": 0, "changes": [{"remedy": remedy, "subject": "(model)", "value": None}], "passes": False,
                "within_budget": True, "figure": "confirmed", "label": remedy, "cost": 1.0, "float_nodes": 0,
                "int16_tensors": 0, "explicit_ranges": 0, "n_changes": 1, "shortfall": 1 - value, "failed": 1,
                "requirements": [{"text": "top1 >= 0.95", "holds": False, "values": {"top1": value},
                                  "shortfall": 1 - value}]}

    spec = SearchSpec(budget=SearchBudget(max_seconds=900))
    cpu = builtin_profile("cpu")
    tried = [cand("scheme", 0.84)]
    stopped = recommend(tried, spec, cpu, "max_seconds", ["scheme", "keep_float", "int16_weights"])
    assert stopped["action"] == "a larger search.budget.max_seconds"
    assert "before it tried keep_float, int16_weights" in stopped["reason"] and "top1 = 0.84" in stopped["reason"]
    assert recommend(tried, spec, cpu, "max_seconds", ["scheme"])["action"] == "quantization-aware training"
    assert recommend(tried, spec, cpu, None, ["scheme", "keep_float"])["action"] == "quantization-aware training"


def test_a_regions_units_change_every_node_the_region_changes(tmp_path):
    """auto splits a passing region into units before pruning it. gap writes into the chain gap -> flat (one grid
    through Flatten) without linking it (its input r2 is on another grid), so the chain's nodes are flatten alone:
    gap must stay a unit of its own, or the units together leave it quantized and no longer pass as the region did."""
    import onnx
    from helpers import small_cnn

    from qcheck.search.auto import split_region

    model = onnx.load(str(small_cnn(tmp_path / "m.onnx")))
    g = Graph(model, {"x", "c1", "r1", "c2", "r2", "gap", "flat", "logits"})
    g.units.chains = {"chain:gap": ["gap", "flat"]}
    assert g.units.chain_of("gap") == "chain:gap" and g.units.nodes("chain:gap") == ["flatten"]
    region = Change("keep_float", "tail:relu2")
    units = split_region(region, g, "keep_float")
    assert Change("keep_float", "gap") in units and Change("keep_float", "chain:gap") in units
    assert sorted(n for u in units for n in g.float_nodes_of(u.subject)) == sorted(g.float_nodes_of(region.subject))
