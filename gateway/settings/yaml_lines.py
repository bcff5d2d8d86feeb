"""YAML with line numbers: the reading shared by the settings file and the municipality map.

Contract:

- `read_text(path, problems) -> str | None`: the file's UTF-8 text, or None with a `Problem`
  ("file not found", "is a folder, not a file", "cannot read: …").
- `parse_yaml(src, text, problems) -> Node | None`: the document as a tree of `Node`s, each
  knowing the file and the line it came from (a mapping value: its key's line). A syntax error,
  a duplicate key, a non-scalar key or a recursive alias becomes a `Problem` with its line.
  An empty document is None.
- A scalar `Node` keeps both its YAML value (`value`: int, float, bool, None, str, …) and its
  text as written (`text`), so that string settings can be taken verbatim (`ON`, `0123`).
- `yaml_scalar(text)`: `text` read the way YAML reads a plain scalar ("100" -> 100).
- `join(path, key)`: dotted key paths ("" + "sms" -> "sms", "sms" + "sender" -> "sms.sender").

No knowledge of what the keys mean lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.settings.problems import Problem

try:
    from yaml import CSafeLoader as _YamlLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _YamlLoader  # type: ignore[assignment]

__all__ = ["Node", "join", "parse_yaml", "read_text", "yaml_scalar"]


@dataclass
class Node:
    """A YAML value and where it came from (the key's line for a mapping value)."""

    src: str
    line: int | None
    kind: Literal["scalar", "map", "seq"]
    value: Any = None  # scalar: the YAML-constructed value (int, float, bool, None, str, …)
    text: str = ""  # scalar: its text as written
    keys: dict[str, Node] = field(default_factory=dict)
    items: list[Node] = field(default_factory=list)

    @property
    def is_null(self) -> bool:
        return self.kind == "scalar" and self.value is None


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def read_text(path: Path, problems: list[Problem]) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(Problem(str(path), None, "", "file not found"))
    except IsADirectoryError:
        problems.append(Problem(str(path), None, "", "is a folder, not a file"))
    except OSError as exc:
        problems.append(Problem(str(path), None, "", f"cannot read: {exc.strerror or exc}"))
    except UnicodeDecodeError:
        problems.append(Problem(str(path), None, "", "cannot read: not UTF-8 text"))
    return None


def parse_yaml(src: str, text: str, problems: list[Problem]) -> Node | None:
    """Compose `text` into `Node`s; a syntax error becomes a Problem with its line."""
    loader = _YamlLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        return _convert(loader, root, src, root.start_mark.line + 1, "", problems, set())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem:
            if exc.context.startswith("while"):
                what = f"{exc.problem} ({exc.context})"
            else:  # "expected a single document in the stream", "but found another document"
                what = f"{exc.context}, {exc.problem}"
        problems.append(Problem(src, mark.line + 1 if mark else None, "", f"invalid YAML: {what}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(src, None, "", f"invalid YAML: {exc}"))
    finally:
        loader.dispose()
    return None


_STR_TAG = "tag:yaml.org,2002:str"


def _convert(
    loader: Any,
    node: yaml.Node,
    src: str,
    line: int,
    path: str,
    problems: list[Problem],
    active: set[int],
) -> Node:
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR_TAG:  # the common case, and the fast one
            return Node(src, line, "scalar", value=node.value, text=node.value)
        try:
            value = loader.construct_object(node)
        except (ValueError, TypeError, OverflowError):  # e.g. an impossible date: keep the text
            value = node.value
        return Node(src, line, "scalar", value=value, text=str(node.value))
    if id(node) in active:
        problems.append(Problem(src, line, path, "recursive YAML alias"))
        return Node(src, line, "scalar")
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            items = [
                _convert(
                    loader, item, src, item.start_mark.line + 1, f"{path}[{i}]", problems, active
                )
                for i, item in enumerate(node.value)
            ]
            return Node(src, line, "seq", items=items)
        assert isinstance(node, yaml.MappingNode)
        keys: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(src, key_line, path, "a key must be a plain name"))
                continue
            key = str(key_node.value)
            key_path = join(path, key)
            if key in keys:
                first = keys[key].line
                problems.append(
                    Problem(src, key_line, key_path, f"duplicate key (first on line {first})")
                )
                continue
            keys[key] = _convert(loader, value_node, src, key_line, key_path, problems, active)
        return Node(src, line, "map", keys=keys)
    finally:
        active.discard(id(node))


def yaml_scalar(text: str) -> Any:
    """`text` read the way YAML reads a plain scalar: "100" -> 100, "true" -> True, "~" -> None."""
    resolver: Any = yaml.resolver.Resolver()
    tag = resolver.resolve(yaml.ScalarNode, text, (True, False))
    try:
        return yaml.constructor.SafeConstructor().construct_object(yaml.ScalarNode(tag, text))
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        return text
