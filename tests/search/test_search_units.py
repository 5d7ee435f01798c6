"""The default search (`strategy: auto`) on small real models whose fix is known.

- `two_head_concat`: class scores (0-1) and box pixels (0-300) joined at three Concats; the fix is the
  shared-scale chain (all three Concats), not one node.
- `one_matmul` evaluated on inputs 4x wider than calibrated: clipping; int16 alone changes nothing, a range
  widened to what the evaluation data reach passes (and replaces keeping the node in float).
- `matmul_stack`: error spread over eight layers; only scheme a16w8 passes within the budget, and QAT is never
  recommended.
- `coarse_weight_matmul`: the error is the weights' int8 rounding (max error 0.37 int8, 0.27 a16w8, 0.11 with int16
  weights alone); with no float node allowed, only int16 weights on top of int16 activations pass.
Every figure the tests check is recomputed independently with ONNX Runtime and numpy.
"""

import numpy as np
import onnxruntime as ort
import pytest
from helpers import coarse_weight_matmul, matmul_stack, one_matmul, two_head_concat, write_npy_samples, write_policy

from qcheck.policy.loader import load_policy
from qcheck.run.pipeline import run

ALL_REMEDIES = ["keep_float", "int16_activations", "widen_range", "explicit_range", "scheme", "calibration_method",
                "per_channel", "symmetric"]


def _policy(folder, build, metric, require, budget, eval_scale=1.0, shape=(1, 4), remedies=ALL_REMEDIES):
    folder.mkdir(parents=True, exist_ok=True)
    build(folder / "model.onnx")
    write_npy_samples(folder / "calib", 16, shape=shape)
    write_npy_samples(folder / "eval", 8, shape=shape, seed=7, scale=eval_scale)
    doc = {"model": "model.onnx", "data": {"calibration": "calib", "evaluation": "eval"},
           "metrics": metric, "require": require, "report": {"out": "out", "formats": ["html"]},
           "search": {"remedies": remedies, "budget": budget}}
    return write_policy(folder / "qcheck.yaml", doc)


def _max_error(model, fixed, folder, output, index=...):
    f = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    q = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    worst = 0.0
    for p in sorted((folder / "eval").glob("*.npy")):
        x = {"x": np.load(p)}
        worst = max(worst, float(np.abs(f.run([output], x)[0][index] - q.run([output], x)[0][index]).max()))
    return worst


def _subjects(cand):
    return {c["subject"] for c in cand["changes"]}


@pytest.fixture(scope="module")
def concat_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concat")
    policy = _policy(folder, two_head_concat, {"scores": {"output": "out", "slice": "[:, 0::2]", "metric": "max_abs"}},
                     ["scores <= 0.05"], {"max_float_nodes": 6, "max_int16_tensors": 10, "max_trials": 60})
    return folder, run(load_policy(policy))


def test_mixed_concat_is_fixed_on_its_shared_scale_chain_not_one_node(concat_run):
    folder, results = concat_run
    s = results["search"]
    assert s["strategy"] == "auto" and s["status"] == "found"
    chosen = s["candidates"][s["chosen"]]
    assert all(subject.startswith("chain:") for subject in _subjects(chosen)), chosen["label"]
    # no single Concat kept in float passes (each leaves the scores on another Concat's 0-300 grid)
    singles = [c for c in s["candidates"] if c["n_changes"] == 1 and c["changes"][0]["remedy"] == "keep_float"
               and c["changes"][0]["subject"] in ("concat1", "concat2", "concat")]
    assert all(not c["passes"] for c in singles)
    # judged independently: the fixed model's scores on the evaluation data
    base = _max_error(folder / "model.onnx", folder / "out" / "model.quant.onnx", folder, "out", (slice(None), [0, 2]))
    fixed = _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "out",
                       (slice(None), [0, 2]))
    assert base > 0.3 and fixed <= 0.05
    assert "" not in s["ranking"]
    # no recipe judged twice the same way (a screened recipe may be confirmed once more, by building it)
    assert len({(c["recipe_key"], c["figure"]) for c in s["candidates"]}) == len(s["candidates"])
    # the units were found and pruned on the emulation model, then confirmed by building: where one recipe has both
    # figures, they agree on pass/fail and closely on the value (test_screen.py bounds the difference)
    assert chosen["figure"] == "confirmed" and s["screened"] > 0 and s["screening"]["candidates"] == s["screened"]
    screened = {c["recipe_key"]: c for c in s["candidates"] if c["figure"] == "screened"}
    twins = [(screened[c["recipe_key"]], c) for c in s["candidates"]
             if c["figure"] == "confirmed" and c["recipe_key"] in screened]
    assert twins
    for a, b in twins:
        assert a["passes"] == b["passes"]
        assert a["requirements"][0]["values"]["scores"] == pytest.approx(b["requirements"][0]["values"]["scores"],
                                                                        abs=0.01)
    # no no-op: every candidate after the policy's recipe changes something (float nodes, int16, ranges, or a
    # whole-model setting): keeping float a node ORT would not quantize anyway is never a change
    for c in s["candidates"][1:]:
        assert c["float_nodes"] or c["int16_tensors"] or c["explicit_ranges"] or \
            any(ch["subject"] == "(model)" for ch in c["changes"]), c["label"]


