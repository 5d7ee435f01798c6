"""YAML loading that remembers where every key and item came from.

Mappings load as `LineDict` and sequences as `LineList`; both are plain dict /
list subclasses that also carry the 1-based line of the node (`.line`) and of
each key or item (`.lines`). Validation uses them to say `qcheck.yaml:7: ...`.
"""

from __future__ import annotations

import stat
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


MAX_BYTES = 1 << 20  # a policy, rule pack or profile larger than 1 MB is not hand-written
MAX_DEPTH = 64  # nesting of mappings and sequences
MAX_NODES = 200_000  # values after expanding aliases: `&a [*b, *b, ...]` chains grow exponentially


class _Loader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) whose containers remember lines, with bounded depth and alias expansion."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it stands for, aliases expanded
        self._nodes = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:  # an alias to a node still being composed: a recursive structure
                raise yaml.composer.ComposerError(None, None, f"the alias *{event.anchor} refers to a value that "
                                                  "contains it (a recursive structure)", event.start_mark)
            self._count(size, event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event()
                                              .start_mark)
        before = self._nodes
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1, node.start_mark)
        self._sizes[id(node)] = self._nodes - before
        return node

    def _count(self, n: int, mark) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"expands to more than {MAX_NODES:,} values (aliases "
                                              "included); refusing an alias bomb", mark)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    explicit = sum(1 for k, _v in node.value if k.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)
    merged = len(node.value) - explicit  # `<<:` values come first; keys written here override them
    result = LineDict()
    result.line = node.start_mark.line + 1
    own: set = set()
    for i, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value (text or a number), not a list or mapping",
                key_node.start_mark) from None
        if i >= merged:
            if key in own:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            own.add(key)
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
        info = path.stat()
        if stat.S_ISREG(info.st_mode) and info.st_size > MAX_BYTES:
            raise QcheckError(Problem(f"{what} is {info.st_size:,} bytes; the limit is {MAX_BYTES:,}", file=str(path)))
        if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
            raise QcheckError(Problem(f"{what} is not a regular file (a device, pipe or socket)", file=str(path)))
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
    except RecursionError:
        raise QcheckError(Problem(f"invalid YAML: nested deeper than {MAX_DEPTH} levels", file=filename)) from None


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
