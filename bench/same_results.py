"""Are two results.json the same run, apart from timings, versions and where the files were?

    python bench/same_results.py before/results.json after/results.json --same /tmp/a=/tmp/b

For refactors that must not change what a run finds (issue 13): compares every key, in order,
ignoring wall times, latencies, the creation time, the environment and the schema version.
`--same OLD=NEW` treats paths under OLD in the first file as under NEW (repeatable).
Prints the differences; exits 1 when there are any.
"""

from __future__ import annotations

import argparse
import json
import sys

IGNORED = {"timings", "peak_memory_mb", "created", "environment", "schema_version", "build_seconds", "seconds",
           "latency_ms", "latency", "render_seconds"}


def differences(a, b, path: str, same: list[tuple[str, str]], out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        ka, kb = [k for k in a if k not in IGNORED], [k for k in b if k not in IGNORED]
        if ka != kb:
            out.append(f"{path}: keys differ: {sorted(set(ka) ^ set(kb)) or 'same keys, other order'}")
        for k in ka:
            if k in b:
                differences(a[k], b[k], f"{path}.{k}", same, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} items -> {len(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{path}[{i}]", same, out)
    else:
        if isinstance(a, str):
            for old, new in same:
                a = a.replace(old, new)
        if a != b:
            out.append(f"{path}: {a!r} -> {b!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--same", action="append", default=[], metavar="OLD=NEW")
    args = ap.parse_args(argv)
    same = [tuple(s.split("=", 1)) for s in args.same]
    a, b = (json.load(open(p, encoding="utf-8")) for p in (args.a, args.b))
    out: list[str] = []
    differences(a, b, "results", same, out)
    print("\n".join(out) if out else f"same run (schema_version {a.get('schema_version')} -> {b.get('schema_version')})")
    return 1 if out else 0


if __name__ == "__main__":
    sys.exit(main())