@pytest.fixture(scope="module")
def clipping_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    policy = _policy(folder, one_matmul, {"y_err": {"output": "y", "metric": "max_abs"}}, ["y_err <= 0.15"],
                     {"max_float_nodes": 2, "max_int16_tensors": 4}, eval_scale=4.0, shape=(1, 16))
    return folder, run(load_policy(policy))


def test_clipping_needs_a_wider_range_and_int16_alone_fails(clipping_run):
    folder, results = clipping_run
    s = results["search"]
    assert s["status"] == "found"
    chosen = s["candidates"][s["chosen"]]
    assert "widen_range" in {c["remedy"] for c in chosen["changes"]} and chosen["float_nodes"] == 0
    int16_alone = [c for c in s["candidates"] if [ch["remedy"] for ch in c["changes"]] == ["int16_activations"]]
    assert int16_alone and not any(c["passes"] for c in int16_alone)
    a16w8 = [c for c in s["candidates"] if c["label"] == "scheme a16w8"]
    assert a16w8 and not a16w8[0]["passes"]  # more bits over the same clipped range: still clipped
    assert _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "y") <= 0.15
    assert any("evaluation data" in n and "widen_range" in n for n in s["notes"])  # the fit-to-eval caveat
    # the findings on mm propose keep_float first: tried (screened), it recovers the whole shortfall but a hair
    base = s["candidates"][0]["shortfall"]
    assert s["finding_effects"]["mm"] == pytest.approx(base, rel=0.05)
    assert results["findings"][0]["node"] == "mm"


@pytest.fixture(scope="module")
def stack_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    policy = _policy(folder, matmul_stack, {"y_err": {"output": "y", "metric": "max_abs"}}, ["y_err <= 0.03"],
                     {"max_float_nodes": 1, "max_int16_tensors": 1, "max_trials": 40}, eval_scale=0.5, shape=(1, 32))
    return folder, run(load_policy(policy))


def test_the_scheme_switch_and_the_widened_range_are_rebuilt_from_the_lock(stack_run, clipping_run, tmp_path):
    from qcheck.cli.main import main

    for i, (folder, _) in enumerate((stack_run, clipping_run)):
        out = tmp_path / f"again{i}.onnx"
        assert main(["apply", str(folder / "out" / "policy.lock.yaml"), "--out", str(out)]) == 0
        assert out.read_bytes() == (folder / "out" / "model.fixed.onnx").read_bytes()


def test_only_a16w8_passes_and_the_search_finds_it_without_recommending_qat(stack_run):
    folder, results = stack_run
    s = results["search"]
    assert s["status"] == "found" and s["recommendation"] is None
    chosen = s["candidates"][s["chosen"]]
    assert chosen["label"] == "scheme a16w8"
    within = [c for c in s["candidates"] if c["passes"] and c["within_budget"]]
    assert [c["id"] for c in within] == [chosen["id"]]
    assert set(s["finalists"]) <= {chosen["id"], 0}  # over-budget regions judged on the way are no finalists
    assert _max_error(folder / "model.onnx", folder / "out" / "model.quant.onnx", folder, "y") > 0.03
    assert _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "y") <= 0.03


@pytest.fixture(scope="module")
def weights_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    policy = _policy(folder, coarse_weight_matmul, {"y_err": {"output": "y", "metric": "max_abs"}}, ["y_err <= 0.05"],
                     {"max_float_nodes": 0, "max_int16_tensors": 4, "max_trials": 40}, shape=(1, 64),
                     remedies=ALL_REMEDIES + ["int16_weights"])
    return folder, run(load_policy(policy))


