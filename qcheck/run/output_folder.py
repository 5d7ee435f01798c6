"""Writing a run's outputs without ever leaving a half-written folder, or deleting a file qcheck did not write.

Everything goes into a staging folder next to the destination; only when the
run has finished is the staging folder swapped in (two renames, with signals
held back between them), and the previous run's folder removed. A failed or
interrupted run leaves the previous one intact.

A folder qcheck wrote carries a manifest (`.qcheck-manifest.json`: a format
version and every file written). qcheck replaces only such a folder, and only
while it holds nothing but the files its manifest lists. It refuses an output
folder that is, or contains, the policy, the model, a data folder, a template
folder or a rule pack, one inside a data folder, the user's home or `/`, and a
non-empty folder without the manifest.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import signal
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from qcheck.errors import Problem, QcheckError
from qcheck.scratch import MARK, make_marked, mark, sweep, unique_suffix

MANIFEST = ".qcheck-manifest.json"
MANIFEST_FORMAT = 1
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)}
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class Origin:
    """Where the output folder was named, for messages: the policy's `report.out` line or `--out`."""

    def __init__(self, flag: str | None = None, file: str | None = None, line: int | None = None):
        self.flag, self.file, self.line = flag, file, line

    def problem(self, message: str, hint: str) -> Problem:
        if self.flag:
            return Problem(f"{self.flag}: {message}", hint=hint)
        return Problem(f"report.out: {message}", file=self.file, line=self.line, hint=hint)


def read_manifest(folder: Path) -> list[str] | None:
    """The files a qcheck run wrote into `folder`; None when the folder carries no valid manifest."""
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = doc["files"]
        if doc.get("format") != MANIFEST_FORMAT or not all(isinstance(f, str) for f in files):
            return None
        return files
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


def write_manifest(folder: Path, extra: Iterable[str] = ()) -> None:
    files = sorted(set(_files_under(folder)) - {MANIFEST, MARK} | set(extra))
    (folder / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "written_by": "qcheck", "files": files},
                                              indent=1) + "\n", encoding="utf-8")


def add_to_manifest(folder: Path, names: Iterable[str]) -> None:
    """Files `qcheck report` wrote into a folder: added to its manifest (a new one when it had none)."""
    listed = read_manifest(folder) or []
    (folder / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "written_by": "qcheck",
                                               "files": sorted(set(listed) | set(names))}, indent=1) + "\n",
                                   encoding="utf-8")


def _within(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def protected_problem(final: Path, protected: Iterable[tuple[str, Path]], inside_forbidden: Iterable[tuple[str, Path]],
                      ) -> str | None:
    """Why `final` must not be replaced (it is or holds something of the user's), or None."""
    home = Path.home().resolve()
    if final == Path(final.anchor):
        return "it is the root of the file system"
    if _within(home, final):
        return f"it {'is your home folder' if final == home else 'holds your home folder'}"
    for what, path in protected:
        p = path.resolve()
        if _within(p, final):
            return f"it {'is' if p == final else 'contains'} the {what} ({p})"
    for what, path in inside_forbidden:
        p = path.resolve()
        if final.is_relative_to(p):
            return f"it is inside the {what} ({p})"
    return None


class OutputDir:
    def __init__(self, final: Path, origin: Origin | None = None, protected: Iterable[tuple[str, Path]] = (),
                 inside_forbidden: Iterable[tuple[str, Path]] = ()):
        self.final = Path(os.path.abspath(final)).resolve()
        self.origin = origin or Origin(flag="--out")
        self._prefix = f".{self.final.name[:100]}.qcheck-"  # a long folder name still leaves room for the suffix
        self.staging = self.final.parent / f"{self._prefix}staging-{unique_suffix()}"
        self._check(list(protected), list(inside_forbidden))
        self._create()

    def _refuse(self, message: str, hint: str = "set report.out (or --out) to a folder of its own") -> QcheckError:
        return QcheckError(self.origin.problem(message, hint))

    def _check(self, protected: list, inside_forbidden: list) -> None:
        why = protected_problem(self.final, protected, inside_forbidden)
        if why:
            raise self._refuse(f"refusing to use {self.final} as the output folder: {why}; qcheck replaces its output "
                               "folder whole")
        if self.final.exists() and not self.final.is_dir():
            raise self._refuse(f"the output path {self.final} exists and is a file, not a folder")
        if not self.final.is_dir():
            return
        try:
            present = _files_under(self.final)
        except OSError as exc:
            raise self._refuse(f"cannot read the output folder {self.final}: {exc.strerror or exc}") from None
        if not present:
            return
        listed = read_manifest(self.final)
        if listed is None:
            raise self._refuse(f"the output folder {self.final} is not empty and does not hold a previous qcheck run "
                               f"(no {MANIFEST}); refusing to replace it",
                               "choose another report.out (or --out), or empty the folder yourself")
        foreign = [f for f in present if f not in set(listed) | {MANIFEST}]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise self._refuse(f"the output folder {self.final} holds a previous qcheck run plus files qcheck did not "
                               f"write ({shown}); refusing to replace it",
                               "move those files elsewhere, or choose another report.out (or --out)")

    def _create(self) -> None:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            sweep(self.final.parent, f"{glob.escape(self._prefix)}*")  # debris of killed runs into the same folder
            make_marked(self.staging)
        except OSError as exc:
            raise self._refuse(f"cannot write the output folder {self.final}: {exc.strerror or exc}",
                               "check the permissions and free space, or set report.out (or --out) elsewhere") from None

    def path(self, name: str) -> Path:
        return self.staging / name

    def disk_problem(self, exc: OSError) -> QcheckError | None:
        """A full or read-only disk while writing the outputs, as the user's problem naming the folder."""
        if exc.errno not in _DISK_ERRORS:
            return None
        return self._refuse(f"cannot write the outputs next to {self.final}: {exc.strerror or os.strerror(exc.errno)}; "
                            "the previous output folder is unchanged",
                            f"free space on the file system holding {self.final.parent}, or set report.out "
                            "(or --out) elsewhere")

    def commit(self) -> Path:
        """Swap the finished staging folder in place of the destination."""
        (self.staging / MARK).unlink(missing_ok=True)
        write_manifest(self.staging)
        with _signals_held():
            old = None
            if self.final.exists():
                old = self.final.parent / f"{self._prefix}old-{unique_suffix()}"
                os.replace(self.final, old)
                try:
                    mark(old)  # a run killed before the removal below leaves debris the next run may sweep
                except OSError:
                    pass
            os.replace(self.staging, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


@contextmanager
def _signals_held():
    """No signal handler runs between the two renames: the destination is never left missing."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
