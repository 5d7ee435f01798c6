"""The search remedies skip_first and explicit_range, and `search.cost: latency`, on tiny real models.

skip_first: `helpers.outlier_first_mlp`, whose first node `head` writes one column 1000x wider than the others
into `logits`; keeping the first node in float is the fix.
explicit_range: `helpers.gain_conv`, whose output `y` holds one rare huge value in the calibration data;
minmax spends y's uint8 grid on it, the percentile range does not.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from helpers import gain_conv, outlier_first_mlp, write_npy_samples, write_policy

from qcheck.cli.main import main
from qcheck.model.graph import topological_order
from qcheck.policy.loader import load_policy
from qcheck.quantize.calibrate import Recipe
from qcheck.run.pipeline import run
from qcheck.search.space import Graph

LIMIT = 0.05


def _max_error(model, quantized, folder, output, cols=slice(1, None)):
    """Independent check: max |float - quantized| over output[:, cols] on the evaluation samples, with numpy."""
    f = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    worst = 0.0
    for p in sorted((folder / "eval").glob("*.npy")):
        x = np.load(p)
        a, b = f.run([output], {"x": x})[0], q.run([output], {"x": x})[0]
        worst = max(worst, float(np.abs(a[:, cols].astype(np.float64) - b[:, cols]).max()))
    return worst


# --------------------------------------------------------------------------- skip_first


def _skip_policy(folder, target="cpu", budget=4, remedies=("skip_first",), extra=None):
    folder.mkdir(parents=True, exist_ok=True)
    outlier_first_mlp(folder / "model.onnx")
    write_npy_samples(folder / "calib", 8, shape=(1, 16))
    write_npy_samples(folder / "eval", 4, shape=(1, 16), seed=7)
    doc = {"model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"}, "target": target,
           "metrics": {"scores": {"output": "logits", "slice": "[:, 1:]", "metric": "max_abs"}},
           "require": [f"scores <= {LIMIT}"], "report": {"out": "out", "formats": ["html"]},
           "search": {"strategy": "greedy", "remedies": list(remedies),
                      "budget": {"max_float_nodes": budget, "max_int16_tensors": budget}, **(extra or {})}}
    return write_policy(folder / "qcheck.yaml", doc)


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("skip")
    return folder, run(load_policy(_skip_policy(folder)))


def test_skip_first_keeps_the_first_quantizable_node_in_float(skip_run):
    import onnx

    folder, r = skip_run
    s = r["search"]
    assert not s["candidates"][0]["passes"] and s["status"] == "found"
    # N = 1, 2, 4 within max_float_nodes 4 (the model has 4 quantizable nodes: head, m1, relu, m2)
    tried = sorted(int(c["changes"][0]["value"]) for c in s["candidates"] if c["n_changes"] == 1)
    assert tried == [1, 2, 4]
    chosen = s["candidates"][s["chosen"]]
    assert chosen["changes"] == [{"remedy": "skip_first", "subject": "(model)", "value": "1"}]
    assert chosen["label"] == "float first 1 node(s)"
    # `head` is first in topological order (qcheck.model.graph.topological_order), and only it is excluded
    model = onnx.load(str(folder / "model.onnx"))
    order = topological_order(model)
    assert min(order, key=order.get) == "logits"  # head's output
    graph = Graph(model, {"x", "logits", "h", "r", "feat"})
    assert graph.first_quantizable(Recipe(), 3) == ["head", "m1", "relu"]
    assert graph.first_quantizable(Recipe(exclude_op_types=["Gemm"]), 1) == ["m1"]  # head is already float
    assert r["lock"]["recipe"]["exclude_nodes"] == ["head"]
    # it counts as one float node for cost and budget: cpu float_node 1.0 + one island 0.5
    assert chosen["float_nodes"] == 1 and chosen["cost"] == pytest.approx(1.5)
    assert _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "logits") <= LIMIT
    assert chosen["metrics"]["scores"] == pytest.approx(
        _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "logits"), rel=1e-5, abs=1e-7)


def test_skip_first_is_locked_and_applied_byte_for_byte(skip_run, tmp_path):
    folder, _ = skip_run
    out = tmp_path / "again.onnx"
    assert main(["apply", str(folder / "out" / "policy.lock.yaml"), "--out", str(out)]) == 0
    assert out.read_bytes() == (folder / "out" / "model.fixed.onnx").read_bytes()


def test_skip_first_respects_the_float_node_budget_and_integer_only_targets(tmp_path):
    r = run(load_policy(_skip_policy(tmp_path / "b", budget=0)))
    assert r["search"]["status"] == "failed" and r["search"]["trials"] == 1  # N = 1 is already over budget
    r = run(load_policy(_skip_policy(tmp_path / "npu", target="npu")))
    s = r["search"]
    assert s["status"] == "failed" and s["trials"] == 1
    assert any("skip_first is not available on target 'npu'" in n for n in s["notes"])


# --------------------------------------------------------------------------- explicit_range

C = 256


def _grid_samples(folder, n, seed, outlier_sample=None):
    """x[1,C,1,1] with values i/255 (i = 0..255; the uint8 grid of [0, 1], so x quantizes exactly once its range is
    [0, 1]); x[0] = 0, except x[0] = 1 in `outlier_sample`, where y[0] = gain."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = (rng.integers(0, 256, (1, C, 1, 1)) / 255.0).astype(np.float32)
        x[0, 1], x[0, 2] = 0.0, 1.0  # every sample spans [0, 1]
        x[0, 0] = 1.0 if i == outlier_sample else 0.0
        np.save(folder / f"{i}.npy", x)


