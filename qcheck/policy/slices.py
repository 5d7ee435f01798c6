"""Output slices as written in a policy (`slice: "[:, 4:, :]"`), parsed into numpy indices."""

from __future__ import annotations

import re


class SliceError(ValueError):
    pass


_SLICE_PART = re.compile(r"^\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?)?$")


def parse_slice(text: str) -> tuple:
    """'[:, 4:, :]' -> (slice(None), slice(4, None), slice(None)); integers, ranges, steps and '...'."""
    t = text.strip()
    if not (t.startswith("[") and t.endswith("]")):
        raise SliceError(f"slice {text!r} must be written in brackets, e.g. \"[:, 4:, :]\"")
    parts = [p.strip() for p in t[1:-1].split(",")]
    if parts == [""]:
        return ()
    index: list = []
    for part in parts:
        if part == "...":
            index.append(Ellipsis)
            continue
        m = _SLICE_PART.match(part)
        if not m or part == "":
            raise SliceError(f"slice {text!r}: cannot read {part!r} (use integers, ':' and '...')")
        if ":" not in part:
            index.append(int(m.group(1)))
        else:
            a, b, c = (int(g) if g is not None else None for g in m.groups())
            if c == 0:
                raise SliceError(f"slice {text!r}: step cannot be 0")
            index.append(slice(a, b, c))
    if index.count(Ellipsis) > 1:
        raise SliceError(f"slice {text!r}: only one '...' is allowed")
    return tuple(index)