def test_coarse_weights_are_fixed_with_int16_weights_not_float_nor_qat(weights_run, tmp_path):
    import onnx

    from qcheck.cli.main import main

    folder, results = weights_run
    s = results["search"]
    assert s["status"] == "found" and s["recommendation"] is None
    chosen = s["candidates"][s["chosen"]]
    assert "int16_weights" in {c["remedy"] for c in chosen["changes"]} and chosen["float_nodes"] == 0
    for label in ("scheme a16w8", "int16 group:y"):  # more bits for the activations alone: the weights still round
        tried = [c for c in s["candidates"] if c["label"] == label]
        assert tried and not tried[0]["passes"], label
    fixed = folder / "out" / "model.fixed.onnx"
    weights = [i for i in onnx.load(str(fixed)).graph.initializer if i.name.startswith("w") and len(i.dims) == 2]
    assert [i.data_type for i in weights] == [onnx.TensorProto.INT16]
    assert _max_error(folder / "model.onnx", folder / "out" / "model.quant.onnx", folder, "y") > 0.3
    assert _max_error(folder / "model.onnx", fixed, folder, "y") <= 0.05
    out = tmp_path / "again.onnx"
    assert main(["apply", str(folder / "out" / "policy.lock.yaml"), "--out", str(out)]) == 0
    assert out.read_bytes() == fixed.read_bytes()


