"""`qcheck init model.onnx`: write a starter policy."""

from __future__ import annotations

from qcheck.cli import exit_codes


def cmd_init(args) -> int:
    from qcheck.cli.init_policy import write_policy

    path = write_policy(args.model, args.output, data=args.data, force=args.force)
    print(f"wrote {path}\nnext: fill in its data section, then `qcheck validate {path}` and `qcheck run {path}`")
    return exit_codes.PASS
