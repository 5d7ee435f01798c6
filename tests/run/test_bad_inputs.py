"""The bad-input corpus: every file in tests/bad_inputs/ is one user mistake.

Each case holds the policy (a mapping, or raw text when the YAML itself is the
mistake), the files it needs (built here: models by tests/bad_models.py, data
as .npy/.npz/images), and what the user must see: the exit code and fragments
of the one message. No case may end in a traceback or exit code 3.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_models import MODELS
from helpers import TESTS, write_policy

from qcheck.cli.main import main
from qcheck.run.output_folder import write_manifest

CORPUS = TESTS / "bad_inputs"
CASES = sorted(CORPUS.glob("*.yaml"))
PREVIOUS = '{"previous": "run"}'


def build(tmp: Path, name: str, spec) -> None:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if "model" in spec:
        MODELS[spec["model"]](path)
        if "truncate" in spec:
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * spec["truncate"])])
    elif "text" in spec:
        path.write_text(spec["text"].replace("{tmp}", str(tmp)))
    elif "folder" in spec:
        path.mkdir()
    elif "npy" in spec:
        path.mkdir()
        rng = np.random.default_rng(1)
        for i in range(spec["npy"]):
            a = rng.standard_normal(spec.get("shape", [1, 3, 16, 16])).astype(spec.get("dtype", "float32"))
            if spec.get("nan") == i:
                a.flat[5] = np.nan
            if spec.get("inf") == i:
                a.flat[7] = np.inf
            np.save(path / f"{i}.npy", a)
    elif "npy_per_input" in spec:
        rng = np.random.default_rng(2)
        for inp, n in spec["npy_per_input"].items():
            (path / inp).mkdir(parents=True)
            for i in range(n):
                np.save(path / inp / f"{i}.npy", rng.standard_normal(spec["shape"]).astype(np.float32))
    elif "npz" in spec:
        path.mkdir()
        rng = np.random.default_rng(3)
        for i in range(spec["npz"]):
            np.savez(path / f"{i}.npz", **{k: rng.standard_normal(s).astype(np.float32) for k, s in spec["arrays"].items()})
    elif "images" in spec:
        from PIL import Image

        path.mkdir()
        rng = np.random.default_rng(4)
        for i in range(spec["images"]):
            if i in spec.get("broken", []):
                (path / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a picture")
            else:
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path / f"{i}.png")
    elif "png16" in spec:  # a folder of 16-bit grayscale PNGs (values to 65535, as depth or medical images are)
        from PIL import Image

        path.mkdir()
        for i in range(spec["png16"]):
            Image.fromarray(np.random.default_rng(i).integers(0, 65535, (20, 24), dtype=np.uint16)).save(path / f"{i}.png")
    elif "int64" in spec:  # one sample per value, each an int64 array of shape [1]
        path.mkdir()
        for i, v in enumerate(spec["int64"]):
            np.save(path / f"{i}.npy", np.array([v], dtype=np.int64))
    elif "fifo" in spec:
        os.mkfifo(path)
    elif "png_header" in spec:  # a PNG whose header claims a size its data never holds (a decompression bomb)
        w, h = spec["png_header"]
        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                         + struct.pack(">I", zlib.crc32(chunk)) + b"\0\0\0\0IEND\xaeB`\x82")
    elif "previous_run" in spec:
        path.mkdir()
        (path / "results.json").write_text(PREVIOUS)
        (path / "report.html").write_text("<p>previous</p>")
        write_manifest(path)
    else:
        raise ValueError(f"unknown file spec {spec}")
    if "mode" in spec:
        os.chmod(path, spec["mode"])


def test_the_corpus_covers_the_issue():
    names = {c.stem for c in CASES}
    assert len(names) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_input(case, tmp_path, capsys):
    spec = yaml.safe_load(case.read_text())
    expect = spec["expect"]
    if expect.get("needs_non_root") and os.geteuid() == 0:
        pytest.skip("file permissions do not bind root")
    for name, file_spec in (spec.get("files") or {}).items():
        build(tmp_path, name, file_spec)
    policy = tmp_path / "qcheck.yaml"
    if spec["policy"] is None:
        pass  # the mistake is that there is no policy
    elif isinstance(spec["policy"], str):
        policy.write_text(spec["policy"])
    elif "{tmp}" in json.dumps(spec["policy"]):  # a path that must be absolute
        policy.write_text(yaml.safe_dump(spec["policy"]).replace("{tmp}", str(tmp_path)))
    else:
        write_policy(policy, spec["policy"])
    command = spec.get("command", "run")
    args = [command, str(policy), *spec.get("args", [])]
    try:
        code = main(args)
    finally:
        for name, file_spec in (spec.get("files") or {}).items():
            if "mode" in file_spec:
                os.chmod(tmp_path / name, 0o755)
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err, err
    assert code == expect["exit"], err
    for fragment in expect.get("message", []):
        assert fragment.replace("{tmp}", str(tmp_path)) in err, f"{fragment!r} not in:\n{err}"
    for name in expect.get("kept", []):  # a previous run survives the failed one, untouched
        assert (tmp_path / name / "results.json").read_text() == PREVIOUS
    for name, text in (spec.get("files") or {}).items():  # the user's own files are never deleted or changed
        if "text" in text:
            assert (tmp_path / name).read_text() == text["text"].replace("{tmp}", str(tmp_path)), name
    for name in expect.get("kept_files", []):
        assert (tmp_path / name).is_file(), name
    for name in expect.get("not_created", []):  # code named by a policy, model or template never ran
        assert not (tmp_path / name).exists(), f"{name} was created: code from the input ran"
    if "results" in expect:  # the run went through: check what it says about the problem
        results = json.loads((tmp_path / "out" / "results.json").read_text())
        text = json.dumps(results[expect["results"]["key"]])
        for fragment in expect["results"]["mentions"]:
            assert fragment in text, f"{fragment!r} not in results[{expect['results']['key']!r}]: {text[:2000]}"
    for fragment in expect.get("report_mentions", []):
        assert fragment in (tmp_path / "out" / "report.html").read_text(), fragment
    assert not [p for p in tmp_path.iterdir() if ".qcheck-" in p.name]  # no staging left behind


def test_previous_run_stays_in_place_while_the_new_one_works(tmp_path):
    """Looked at from inside the run (its progress callback): the old folder is whole until the very end."""
    from helpers import basic_policy

    from qcheck.policy.loader import load_policy
    from qcheck.run.pipeline import Console, run

    policy = load_policy(basic_policy(tmp_path))
    build(tmp_path, "out", {"previous_run": True})
    seen = []

    def progress(stage, i, n):
        seen.append((stage, (tmp_path / "out" / "results.json").read_text() == PREVIOUS,
                     sorted(p.name for p in (tmp_path / "out").iterdir())))

    results = run(policy, console=Console(progress=progress))
    assert {"calibrate", "measure"} <= {s for s, _, _ in seen}
    assert all(kept and names == [".qcheck-manifest.json", "report.html", "results.json"] for _, kept, names in seen)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["verdict"] == results["verdict"]
