"""Load YAML exactly as ``yaml.safe_load`` does, and remember where every key was.

The data comes from PyYAML's safe constructor (plain dicts, lists and scalars);
beside it a ``YamlDocument`` keeps the line of every mapping key and sequence
item, addressed by its key path, so validators can say "file:line: key: problem".
YAML's own silent last-one-wins for duplicate keys is reported as an issue.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from matrix.config.diagnostics import ConfigError, ConfigIssue

PathPart = Union[str, int]
KeyPath = tuple[PathPart, ...]
# Hostile input: a configuration file is small, and nested aliases ("billion
# laughs") must not make a walk over the document explode.
MAX_FILE_BYTES = 1 << 20
MAX_NODES = 100_000  # nodes of the document with every alias expanded


class _TooBig(Exception):
    """The document expands beyond MAX_NODES nodes."""


def format_key(path: KeyPath) -> str:
    """``("base", "bootstrap", "suite")`` -> ``base.bootstrap.suite``; items as ``[3]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that keeps the composed node so marks can be read after construction."""

    def load_document(self) -> tuple[Any, yaml.Node | None]:
        node = self.get_single_node()
        if node is None:
            return None, None
        # construct_document flattens merge keys ("<<") into the node in place,
        # so walking the node afterwards sees the same keys as the data.
        return self.construct_document(node), node


@dataclass(frozen=True)
class YamlDocument:
    """Parsed data of one YAML file plus the line of each key path."""

    path: Path
    data: Any
    lines: dict[KeyPath, int]
    issues: tuple[ConfigIssue, ...] = ()

    def line(self, path: KeyPath) -> int | None:
        """Line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(path[:end])
            if found is not None:
                return found
        return None

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        return ConfigIssue(self.path, self.line(path), format_key(path), message)


def _key_of(loader: _LineLoader, node: yaml.Node) -> PathPart:
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_object(node)
        return value if isinstance(value, (str, int)) else str(value)
    return f"<{node.id} key>"


def _walk(
    loader: _LineLoader, node: yaml.Node, path: KeyPath, doc_path: Path, budget: list[int]
) -> Iterator[tuple[KeyPath, int] | ConfigIssue]:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    if isinstance(node, yaml.MappingNode):
        seen: dict[PathPart, int] = {}
        for key_node, value_node in node.value:
            key = _key_of(loader, key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                yield ConfigIssue(
                    doc_path,
                    line,
                    format_key(path + (key,)),
                    f"duplicate key (first defined on line {seen[key]})",
                )
                continue
            seen[key] = line
            yield path + (key,), line
            yield from _walk(loader, value_node, path + (key,), doc_path, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield path + (index,), item.start_mark.line + 1
            yield from _walk(loader, item, path + (index,), doc_path, budget)


def load_yaml(path: Path) -> YamlDocument:
    """Parse one single-document YAML file; syntax errors raise ``ConfigError``."""
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(path, None, "", f"cannot read: {exc}")]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([ConfigIssue(path, None, "", f"larger than {MAX_FILE_BYTES >> 20} MiB: "
                                       "not a configuration file")])
    loader = _LineLoader(text)
    try:
        data, node = loader.load_document()
        lines: dict[KeyPath, int] = {}
        issues: list[ConfigIssue] = []
        if node is not None:
            lines[()] = node.start_mark.line + 1
            for item in _walk(loader, node, (), path, [MAX_NODES]):
                if isinstance(item, ConfigIssue):
                    issues.append(item)
                else:
                    lines[item[0]] = item[1]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([ConfigIssue(path, line, "", f"invalid YAML: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(path, None, "", f"invalid YAML: {exc}")]) from exc
    except _TooBig:
        raise ConfigError([ConfigIssue(path, None, "", f"expands to more than {MAX_NODES} "
                                       "values (nested aliases?): refused")]) from None
    finally:
        loader.dispose()
    return YamlDocument(path, data, lines, tuple(issues))
