"""The command line's entry point: `qcheck init`, `qcheck validate`, `qcheck run`, `qcheck report`, `qcheck rules`, `qcheck docs`,
`qcheck apply`, `qcheck diff`, `qcheck sweep`.

Exit codes, for CI:
  0  the policy's requirements hold (or it has none)
  1  they do not
  2  a usage, policy, model or data error (one message, no traceback)
  3  a bug in qcheck (with a traceback to report)
"""

from __future__ import annotations

import json
import sys
import traceback

from threadpoolctl import threadpool_limits

from qcheck.cli import apply, diff, docs, exit_codes, init, report, rules, run, sweep, validate
from qcheck.cli.parser import build_parser
from qcheck.errors import QcheckError

COMMANDS = {"run": run.cmd_run, "report": report.cmd_report, "rules": rules.cmd_rules, "init": init.cmd_init,
            "validate": validate.cmd_validate, "docs": docs.cmd_docs, "apply": apply.cmd_apply, "diff": diff.cmd_diff,
            "sweep": sweep.cmd_sweep}


# numpy's BLAS (OpenBLAS) splits every dot product over its own threads, which spin-wait for
# work and fight ONNX Runtime's threads for the cores. qcheck's dot products are error sums over
# one tensor at a time, bound by memory, not arithmetic: with one BLAS thread an output
# comparison took 1.4 ms, with two threads beside a busy ORT session 31 ms (measured on the
# 2-core machine). So a qcheck command keeps one BLAS thread.
def main(argv: list[str] | None = None) -> int:
    with threadpool_limits(1, user_api="blas"):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return exit_codes.USER_ERROR
    try:
        return COMMANDS[args.command](args)
    except QcheckError as exc:
        print(f"qcheck: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):  # CI parsing stdout gets the error too
            print(json.dumps({"error": [{"message": p.message, "file": p.file, "line": p.line, "hint": p.hint}
                                        for p in exc.problems], "exit_code": exc.exit_code}, indent=1))
        return exc.exit_code
    except KeyboardInterrupt:
        print("qcheck: interrupted; nothing was written over previous results", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("\nqcheck: internal error (a bug in qcheck, not in your input); please report it with the traceback above",
              file=sys.stderr)
        return exit_codes.BUG


if __name__ == "__main__":
    raise SystemExit(main())
