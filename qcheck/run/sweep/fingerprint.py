"""A run's fingerprint: what decides its results, hashed, so a sweep can reuse a finished run.

It covers the policy document after the overrides, the model file, the data files, the
rule packs the policy names and qcheck's version. Data are hashed as files (names and
bytes), not as decoded samples like the lock's `data_fingerprint`: that needs the model's
inputs, and the files with the policy's `preprocess:` decide the samples anyway.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from qcheck import __version__
from qcheck.model.prepare import file_sha256
from qcheck.policy.spec import Policy


def run_fingerprint(policy: Policy) -> str:
    parts = {
        "qcheck": __version__,
        "policy": {k: v for k, v in policy.raw.items() if k != "report"},
        "report": {k: v for k, v in (policy.raw.get("report") or {}).items() if k != "out"},
        "model": _model_hash(policy),
        "data": {name: tree_sha256(src.path) for name, src in
                 (("calibration", policy.data.calibration), ("evaluation", policy.data.evaluation)) if src is not None},
        "packs": {p: tree_sha256(Path(p)) for p in policy.rules.packs if p != "builtin"},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _model_hash(policy: Policy) -> str:
    if policy.model.path.is_file():
        return file_sha256(policy.model.path)
    fetch = policy.model.fetch  # not fetched yet: the pinned hash it must have
    return f"fetch:{fetch.pip}:{fetch.member}:{fetch.sha256}" if fetch else "missing"


def tree_sha256(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder (relative names and bytes, in sorted order)."""
    h = hashlib.sha256()
    if path.is_file():
        return file_sha256(path)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        h.update(file_sha256(f).encode())
    return h.hexdigest()
