"""Folders qcheck creates for a while and removes: staging folders and temporary folders.

Each one carries a mark file (`.qcheck-scratch`) with the host and PID of the
process that made it. A run killed too hard to clean up after itself (SIGKILL,
power loss) leaves such folders behind; the next run removes those whose mark
names this host and a process that no longer exists, and nothing else: a folder
without the mark, or made by a live process, or on another host (a shared
workspace), is never touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARK = ".qcheck-scratch"
TEMP_PREFIX = "qcheck-"


def unique_suffix() -> str:
    """PID plus randomness: two containers that both run qcheck as PID 1 still get different names."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def mark(folder: Path) -> None:
    (folder / MARK).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8")


def make_marked(folder: Path) -> Path:
    folder.mkdir()
    mark(folder)
    return folder


def new_temp_folder(kind: str) -> Path:
    """A marked folder in the system's temporary directory, e.g. /tmp/qcheck-run-1234-9f3a0c1d."""
    return make_marked(Path(tempfile.gettempdir()) / f"{TEMP_PREFIX}{kind}-{unique_suffix()}")


@contextmanager
def temp_folder(kind: str) -> Iterator[Path]:
    """A marked temporary folder, removed when the block ends, however it ends."""
    folder = new_temp_folder(kind)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def replaced_whole(dest: Path) -> Iterator[Path]:
    """A path beside `dest` (same file system) for the block to write; when the block ends normally it is renamed
    over `dest` in one step, so whatever ends the write (a full disk, a kill) never leaves a half-written `dest`
    over a good one. Nothing is left beside it either way."""
    staged = dest.with_name(f".{dest.name}.qcheck-{unique_suffix()}")
    try:
        yield staged
        os.replace(staged, dest)
    finally:
        staged.unlink(missing_ok=True)


def install_file(src: Path, dest: Path) -> None:
    """Put a finished file at `dest` in one step (a copy beside it, then a rename)."""
    with replaced_whole(dest) as staged:
        shutil.copyfile(src, staged)


def write_text_whole(path: Path, text: str) -> None:
    """Write `text` to `path` in one step (staged beside it, then renamed)."""
    with replaced_whole(path) as staged:
        staged.write_text(text, encoding="utf-8")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): leave it
    return True


def is_stale(folder: Path) -> bool:
    """True only for a folder carrying qcheck's mark, made on this host by a process that is gone."""
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        mark = json.loads((folder / MARK).read_text(encoding="utf-8"))
        pid = int(mark["pid"])
        return mark["host"] == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def sweep(folder: Path, pattern: str) -> list[Path]:
    """Remove the stale marked folders matching `pattern` in `folder`; returns what was removed."""
    removed = []
    try:
        candidates = list(folder.glob(pattern))
    except OSError:
        return removed
    for path in candidates:
        if is_stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def sweep_temp() -> list[Path]:
    """Temporary folders of killed qcheck runs."""
    return sweep(Path(tempfile.gettempdir()), f"{TEMP_PREFIX}*")
