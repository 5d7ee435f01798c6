"""Paths as a policy, a sweep file or a flag writes them."""

from __future__ import annotations

from pathlib import Path


def expand_home(p) -> Path:
    """`p` with a leading `~` or `~user` expanded; as written when that user (or $HOME) is unknown, so the path
    is then reported as not found rather than crashing (pathlib raises RuntimeError)."""
    try:
        return Path(p).expanduser()
    except RuntimeError:
        return Path(p)


def resolve_in(folder: Path, p) -> Path:
    """A path as a file that lives in `folder` writes it: `~` expanded, relative paths starting at `folder`."""
    q = expand_home(p)
    return q if q.is_absolute() else folder / q
