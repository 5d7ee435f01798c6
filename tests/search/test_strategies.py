"""Search strategies in isolation, against a stub evaluator whose pass/fail rule is known in advance.

The stub stands in for building and measuring a model: a candidate passes when it changes every node in
`needed`; its shortfall is given by a rule of the test's choosing. This checks the strategies' logic
(what they try, what they keep, what they drop, where the budget stops them); the real models are in
test_search.py.
"""

from qcheck.policy.spec import SearchBudget, SearchSpec
from qcheck.policy.targets import builtin_profile
from qcheck.quantize.calibrate import Recipe
from qcheck.search.base import STRATEGIES, Context, select
from qcheck.search.evaluate import BudgetExhausted
from qcheck.search.space import Change, cost


class StubGraph:
    def __init__(self, nodes):
        self.outputs = {n: [n + ":0"] for n in nodes}
        self.base = Recipe()

    def islands(self, float_nodes):
        return len(float_nodes)

    def float_nodes_of(self, subject, base=None):
        return [subject]

    def tensors_of(self, subject):
        return self.outputs.get(subject, [])

    def tighter_ranges(self, subject, base):
        return {}

    wider_ranges = tighter_ranges


class StubEvaluator:
    def __init__(self, nodes, needed, shortfall, max_trials=100):
        self.graph, self.target = StubGraph(nodes), builtin_profile("cpu")
        self.needed, self.rule, self.max_trials = set(needed), shortfall, max_trials
        self.candidates, self.by_key, self.stopped_by = [], {}, None
        self.workers = 2  # exhaustive judges this many at once (evaluate_many)

    def evaluate_many(self, sets):
        return [self.evaluate(s) for s in sets]

    def evaluate(self, changes):
        key = tuple(sorted(set(changes)))
        if key in self.by_key:
            return self.by_key[key]
        if len(self.candidates) >= self.max_trials:
            self.stopped_by = "max_trials"
            raise BudgetExhausted("max_trials")
        subjects = {c.subject for c in key}
        passes = self.needed <= subjects
        cand = {"id": len(self.candidates), "subjects": subjects, "passes": passes, "failed": 0 if passes else 1,
                "shortfall": 0.0 if passes else self.rule(subjects), "cost": cost(key, self.graph, self.target),
                "n_changes": len(key)}
        self.candidates.append(cand)
        self.by_key[key] = cand
        return cand


def _ctx(ev, nodes, strategy, width=8, **budget):
    spec = SearchSpec(strategy=strategy, remedies=["keep_float"], width=width, budget=SearchBudget(**budget))
    return Context(ev, spec, [], [Change("keep_float", n) for n in nodes])


def test_greedy_keeps_the_best_step_then_drops_what_is_not_needed():
    nodes = ["a", "b", "c", "d"]
    # b and c are needed together; a looks best on its own, so greedy takes it first, and must drop it at the end
    rule = lambda s: (("b" not in s) + ("c" not in s)) - (1.1 if "a" in s else 0)  # noqa: E731
    ev = StubEvaluator(nodes, {"b", "c"}, rule)
    STRATEGIES["greedy"]().run(_ctx(ev, nodes, "greedy"))
    assert any(c["subjects"] == {"a", "b", "c"} and c["passes"] for c in ev.candidates)  # what greedy reached
    chosen = select(ev.candidates)
    assert chosen["subjects"] == {"b", "c"}  # a was pruned, and costs less without it
    assert chosen["cost"] == 2 * (1.0 + 0.5)


def test_greedy_respects_the_float_node_budget_and_the_trial_budget():
    nodes = ["a", "b", "c"]
    ev = StubEvaluator(nodes, {"a", "b"}, lambda s: 2 - len(s & {"a", "b"}))
    ctx = _ctx(ev, nodes, "greedy", max_float_nodes=1)
    STRATEGIES["greedy"]().run(ctx)
    assert select(ev.candidates) is None and all(len(c["subjects"]) <= 1 for c in ev.candidates)
    assert "budget allows no further remedy" in ctx.notes[0]
    ev = StubEvaluator(nodes, {"a", "b"}, lambda s: 2 - len(s & {"a", "b"}), max_trials=3)
    STRATEGIES["greedy"]().run(_ctx(ev, nodes, "greedy"))
    assert len(ev.candidates) == 3 and ev.stopped_by == "max_trials"


def test_greedy_width_one_walks_the_ranking():
    nodes = ["a", "b", "c", "d"]
    ev = StubEvaluator(nodes, {"c"}, lambda s: 1 - 0.1 * len(s))  # every node helps a little; only c fixes it
    STRATEGIES["greedy"]().run(_ctx(ev, nodes, "greedy", width=1))
    tried = [sorted(c["subjects"]) for c in ev.candidates]
    assert tried[:4] == [[], ["a"], ["a", "b"], ["a", "b", "c"]]
    assert select(ev.candidates)["subjects"] == {"c"}