def _range_policy(folder, target="cpu", remedies=("explicit_range",)):
    folder.mkdir(parents=True, exist_ok=True)
    gain_conv(folder / "model.onnx", C, 1000.0)
    _grid_samples(folder / "calib", 16, seed=3, outlier_sample=5)
    _grid_samples(folder / "eval", 4, seed=9)
    doc = {"model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"}, "target": target,
           # 16 samples x 256 values of y: one (y[0] = 1000 in sample 5) is 1/4096 = 0.024 % of them, more than
           # the 0.05 % the 99.9 percentile cuts on each side
           "quantization": {"percentile": 99.9},
           "metrics": {"err": {"output": "y", "slice": "[:, 1:]", "metric": "max_abs"}},
           "require": [f"err <= {LIMIT}"], "report": {"out": "out", "formats": ["html"]},
           "search": {"strategy": "greedy", "remedies": list(remedies), "budget": {"max_float_nodes": 0}}}
    return write_policy(folder / "qcheck.yaml", doc)


@pytest.fixture(scope="module")
def range_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("range")
    return folder, run(load_policy(_range_policy(folder)))


def test_explicit_range_from_percentile_fixes_a_grid_wasted_on_a_rare_outlier(range_run):
    folder, r = range_run
    s = r["search"]
    evals = [np.load(p)[0, 1:, 0, 0].astype(np.float64) for p in sorted((folder / "eval").glob("*.npy"))]
    y_max = max(float(e.max()) for e in evals)  # y[c] = x[c] for c >= 1
    # minmax: y's range is [0, 1000], one step 1000/255 = 3.92; every y in [0, 1] is below half a step, so it
    # rounds to 0: the error is y itself, at most y_max
    lo, hi = json.loads((folder / "out" / "ranges.json").read_text())["ranges"]["y"]
    assert (lo, hi) == (0.0, pytest.approx(1000.0))
    base = s["candidates"][0]
    assert y_max / ((hi - lo) / 255) < 0.5
    assert base["metrics"]["err"] == pytest.approx(y_max, rel=1e-6) and not base["passes"]
    # explicit_range: y gets the percentile range as rmin/rmax; its step is (rmax - rmin)/255, and values above
    # rmax are clipped to it: the error is at most max(step/2, y_max - rmax)
    assert s["status"] == "found"
    chosen = s["candidates"][s["chosen"]]
    assert chosen["changes"] == [{"remedy": "explicit_range", "subject": "conv", "value": "percentile"}]
    o = r["lock"]["recipe"]["overrides"]["y"]
    assert set(o) == {"rmin", "rmax"} and o["rmin"] == 0.0
    # ORT's percentile calibrator: 2048 bins over [-1000, 1000] (width 2000/2048); the 99.95 % point of the
    # cumulative histogram falls in bin 1025 = [0.977, 1.953), whose left edge it takes: -1000 + 1025 * 2000/2048
    assert o["rmax"] == pytest.approx(-1000 + 1025 * 2000 / 2048) == pytest.approx(0.9765625)
    pct = json.loads((folder / "out" / "ranges.json").read_text())  # the lock keeps the minmax ranges ...
    assert r["lock"]["ranges_file"] == "ranges.json" and pct["method"] == "minmax"
    step = (o["rmax"] - o["rmin"]) / 255
    bound = max(step / 2, y_max - o["rmax"])
    err = _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "y")
    assert err <= bound + 1e-6 and err <= LIMIT
    assert err == pytest.approx(y_max - o["rmax"], abs=1e-6)  # here clipping dominates: 1 - 0.9765625
    assert chosen["metrics"]["err"] == pytest.approx(err, rel=1e-5, abs=1e-7)
    assert chosen["explicit_ranges"] == 1 and chosen["cost"] == 0.0  # cpu: explicit_range costs 0


