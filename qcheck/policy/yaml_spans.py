"""YAML loading that remembers where every key and item came from.

Mappings load as `LineDict` and sequences as `LineList`; both are plain dict /
list subclasses that also carry the 1-based line of the node (`.line`) and of
each key or item (`.lines`). Validation uses them to say `qcheck.yaml:7: ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from qcheck.errors import Problem, QcheckError


class LineDict(dict):
    line: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


class LineList(list):
    line: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines: list[int] = []


class _Loader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) whose containers remember lines."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList()
    result.line = node.start_mark.line + 1
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.lines.append(item.start_mark.line + 1)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: Path, what: str = "file") -> Any:
    """Load a YAML file with line information; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QcheckError(Problem(f"{what} not found", file=str(path))) from None
    except IsADirectoryError:
        raise QcheckError(Problem(f"{what} is a folder, not a YAML file", file=str(path))) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QcheckError(Problem(f"cannot read {what}: {exc}", file=str(path))) from None
    return load_yaml_text(text, str(path))


def load_yaml_text(text: str, filename: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = "invalid YAML: " + " ".join(p for p in (exc.context, exc.problem) if p)
        raise QcheckError(Problem(message, file=filename, line=line)) from None
    except yaml.YAMLError as exc:
        raise QcheckError(Problem(f"invalid YAML: {exc}", file=filename)) from None


def line_of(doc: Any, path: list | tuple) -> int | None:
    """Line of the value at `path` (keys and indices) in a loaded document.

    Falls back to the deepest enclosing container that has a line, so an error
    about a missing key points at the mapping that should hold it.
    """
    node = doc
    best = getattr(doc, "line", None)
    for step in path:
        if isinstance(node, LineDict) and step in node:
            best = node.lines.get(step, best)
            node = node[step]
        elif isinstance(node, LineList) and isinstance(step, int) and 0 <= step < len(node):
            best = node.lines[step] if step < len(node.lines) else best
            node = node[step]
        else:
            break
    return best


def to_plain(value: Any) -> Any:
    """Strip line information: LineDict/LineList become dict/list (for JSON)."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value
