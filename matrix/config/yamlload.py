"""Load YAML exactly as ``yaml.safe_load`` does, and remember where every key was.

The data comes from PyYAML's safe constructor (plain dicts, lists and scalars);
beside it a ``YamlDocument`` keeps the line of every mapping key and sequence
item, addressed by its key path, so validators can say "file:line: key: problem".
YAML's own silent last-one-wins for duplicate keys is reported as an issue.

Configuration files are untrusted input (a path on the command line may name a
FIFO or a device): a file is read through ``results.safefile`` (regular files only,
opened without blocking, bounded) and composed by ``dib.safeyaml.BoundedLoader``,
which refuses deep nesting and alias bombs with the line where they start.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from dib.safeyaml import MAX_NODES, BoundedLoader, TooComplex
from matrix.config.diagnostics import ConfigError, ConfigIssue
from results import safefile

PathPart = Union[str, int]
KeyPath = tuple[PathPart, ...]
MAX_FILE_BYTES = 1 << 20  # a configuration file is small


class _TooBig(Exception):
    """The walk met more than MAX_NODES nodes (merge keys rewrite the node graph after
    the loader counted it, so the walk keeps its own budget)."""


def format_key(path: KeyPath) -> str:
    """``("base", "bootstrap", "suite")`` -> ``base.bootstrap.suite``; items as ``[3]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class _LineLoader(BoundedLoader):
    """The bounded SafeLoader, keeping the composed node so marks can be read after
    construction."""

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
    """Parse one single-document YAML file; unreadable files, syntax errors and
    documents beyond the loader's bounds raise ``ConfigError``."""
    text = _read(path)
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
        what = f"{problem}: refused" if isinstance(exc, TooComplex) else f"invalid YAML: {problem}"
        raise ConfigError([ConfigIssue(path, line, "", what)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(path, None, "", f"invalid YAML: {exc}")]) from None
    except _TooBig:
        raise ConfigError([ConfigIssue(path, None, "", f"expands to more than {MAX_NODES} "
                                       "values (nested aliases?): refused")]) from None
    finally:
        loader.dispose()
    return YamlDocument(path, data, lines, tuple(issues))


def _read(path: Path) -> str:
    """The file's text: a regular UTF-8 file of at most MAX_FILE_BYTES (never a hang on a
    FIFO, never an endless read of a device)."""
    try:
        return safefile.read_text(path, MAX_FILE_BYTES)
    except safefile.UnsafeFile as exc:
        reason = str(exc).removeprefix(f"{path}: ")  # the issue names the file itself
        raise ConfigError([ConfigIssue(path, None, "", reason)]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(path, None, "", f"not UTF-8 text (byte {exc.start})")]
                          ) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, None, "", f"cannot read: {exc.strerror or exc}")]
                          ) from None
