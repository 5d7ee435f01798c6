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
import signal
import sys
import threading
import traceback
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

from qcheck.cli import apply, diff, docs, exit_codes, init, report, rules, run, sweep, validate
from qcheck.cli.parser import build_parser
from qcheck.errors import QcheckError, printable

COMMANDS = {"run": run.cmd_run, "report": report.cmd_report, "rules": rules.cmd_rules, "init": init.cmd_init,
            "validate": validate.cmd_validate, "docs": docs.cmd_docs, "apply": apply.cmd_apply, "diff": diff.cmd_diff,
            "sweep": sweep.cmd_sweep}


# numpy's BLAS (OpenBLAS) splits every dot product over its own threads, which spin-wait for
# work and fight ONNX Runtime's threads for the cores. qcheck's dot products are error sums over
# one tensor at a time, bound by memory, not arithmetic: with one BLAS thread an output
# comparison took 1.4 ms, with two threads beside a busy ORT session 31 ms (measured on the
# 2-core machine). So a qcheck command keeps one BLAS thread.
def main(argv: list[str] | None = None) -> int:
    with threadpool_limits(1, user_api="blas"), stop_signals_raise():
        return _main(argv)


class Stopped(KeyboardInterrupt):
    """SIGTERM (a cancelled CI job) or SIGHUP (a closed terminal): unwound like Ctrl-C, so cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stop_signals_raise():
    """SIGINT, SIGTERM and SIGHUP all end the run the same way: staging and temporary folders removed, one message.

    After the first signal the others are ignored, so a second one cannot cut the cleanup short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
    signums = [getattr(signal, s) for s in names]

    def handler(signum, frame):
        for s in signums:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return exit_codes.USER_ERROR
    try:
        return COMMANDS[args.command](args)
    except QcheckError as exc:
        print(f"qcheck: error: {printable(str(exc))}", file=sys.stderr)
        if getattr(args, "json", False):  # CI parsing stdout gets the error too
            print(json.dumps({"error": [{"message": p.message, "file": p.file, "line": p.line, "hint": p.hint}
                                        for p in exc.problems], "exit_code": exc.exit_code}, indent=1))
        return exc.exit_code
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        kept = ("finished runs are kept in the sweep folder (a new sweep reuses them); the runs in flight were stopped"
                if args.command == "sweep" else
                "the previous output folder is unchanged and the unfinished one was removed")
        print(f"qcheck: stopped by {signal.Signals(signum).name}; {kept}", file=sys.stderr)
        return 128 + signum
    except MemoryError:  # the machine's memory, not the input nor (as far as qcheck can tell) a bug
        print("qcheck: error: ran out of memory", file=sys.stderr)
        print("  hint: lower analyses.memory_mb or data.limit, run fewer workers, or use a machine with more memory",
              file=sys.stderr)
        return exit_codes.RESOURCES
    except Exception:
        traceback.print_exc()
        print("\nqcheck: internal error (a bug in qcheck, not in your input); please report it with the traceback above",
              file=sys.stderr)
        return exit_codes.BUG


if __name__ == "__main__":
    raise SystemExit(main())