def test_explicit_range_is_locked_and_applied_byte_for_byte(range_run, tmp_path):
    folder, r = range_run
    lock = yaml.safe_load((folder / "out" / "policy.lock.yaml").read_text())
    assert lock["recipe"]["overrides"]["y"] == r["lock"]["recipe"]["overrides"]["y"]  # ... and the recipe the range
    out = tmp_path / "again.onnx"
    assert main(["apply", str(folder / "out" / "policy.lock.yaml"), "--out", str(out)]) == 0
    assert out.read_bytes() == (folder / "out" / "model.fixed.onnx").read_bytes()


def test_explicit_range_refused_where_the_target_profile_says_so(tmp_path):
    target = {"name": "no-ranges", "extends": "cpu", "costs": {"explicit_range": None}}
    r = run(load_policy(_range_policy(tmp_path, target=target)))
    s = r["search"]
    assert s["status"] == "failed" and s["trials"] == 1
    assert any("explicit_range is not available on target 'no-ranges'" in n for n in s["notes"])


def test_a_policy_states_an_explicit_range_by_hand(tmp_path):
    """quantization.overrides: {y: {rmin, rmax}} is the same remedy written by hand: ORT uses it for y's scale."""
    policy = _range_policy(tmp_path)
    doc = yaml.safe_load(policy.read_text())
    doc["quantization"]["overrides"] = {"y": {"rmin": 0.0, "rmax": 1.0}}
    del doc["search"]
    write_policy(policy, doc)
    r = run(load_policy(policy))
    assert r["quantization"]["recipe"]["overrides"] == {"y": {"rmin": 0.0, "rmax": 1.0}}
    err = _max_error(tmp_path / "model.onnx", tmp_path / "out" / "model.quant.onnx", tmp_path, "y")
    assert err <= (1.0 / 255) / 2 + 1e-6  # every y in [0, 1]: at most half a step of 1/255
    assert r["verdict"]["status"] == "pass"


# --------------------------------------------------------------------------- search.cost: latency


def test_select_by_latency_takes_the_fastest_passing_finalist():
    from qcheck.search import pareto_front, select_by_latency

    def c(i, cost, ms, passes, n=1):
        return {"id": i, "cost": cost, "latency_ms": ms, "passes": passes, "n_changes": n,
                "failed": 0 if passes else 1, "shortfall": 0.0 if passes else 1.0}

    finalists = [c(0, 0.0, 1.0, False, 0), c(1, 0.5, 3.0, True), c(2, 1.5, 2.0, True), c(3, 1.0, 2.0, True)]
    assert select_by_latency(finalists)["id"] == 3  # 2.0 ms twice: the lower profile cost breaks the tie
    assert select_by_latency([finalists[0]]) is None  # nothing passing: nothing chosen
    # Pareto front on latency: 0 (fastest, fails), 2 and 3 (fastest passing, equal on both axes, so neither beats
    # the other); 1 is slower and no closer; candidates never timed are left out
    assert pareto_front(finalists + [{"id": 4, "cost": 0.1, "latency_ms": None, "failed": 0, "shortfall": 0.0}],
                        "latency_ms") == [0, 2, 3]


