"""`qcheck rules [CODE]`: the rules a policy runs, one rule's documentation, or the statistics rules read."""

from __future__ import annotations

from qcheck.cli import exit_codes
from qcheck.errors import QcheckError


def cmd_rules(args) -> int:
    from qcheck.policy.loader import load_policy
    from qcheck.policy.spec import RulesSpec
    from qcheck.results.layer_columns import TENSOR_STATISTICS
    from qcheck.rules.engine import format_doc
    from qcheck.rules.packs import load_rules

    if args.stats:
        from qcheck.rules.model_row import MODEL_STATISTICS

        width = max(len(k) for k in [*TENSOR_STATISTICS, *MODEL_STATISTICS])
        print("per tensor (scopes tensor, node, output):")
        for name, text in TENSOR_STATISTICS.items():
            print(f"  {name:<{width}}  {text}")
        print("per model (scope model):")
        for name, text in MODEL_STATISTICS.items():
            print(f"  {name:<{width}}  {text}")
        return exit_codes.PASS
    spec = load_policy(args.policy).rules if args.policy else RulesSpec()
    rules = load_rules(spec, str(args.policy) if args.policy else None)
    if args.rule:
        match = [r for r in rules if args.rule in (r.code, r.name, *r.aliases)]
        if not match:
            raise QcheckError(f"no rule '{args.rule}'; `qcheck rules` lists them")
        print(format_doc(match[0].doc()))
        return exit_codes.PASS
    for r in rules:
        print(f"{r.code}  {r.severity:<7}  {r.name:<26}  {r.summary}")
    return exit_codes.PASS