def test_every_prepared_node_has_a_unique_printable_name(tmp_path):
    """Nodes without a name are named after the tensor they write, so rankings never hold ''."""
    import onnx
    from onnx import TensorProto, helper

    from qcheck.model.prepare import prepare_model

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"], name="n"),
                           helper.make_node("Relu", ["b"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    prepared = prepare_model(model, tmp_path / "m.onnx", {}, tmp_path / "work")
    names = [n.name for n in onnx.load(str(prepared.path)).graph.node]
    assert "" not in names and len(set(names)) == len(names) == 3
    assert "Relu:a" in names and "n" in names and "Relu:y" in names


def test_a_candidate_ort_cannot_build_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch):
    """The evaluation-data reach of `x` is made NaN (what a broken range would give): ONNX Runtime's quantizer then
    refuses every widened-range candidate ("scale issue"). Each is recorded with its error, in results.json and the
    report, and the search still finds a fix (the node in float), exit code untouched by the failures."""
    import qcheck.search.stage as stage

    real = stage.calibrate

    def broken_reach(path, data, q, method=None, **kwargs):
        ranges = real(path, data, q, method=method, **kwargs)
        if method == "minmax" and data is not None and len(data) == 8:  # the evaluation data's reach
            ranges.ranges["x"] = (float("nan"), 1e6)
        return ranges

    monkeypatch.setattr(stage, "calibrate", broken_reach)
    folder = tmp_path / "clip"
    policy = _policy(folder, one_matmul, {"y_err": {"output": "y", "metric": "max_abs"}}, ["y_err <= 0.15"],
                     {"max_float_nodes": 2, "max_int16_tensors": 4}, eval_scale=4.0, shape=(1, 16))
    results = run(load_policy(policy))
    s = results["search"]
    failed = [c for c in s["candidates"] if c["error"]]
    assert failed and all("widened range" in c["label"] and "scale issue" in c["error"] for c in failed)
    assert all(not c["passes"] and c["shortfall"] == float("inf") for c in failed)
    assert s["status"] == "found" and s["candidates"][s["chosen"]]["error"] is None
    html = (folder / "out" / "report.html").read_text(encoding="utf-8")
    assert "could not be built or run" in html and "scale issue" in html
    assert str(tmp_path) not in "".join(c["error"] for c in failed)  # no temporary file named


def test_held_out_samples_judge_the_recommended_model_and_the_search_never_sees_them(tmp_path):
    """search.holdout: 3 of the 8 evaluation samples. The verdict of the fixed model is its max error on exactly
    those 3 (recomputed here with ONNX Runtime), and the candidates' figures come from the other 5."""
    import yaml

    folder = tmp_path / "held"
    policy = _policy(folder, two_head_concat, {"scores": {"output": "out", "slice": "[:, 0::2]", "metric": "max_abs"}},
                     ["scores <= 0.05"], {"max_float_nodes": 6, "max_int16_tensors": 10, "max_trials": 60})
    doc = yaml.safe_load(policy.read_text())
    doc["search"]["holdout"] = 3
    policy.write_text(yaml.safe_dump(doc))
    results = run(load_policy(policy))
    s = results["search"]
    assert s["status"] == "found" and s["holdout"]["samples"] == 3 and s["holdout"]["chosen"] is not None
    assert "held-out" in results["verdict"]["source"]["judged_on"]

    def worst(model, names):
        f = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        q = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return max(float(np.abs(f.run(["out"], {"x": x})[0][:, 0::2] - q.run(["out"], {"x": x})[0][:, 0::2]).max())
                   for x in (np.load(folder / "eval" / n) for n in names))

    held, seen = [f"{i}.npy" for i in (5, 6, 7)], [f"{i}.npy" for i in range(5)]
    fixed = folder / "out" / "model.fixed.onnx"
    verdict_value = results["verdict"]["requirements"][0]["values"]["scores"]
    assert verdict_value == pytest.approx(worst(fixed, held), rel=1e-5)
    assert s["holdout"]["chosen"]["requirements"][0]["values"]["scores"] == pytest.approx(verdict_value)
    chosen = s["candidates"][s["chosen"]]
    assert chosen["requirements"][0]["values"]["scores"] == pytest.approx(worst(fixed, seen), rel=1e-5)
    plain = s["holdout"]["plain"]["requirements"][0]["values"]["scores"]
    assert plain == pytest.approx(worst(folder / "out" / "model.quant.onnx", held), rel=1e-5)
    html = (folder / "out" / "report.html").read_text(encoding="utf-8")
    assert "Held-out check" in html and "screened" in html


def test_a_holdout_that_leaves_the_search_nothing_is_refused_naming_the_key(tmp_path):
    import yaml

    from qcheck.errors import QcheckError

    folder = tmp_path / "all"
    policy = _policy(folder, one_matmul, {"y_err": {"output": "y", "metric": "max_abs"}}, ["y_err <= 0.15"],
                     {"max_float_nodes": 2}, eval_scale=4.0, shape=(1, 16))
    doc = yaml.safe_load(policy.read_text())
    doc["search"]["holdout"] = 8
    policy.write_text(yaml.safe_dump(doc))
    with pytest.raises(QcheckError) as err:
        run(load_policy(policy))
    text = str(err.value.problems[0].message)
    assert "search.holdout" in text and "8" in text


def test_findings_whose_remedy_recovers_most_come_first():
    from qcheck.rules.engine import Finding, by_recovery

    def f(code, node):
        return Finding(code, code, "warning", "tensor", "", node=node)

    findings = [f("QC101", "a"), f("QC104", "b"), f("QC106", "c"), f("QC101", "d")]
    ordered = by_recovery(findings, {"a": 0.0, "c": 0.4, "d": 1.2})
    assert [x.node for x in ordered] == ["d", "c", "a", "b"]  # recovered most first; no gain: the order they had


def test_a_long_change_set_is_summarized_in_log_lines_but_kept_whole_in_the_table():
    """A pruned region can hold 30 changes of 80-character node names: a trial line names the first three,
    counts each kind and says how many more; the candidate's `label` (table, results.json) keeps them all."""
    from qcheck.search.evaluate import BRIEF_CHANGES, brief_label
    from qcheck.search.space import Change

    changes = tuple(Change("keep_float", f"model/block_{i}/a_very_long_exporter_generated_name/Conv") for i in range(30))
    text = brief_label(changes, {"float_nodes": 30, "float_islands": 2, "int16_tensors": 0, "explicit_ranges": 0})
    assert text.startswith("30 changes (30 float nodes): float model/block_0/")
    assert text.endswith(f"and {30 - BRIEF_CHANGES} more") and "block_3/" not in text
    few = changes[:BRIEF_CHANGES + 1]
    assert brief_label(few, {}) == ", ".join(c.label() for c in few)
    assert brief_label((), {}) == "the policy's recipe"


@pytest.mark.parametrize("where", ["qcheck.search.evaluate.compare_outputs",  # judging a built candidate
                                   "qcheck.search.screen.inline_settings",  # screening one
                                   "qcheck.search.units.Units.find_chains"])  # reading the shared-scale chains
def test_a_bug_in_qchecks_own_code_while_judging_candidates_ends_the_run_with_exit_3(tmp_path, monkeypatch, capsys,
                                                                                    where):
    """A Python error raised by qcheck's own code while the search builds, screens or judges a candidate is not a
    candidate ONNX Runtime refused: it is not recorded as the candidate's error, the search does not go on, and the
    run ends with exit 3 and the traceback naming it."""
    import importlib

    from qcheck.cli.main import main

    module, _, name = where.rpartition(".")
    owner = importlib.import_module(module) if "Units" not in module else importlib.import_module(
        module.rsplit(".", 1)[0]).Units

    def bug(*args, **kwargs):
        raise KeyError("qcheck-bug-marker")

    monkeypatch.setattr(owner, name, bug)
    policy = _policy(tmp_path / "clip", one_matmul, {"y_err": {"output": "y", "metric": "max_abs"}}, ["y_err <= 0.15"],
                     {"max_float_nodes": 2, "max_int16_tensors": 4}, eval_scale=4.0, shape=(1, 16),
                     remedies=["keep_float", "int16_activations"])
    assert main(["run", str(policy)]) == 3
    err = capsys.readouterr().err
    assert "qcheck-bug-marker" in err and "Traceback" in err and "internal error" in err


def test_a_near_miss_scheme_switch_is_combined_with_one_node_in_float(tmp_path):
    """`matmul_stack(rough=4, outlier=3)`: int8 activations add error in every layer (fixed only by a16w8), and mm4's
    weights round coarsely on an int8 grid stretched by a row its input never reads (fixed only by keeping mm4
    float). Measured with ONNX Runtime on these samples: plain int8 0.107, a16w8 alone 0.080, mm4 float alone 0.053,
    both 0.016; the requirement 0.03 needs both, and the search finds that combination. The unit bisection finds is
    mm4's output group (mm4 and its reader mm5: two float nodes), over a budget of one float node: it is split into
    its nodes and pruned again, which leaves mm4 alone."""
    from functools import partial

    folder = tmp_path / "rough"
    policy = _policy(folder, partial(matmul_stack, rough=4, outlier=3.0), {"y_err": {"output": "y", "metric": "max_abs"}},
                     ["y_err <= 0.03"], {"max_float_nodes": 1, "max_int16_tensors": 0, "max_trials": 40},
                     eval_scale=0.5, shape=(1, 32))
    s = run(load_policy(policy))["search"]
    assert s["status"] == "found"
    chosen = s["candidates"][s["chosen"]]
    assert sorted(c["remedy"] for c in chosen["changes"]) == ["keep_float", "scheme"]
    assert chosen["changes"][0]["subject"] == "mm4" and chosen["float_nodes"] == 1, chosen["label"]
    group = [c for c in s["candidates"] if _subjects(c) == {"group:h4", "(model)"} and c["passes"]]
    assert group and all(c["float_nodes"] == 2 and not c["within_budget"] for c in group)
    assert any("split into their nodes" in n for n in s["notes"])
    alone = [c for c in s["candidates"] if c["label"] == "scheme a16w8"]
    assert alone and not alone[0]["passes"] and alone[0]["figure"] == "confirmed"
    assert _max_error(folder / "model.onnx", folder / "out" / "model.quant.onnx", folder, "y") > 0.1
    assert _max_error(folder / "model.onnx", folder / "out" / "model.fixed.onnx", folder, "y") <= 0.03


def test_candidates_built_and_screened_over_the_cores_give_the_same_search_whatever_the_workers(tmp_path,
                                                                                                monkeypatch):
    """The whole-model candidates are built and judged on a pool of threads, the screened ones run their samples on
    one: with one worker or two, the search records the same candidates, in the same order, with the same figures
    (the same ids, verdicts and values), and chooses the same fix."""
    import qcheck.search.evaluate as evaluate
    import qcheck.search.screen as screen

    tables = []
    for workers in (1, 2):
        monkeypatch.setattr(evaluate, "usable_cores", lambda w=workers: w)
        monkeypatch.setattr(screen, "usable_cores", lambda w=workers: w)
        policy = _policy(tmp_path / f"w{workers}", one_matmul, {"y_err": {"output": "y", "metric": "max_abs"}},
                         ["y_err <= 0.15"], {"max_float_nodes": 2, "max_int16_tensors": 4}, eval_scale=4.0,
                         shape=(1, 16))
        s = run(load_policy(policy))["search"]
        keep = ("id", "label", "figure", "passes", "failed", "shortfall", "requirements", "metrics", "error", "cost")
        tables.append(([{k: c[k] for k in keep} for c in s["candidates"]], s["chosen"]))
    assert sum(c["figure"] == "confirmed" for c in tables[0][0]) >= 5  # the policy's recipe and 4+ whole-model ones
    assert tables[0] == tables[1]


def test_whole_model_candidates_built_together_stop_at_max_trials(tmp_path):
    """max_trials 3: the policy's recipe and the first two whole-model candidates (in the policy's order) are built
    and recorded, the rest of the batch is not, and the search says it stopped at max_trials."""
    policy = _policy(tmp_path / "few", one_matmul, {"y_err": {"output": "y", "metric": "max_abs"}}, ["y_err <= 0.15"],
                     {"max_float_nodes": 2, "max_int16_tensors": 4, "max_trials": 3}, eval_scale=4.0, shape=(1, 16))
    s = run(load_policy(policy))["search"]
    built = [c for c in s["candidates"] if c["figure"] == "confirmed"]
    assert [c["label"] for c in built] == ["the policy's recipe", "scheme a16w8", "calibration entropy"]
    assert s["stopped_by"] == "max_trials" and s["confirmed"] == 3