def test_cost_latency_chooses_among_passing_finalists_by_measured_latency(tmp_path):
    """outlier_head_cnn (test_search.py): fc in float or fc's output in int16 both pass. With `cost: latency`
    the choice is the passing finalist with the lowest latency as measured (whichever it is on this machine)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))  # test_search is a sibling
    from test_search import _policy

    policy = _policy(tmp_path, remedies=("keep_float", "int16_activations"), budget=2, strategy="exhaustive")
    doc = yaml.safe_load(policy.read_text())
    doc["search"].update({"cost": "latency", "finalists": 3, "latency_repeats": 3})
    write_policy(policy, doc)
    r = run(load_policy(policy))
    s = r["search"]
    assert s["cost"] == "latency" and s["status"] == "found"
    finalists = [s["candidates"][i] for i in s["finalists"]]
    passing = [c for c in finalists if c["passes"]]
    assert len(passing) >= 2 and all(c["latency_ms"] is not None for c in finalists)
    chosen = s["candidates"][s["chosen"]]
    assert chosen["id"] == min(passing, key=lambda c: (c["latency_ms"], c["cost"], c["n_changes"], c["id"]))["id"]
    assert "fastest" in s["why"] and "search.cost: latency" in s["why"]
    assert set(s["pareto"]) <= set(s["finalists"])  # the front is drawn on latency: only timed candidates
    html = (tmp_path / "out" / "report.html").read_text()
    assert "the choice is by measured latency" in html
    # the lock holds the chosen recipe, whichever it is
    assert r["lock"]["recipe_key"] == chosen["recipe_key"]


# --------------------------------------------------------------------------- rules propose, the policy allows


def test_rule_findings_propose_the_remedies_the_policy_allows_in_the_policys_order(tmp_path):
    import onnx
    from helpers import small_cnn

    from qcheck.policy.targets import builtin_profile
    from qcheck.search.ranking import proposed_remedies
    from qcheck.search.space import build_pool

    model = onnx.load(str(small_cnn(tmp_path / "m.onnx")))
    graph = Graph(model, {"x", "c1", "r1", "c2", "r2", "gap", "flat", "logits"})
    findings = [{"node": "fc", "severity": "warning", "remedies": ["per_channel", "int16_activations"]},
                {"node": "conv1", "severity": "info", "remedies": ["calibration_method", "qat"]},
                {"node": "fc", "severity": "error", "remedies": ["keep_float"]}]
    proposed = proposed_remedies(findings)
    assert proposed == {"fc": ["keep_float", "per_channel", "int16_activations"],
                        "conv1": ["calibration_method", "qat"]}
    allowed = ["int16_activations", "keep_float", "per_channel"]
    model_changes, node_changes, _ = build_pool(["fc", "conv1", "conv2"], allowed, builtin_profile("cpu"), graph,
                                                Recipe(), 20, 4, proposed)
    by_node = {}
    for c in node_changes:
        by_node.setdefault(c.subject, []).append(c.remedy)
    assert by_node["fc"] == ["int16_activations", "keep_float"]  # proposed and allowed, in the policy's order
    assert by_node["conv1"] == ["int16_activations", "keep_float"]  # proposes no per-node remedy: all allowed
    assert by_node["conv2"] == ["int16_activations", "keep_float"]  # no finding: all allowed
    assert [c.remedy for c in model_changes] == ["per_channel"]
    # a rule that proposes only int16 for fc narrows fc to it, although the policy allows float too
    _, node_changes, _ = build_pool(["fc"], ["keep_float", "int16_activations"], builtin_profile("cpu"), graph,
                                    Recipe(), 20, 4, {"fc": ["int16_activations"]})
    assert [c.remedy for c in node_changes] == ["int16_activations"]
    # a proposal that changes nothing on the node (fc already float by policy) does not leave it without remedies
    _, node_changes, _ = build_pool(["fc"], ["keep_float", "int16_activations"], builtin_profile("cpu"), graph,
                                    Recipe(exclude_nodes=["fc"]), 20, 4, {"fc": ["keep_float"]})
    assert [c.remedy for c in node_changes] == ["int16_activations"]


def test_explicit_range_from_the_policys_own_method_is_explained_not_tried(tmp_path):
    policy = _range_policy(tmp_path)
    doc = yaml.safe_load(policy.read_text())
    doc["quantization"]["calibration"] = "percentile"
    doc["require"] = ["err <= 0.001"]  # the percentile recipe itself misses this (its error is 0.0234, see above)
    write_policy(policy, doc)
    s = run(load_policy(policy))["search"]
    assert s["trials"] == 1 and s["status"] == "failed"
    assert any("already calibrates with percentile" in n for n in s["notes"])


def test_keep_float_flagged_keeps_every_node_a_warning_proposes_to_float_at_once(tmp_path):
    """outlier_head_cnn: QC107 warns on `logits` (made by fc) and proposes keep_float among its remedies; no other
    node has an error or warning finding. keep_float_flagged is then `fc` in float, one change, one float node."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))  # test_search is a sibling
    from test_search import _policy

    r = run(load_policy(_policy(tmp_path / "a", remedies=("keep_float_flagged",))))
    s = r["search"]
    flagged = [f["node"] for f in r["findings"]
               if f["severity"] in ("error", "warning") and "keep_float" in f["remedies"]]
    assert flagged == ["fc"] and s["flagged"] == ["fc"]
    chosen = s["candidates"][s["chosen"]]
    assert s["status"] == "found" and chosen["label"] == "float flagged nodes"
    assert chosen["float_nodes"] == 1 and chosen["cost"] == pytest.approx(1.5)  # cpu: 1.0 + one island 0.5
    assert r["lock"]["recipe"]["exclude_nodes"] == ["fc"]
    # over the float-node budget it is not tried
    r = run(load_policy(_policy(tmp_path / "b", remedies=("keep_float_flagged",), budget=0)))
    assert r["search"]["status"] == "failed" and r["search"]["trials"] == 1


def test_the_searchs_own_calibrations_hold_to_the_policys_memory_mb(tmp_path, monkeypatch):
    """explicit_range calibrates again with the policy's histogram method: within `analyses.memory_mb`, as the
    run's own calibration (before, the search's calls used the default 1024 MB)."""
    from qcheck.search import stage

    seen = []
    real = stage.calibrate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("memory_mb"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "calibrate", spy)
    path = _range_policy(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["analyses"] = {"memory_mb": 64, "sensitivity": False, "curves": False, "distributions": False,
                       "confirm": False}
    path.write_text(yaml.safe_dump(doc))
    r = run(load_policy(path))
    assert r["search"]["status"] == "found"
    assert seen and all(m == 64 for m in seen)
