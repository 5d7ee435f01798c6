"""Which search.confidence foresees held-out samples? Replays a finished search's candidates.

    python bench/bench_confidence.py policy.yaml out/results.json [--confidence 0.9 0.95 0.99]

The policy must hold samples out (`search.holdout`). Every confirmed candidate of the earlier run (results.json)
that meets the requirements on its values is built again and judged on the search's samples, with each
requirement's one-sided bootstrap bound at each confidence, and on the held-out samples. Printed per confidence:
the cheapest of these candidates whose bounds pass (what `select` would choose among them at that confidence) and
whether it holds on the held-out samples. This replays the candidates one search found; a search run at another
confidence prunes differently and may find others. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from threadpoolctl import threadpool_limits

import qcheck.search as search
from qcheck.measure.resample import resampled_values
from qcheck.measure.tasks.base import bootstrap_weights
from qcheck.policy.loader import load_policy
from qcheck.rules.requirements import with_margin
from qcheck.run.pipeline import run
from qcheck.search.base import Strategy, register
from qcheck.search.evaluate import Evaluator
from qcheck.search.space import Change

threadpool_limits(1, user_api="blas")

SETS: list[tuple[Change, ...]] = []  # the change sets replayed
BOUNDS: dict[tuple, dict] = {}  # sorted change set -> confidence -> [bound per requirement]
HELD: dict[tuple, dict] = {}  # sorted change set -> held-out figures
CONFIDENCES = [0.9, 0.95, 0.99]


@register
class Replay(Strategy):
    name = "replay"

    def run(self, ctx) -> None:
        ev = ctx.evaluator
        for changes in SETS:
            ev.current = tuple(sorted(set(changes)))
            ev.evaluate(changes, budget=False)


def _margins(self, compared, env):
    values = resampled_values(compared, bootstrap_weights(len(self.samples)))
    key = getattr(self, "current", None)
    if key is not None and key not in BOUNDS:
        BOUNDS[key] = {c: [(with_margin(r, env, values, c) or {}).get("bound") for r in self.require]
                       for c in CONFIDENCES}
    return [with_margin(r, env, values, self.confidence) for r in self.require]


def _held_out_choice(ev, held_out, chosen):
    held = ev.on(*held_out)
    for changes in SETS:
        key = tuple(sorted(set(changes)))
        f = held.judge_changes(key)
        HELD[key] = {"passes": f["passes"], "values": [q["values"] for q in f["requirements"]]}
    return None, None  # (nothing is recommended: the replay only measures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", type=Path)
    ap.add_argument("results", type=Path)
    ap.add_argument("--confidence", type=float, nargs="+", default=CONFIDENCES)
    args = ap.parse_args()
    CONFIDENCES[:] = args.confidence
    earlier = json.loads(args.results.read_text(encoding="utf-8"))["search"]
    cands = [c for c in earlier["candidates"] if c["figure"] == "confirmed" and c["n_changes"]
             and c.get("passes_on_values", c["passes"]) and c.get("within_budget", True)]
    SETS[:] = [tuple(Change(**ch) for ch in c["changes"]) for c in cands]
    Evaluator._margins = _margins
    search.held_out_choice = _held_out_choice
    policy = load_policy(args.policy)
    policy.search.strategy = "replay"
    policy.search.confidence = CONFIDENCES[0]
    policy.search.finalists = 0  # no latency measured
    print(f"load average {os.getloadavg()}; {len(SETS)} candidates replayed")
    with tempfile.TemporaryDirectory() as tmp:
        results = run(policy, out=Path(tmp) / "out")
    by_key = {tuple(sorted({Change(**ch) for ch in c["changes"]})): c for c in results["search"]["candidates"]}
    rows = []
    for changes in SETS:
        key = tuple(sorted(set(changes)))
        c = by_key[key]
        rows.append((c["cost"], c["n_changes"], key, c))
        print(f"cost {c['cost']:g}, {c['n_changes']} change(s): {c['brief']}: values "
              f"{[q['values'] for q in c['requirements']]}, bounds {BOUNDS.get(key)}, held out {HELD.get(key)}")
    for conf in CONFIDENCES:
        ok = []
        for cost, _n, key, c in sorted(rows, key=lambda r: r[:2]):
            bounds = BOUNDS.get(key, {}).get(conf) or []
            if all(b is None or _holds(q, b) for q, b in zip(c["requirements"], bounds)):
                ok.append((cost, key))
        pick = ok[0] if ok else None
        print(f"confidence {conf:g}: {len(ok)} of {len(rows)} pass at their bound; the cheapest "
              + (f"(cost {pick[0]:g}) holds on the held-out samples: {HELD[pick[1]]['passes']} {HELD[pick[1]]['values']}"
                 if pick else "- none"))
    print(f"load average {os.getloadavg()}")


def _holds(line: dict, bound: float) -> bool:
    from qcheck.policy.expr import Expression

    limit = Expression(line["text"], requirement=True).limit
    return bound >= limit.value if limit.op in (">=", ">") else bound <= limit.value


if __name__ == "__main__":
    main()