def test_bisect_finds_the_shortest_passing_prefix():
    nodes = [f"n{i}" for i in range(8)]
    ev = StubEvaluator(nodes, {"n0", "n1", "n2", "n3", "n4"}, lambda s: 1.0)
    STRATEGIES["bisect"]().run(_ctx(ev, nodes, "bisect"))
    chosen = select(ev.candidates)
    assert chosen["subjects"] == {"n0", "n1", "n2", "n3", "n4"}
    # baseline, all 8, then prefixes 4 (fails), 6 (passes), 5 (passes); then pruning tries the prefix without
    # each of its 5 nodes, all failing; without n4 it is the prefix of 4, already tried (cached): 4 new trials
    assert [len(c["subjects"]) for c in ev.candidates][:5] == [0, 8, 4, 6, 5]
    assert len(ev.candidates) == 5 + 4


def test_exhaustive_tries_cheapest_first_and_chooses_the_cheapest_passing():
    nodes = ["a", "b", "c"]
    ev = StubEvaluator(nodes, {"b"}, lambda s: 1.0)
    STRATEGIES["exhaustive"]().run(_ctx(ev, nodes, "exhaustive", max_float_nodes=2))
    sizes = [len(c["subjects"]) for c in ev.candidates]
    assert sizes == sorted(sizes) and len(ev.candidates) == 1 + 3 + 3  # every set of at most 2 float nodes
    assert select(ev.candidates)["subjects"] == {"b"}


def test_ddmin_returns_a_one_minimal_set():
    from qcheck.search.auto import ddmin

    calls = []

    def passes(s):  # passes when it holds 3 and 7 together, or 11 alone
        calls.append(list(s))
        return {3, 7} <= set(s) or 11 in s

    assert ddmin(list(range(10)), passes) == [3, 7]
    found = ddmin(list(range(16)), passes)
    assert found == [11]  # a single element that passes alone is found, not a larger set
    # 1-minimal: removing any one element of the result fails
    assert all(not passes([x for x in [3, 7] if x != y]) for y in [3, 7])


def test_ddmin_announces_each_levels_sets_before_it_asks_and_finds_the_same_set():
    """What a Lookahead screens together (`Evaluator.screen_many`) is what the level then asks about, in order."""
    from qcheck.search.auto import ddmin

    announced, asked = [], []  # announced: (the level's sets, how many questions came before)

    def passes(s):
        asked.append(list(s))
        return {3, 7} <= set(s)

    assert ddmin(list(range(10)), passes, lambda sets: announced.append((sets, len(asked)))) == [3, 7]
    assert len(announced) >= 3
    # each level asks about a prefix of what it announced, in its order (stopping at its first passing set)
    bounds = [n for _, n in announced[1:]] + [len(asked)]
    for (sets, first), last in zip(announced, bounds):
        got = asked[first:last]
        assert got == sets[:len(got)] and got


def test_bisect_prefix_finds_the_shortest_passing_prefix():
    from qcheck.search.auto import bisect_prefix

    tried = []

    def passes(s):
        tried.append(len(s))
        return len(s) >= 6

    assert bisect_prefix(list("abcdefghijklmnop"), passes) == list("abcdef")
    assert len(tried) <= 1 + 4  # the whole list, then log2(16) halvings
    assert bisect_prefix(list("abc"), passes) is None  # even all of them fail


def test_auto_takes_the_shortest_stem_when_only_the_whole_graph_passes_as_a_tail(tmp_path):
    """Eight MatMuls in a chain; a candidate passes when it keeps mm0 and mm2 in float (what the error needs lies
    near the inputs): every tail but the whole graph misses, so the region is the stem up to mm2, found by
    bisection in a handful of judgements."""
    from types import SimpleNamespace

    import onnx
    from helpers import matmul_stack

    from qcheck.search.auto import Auto
    from qcheck.search.space import Graph, apply_changes

    model = onnx.load(str(matmul_stack(tmp_path / "m.onnx", layers=8)))
    graph = Graph(model, {"x", "y"} | {f"h{i}" for i in range(7)})
    judged = []

    def judge(changes):
        judged.append(changes)
        return {"passes": {"mm0", "mm2"} <= set(apply_changes(graph.base, changes, graph).exclude_nodes)}

    ctx = SimpleNamespace(evaluator=SimpleNamespace(graph=graph))
    region, largest = Auto()._region(ctx, (), judge, "keep_float")
    assert region == Change("keep_float", "stem:mm2")
    assert largest == Change("keep_float", "tail:mm0")  # the whole graph: every matmul can be kept float
    assert len(judged) <= 2 * (3 + 1)  # two bisections over 8 regions
    # when a proper tail passes, it is the answer and no stem is tried
    judged.clear()

    def judge_tail(changes):
        judged.append(changes)
        return {"passes": "mm5" in apply_changes(graph.base, changes, graph).exclude_nodes}

    assert Auto()._region(ctx, (), judge_tail, "keep_float")[0] == Change("keep_float", "tail:mm5")
    # nothing passes: no region, and the largest tail tried is named for the note
    assert Auto()._region(ctx, (), lambda c: {"passes": False}, "keep_float") == (
        None, Change("keep_float", "tail:mm0"))
    assert not any(c.subject.startswith("stem:") for changes in judged for c in changes)
