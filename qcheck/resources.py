"""Where qcheck's data files are: the rule packs, templates and schemas.

In a wheel, `rules/` and `templates/` are installed inside the package as
`qcheck/_data/`; in a source checkout (editable install, tests) they are the
repository's top-level folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    installed = _PACKAGE / "_data" / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name


def rules_dir() -> Path:
    return _data_dir("rules")


def templates_dir() -> Path:
    return _data_dir("templates")


def builtin_pack_path() -> Path:
    return rules_dir() / "builtin.yaml"


def schema_path(name: str) -> Path:
    return _PACKAGE / "schema" / name
