"""`qcheck apply policy.lock.yaml`: rebuild the quantized model a lock describes."""

from __future__ import annotations

import sys

from qcheck.cli import exit_codes


def cmd_apply(args) -> int:
    from qcheck.quantize.lock import apply_lock

    r = apply_lock(args.lock, args.out, args.model)
    for note in r["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if r["identical"]:
        print(f"{r['out']}: identical to the locked model (sha256 {r['sha256'][:16]}…)")
        return exit_codes.PASS
    print(f"{r['out']}: rebuilt, but its bytes differ from the locked model (sha256 {r['sha256'][:16]}…, "
          f"locked {r['expected'][:16]}…)", file=sys.stderr)
    return exit_codes.FAIL
