"""Fetching a model from a wheel on the package index.

Real models ship inside PyPI wheels (PP-OCR in `rapidocr-onnxruntime`, for
instance). A policy can name one:

    model:
      path: models/det.onnx
      fetch: {pip: rapidocr-onnxruntime==1.4.4, member: rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx}

When `path` does not exist, qcheck runs `pip download --no-deps` (so only the
configured package index is contacted), extracts that one member, checks its
SHA-256 when one is given, and moves it into place atomically.

The wheel is kept in qcheck's cache folder (`$QCHECK_CACHE_DIR`, else
`$XDG_CACHE_HOME/qcheck`, else `~/.cache/qcheck`), so several models from one
wheel (a sweep over a model zoo) download it once. The policy loader only takes
a pinned `name==version`, so a cached wheel is the one pip would fetch; the
member's SHA-256, when given, is checked either way.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

from qcheck.errors import ModelError, Problem
from qcheck.model.prepare import file_sha256
from qcheck.policy.spec import FetchSpec
from qcheck.scratch import temp_folder, unique_suffix


def cache_dir() -> Path:
    if os.environ.get("QCHECK_CACHE_DIR"):
        return Path(os.environ["QCHECK_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qcheck"


def fetch_model(spec: FetchSpec, dest: Path, log=print) -> Path:
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + f".part-{os.getpid()}")
    with temp_folder("fetch") as tmp:
        wheel = _wheel(spec, Path(tmp), dest, log)
        try:
            _extract(wheel, spec.member, part, dest)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a corrupt download or cached wheel
            part.unlink(missing_ok=True)
            where = (f"the cached wheel {wheel}" if wheel.parent.parent == cache_dir() / "wheels"
                     else f"the downloaded wheel {wheel.name}")
            raise ModelError(Problem(f"{where} is damaged: {exc}", file=str(dest),
                                     hint="delete the cached wheel and run again")) from None
        except BaseException:
            part.unlink(missing_ok=True)  # a full disk, Ctrl-C: no half-written model left beside the policy
            raise
    if spec.sha256:
        digest = file_sha256(part)
        if digest != spec.sha256:
            part.unlink()
            raise ModelError(Problem(f"the fetched model's SHA-256 is {digest}, the policy expects {spec.sha256}",
                                     file=str(dest), hint=f"the wheel changed; check the pinned version (cached "
                                                          f"wheels: {cache_dir() / 'wheels'})"))
    os.replace(part, dest)
    return dest


def _extract(wheel: Path, member: str, part: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            onnx_members = [n for n in zf.namelist() if n.endswith(".onnx")]
            raise ModelError(Problem(f"{wheel.name} has no member {member!r}", file=str(dest),
                                     hint="members ending in .onnx: " + ", ".join(onnx_members))) from None
        with zf.open(info) as src, open(part, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)


def _wheel(spec: FetchSpec, tmp: Path, dest: Path, log) -> Path:
    """The wheel `spec.pip` names: from the cache when there, else downloaded and cached (a cache that cannot
    be written is skipped, not an error)."""
    cached = cache_dir() / "wheels" / hashlib.sha256(spec.pip.encode()).hexdigest()[:16]
    hits = sorted(cached.glob("*.whl")) if cached.is_dir() else []
    if hits and zipfile.is_zipfile(hits[0]):
        log(f"fetching model: {spec.member} from {spec.pip} (cached wheel)")
        return hits[0]
    log(f"fetching model: {spec.member} from {spec.pip} (pip download --no-deps)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(tmp), spec.pip]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelError(Problem(
            f"could not download {spec.pip} to get the model: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}",
            file=str(dest), hint="check the network access to the package index, or put the model file at this path"))
    wheels = sorted(tmp.glob("*.whl"))
    if not wheels:
        raise ModelError(Problem(f"pip download {spec.pip} produced no wheel", file=str(dest)))
    try:  # whole file under a unique name, then renamed: a concurrent reader never sees half a wheel
        cached.mkdir(parents=True, exist_ok=True)
        part = cached / f".{wheels[0].name}.{unique_suffix()}"
        shutil.copyfile(wheels[0], part)
        os.replace(part, cached / wheels[0].name)
    except OSError:
        pass
    return wheels[0]
