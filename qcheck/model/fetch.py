"""Fetching a model from a wheel on the package index.

Real models ship inside PyPI wheels (PP-OCR in `rapidocr-onnxruntime`, for
instance). A policy can name one:

    model:
      path: models/det.onnx
      fetch: {pip: rapidocr-onnxruntime==1.4.4, member: rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx}

When `path` does not exist, qcheck runs `pip download --no-deps` (so only the
configured package index is contacted), extracts that one member, checks its
SHA-256 when one is given, and moves it into place atomically.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from qcheck.errors import ModelError, Problem
from qcheck.model.prepare import file_sha256
from qcheck.policy.spec import FetchSpec
from qcheck.scratch import temp_folder


def fetch_model(spec: FetchSpec, dest: Path, log=print) -> Path:
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching model: {spec.member} from {spec.pip} (pip download --no-deps)")
    with temp_folder("fetch") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", tmp, spec.pip]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ModelError(Problem(
                f"could not download {spec.pip} to get the model: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}",
                file=str(dest), hint="check the network access to the package index, or put the model file at this path"))
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelError(Problem(f"pip download {spec.pip} produced no wheel", file=str(dest)))
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                info = zf.getinfo(spec.member)
            except KeyError:
                onnx_members = [n for n in zf.namelist() if n.endswith(".onnx")]
                raise ModelError(Problem(f"{wheels[0].name} has no member {spec.member!r}", file=str(dest),
                                         hint="members ending in .onnx: " + ", ".join(onnx_members))) from None
            part = dest.with_name(dest.name + f".part-{os.getpid()}")
            with zf.open(info) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    if spec.sha256:
        digest = file_sha256(part)
        if digest != spec.sha256:
            part.unlink()
            raise ModelError(Problem(f"the fetched model's SHA-256 is {digest}, the policy expects {spec.sha256}",
                                     file=str(dest), hint="the wheel changed; check the pinned version"))
    os.replace(part, dest)
    return dest
