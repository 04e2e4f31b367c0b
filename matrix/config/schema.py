"""Declaring a configuration file's keys once, and the helpers every file kind shares.

A file kind (matrix, host, target, category entry) is a table of ``Key`` rows:
name, parser, default, help. ``read_keys`` walks one YAML mapping against such a
table: it reports unknown keys with the closest known one, missing required keys,
and every parser's complaint with file, line and key, and returns the parsed
values (the default where a key is absent or wrong). The same table gives the
``--help`` text (``describe``) and command-line overrides (``Key.option``).

Beside it: the name parsers (the rule itself is ``results.names``, full matches),
the one "did you mean" helper, the glob selector (``matrix.config.globs``) and the
one "every YAML file in these directories" loader.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from matrix.config.diagnostics import ConfigError, ConfigIssue, IssueCollector
from matrix.config.globs import match_globs
from matrix.config.yamlload import KeyPath, YamlDocument, load_yaml
from results.names import MAX_NAME, is_name

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


def closest(name: object, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name nearest ``name``, or nothing."""
    match = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_key(key: object, known: Iterable[str]) -> str:
    known = list(known)
    return f"unknown key{closest(key, known)}; known: {', '.join(known)}"


def select(names: Sequence[str], patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names matching any of ``patterns`` (all when there are none), in the names' order,
    and the patterns that matched nothing."""
    if not patterns:
        return list(names), []
    chosen: set[str] = set()
    unmatched = []
    for pattern in patterns:
        matched = match_globs(names, pattern)
        if not matched:
            unmatched.append(pattern)
        chosen.update(matched)
    return [name for name in names if name in chosen], unmatched


def load_dir(dirs: Sequence[Path], load_one: Callable[[Path], T], name_of: Callable[[T], str],
             what: str) -> dict[str, T]:
    """Every ``*.yaml`` under ``dirs`` by name (a later directory overrides an earlier one),
    sorted by name; the problems of all files are raised together as one ``ConfigError``.
    A file's name must be its item's name."""
    issues = IssueCollector()
    found: dict[str, T] = {}
    for directory in dirs:
        if not directory.is_dir():
            issues.add(ConfigIssue(directory, None, "", f"{what} directory does not exist"))
            continue
        for path in sorted(directory.glob("*.yaml")):
            try:
                item = load_one(path)
            except ConfigError as err:
                issues.extend(err.issues)
                continue
            name = name_of(item)
            if name != path.stem:  # the host and target parsers say so first, with the line
                line = load_yaml(path).line(("name",))
                issues.add(ConfigIssue(path, line, "name", f"'{name}' differs from the file "
                                       f"name '{path.stem}'"))
                continue
            found[name] = item
    issues.check()
    return dict(sorted(found.items()))


class Invalid(ValueError):
    """A value a parser refuses; each problem's path is relative to the value parsed."""

    def __init__(self, message: str, path: KeyPath = ()) -> None:
        super().__init__(message)
        self.problems: list[tuple[KeyPath, str]] = [(path, message)]

    @classmethod
    def many(cls, problems: list[tuple[KeyPath, str]]) -> Invalid:
        error = cls(problems[0][1], problems[0][0])
        error.problems = list(problems)
        return error

    def under(self, prefix: KeyPath) -> Invalid:
        return Invalid.many([(prefix + path, message) for path, message in self.problems])


@dataclass
class Reader:
    """What a parser sees besides the value: the document (for lines and its own path),
    and where to report problems it recovers from while keeping the rest of the value."""

    doc: YamlDocument
    issues: IssueCollector

    def report(self, path: KeyPath, message: str) -> None:
        self.issues.add(self.doc.issue(path, message))


@dataclass(frozen=True)
class Derived:
    """A default computed from the other keys' parsed values (by their names) and the
    reader (e.g. the file's own name)."""

    compute: Callable[[Mapping[str, Any], Any], Any]
    text: str  # what --help says the default is


class Option(enum.Enum):
    """How a key can be overridden on the command line."""

    VALUE = "value"  # --key VALUE, read by the key's own parser
    FLAG = "flag"  # --key sets true


# A parser takes the raw YAML value, the reader and the value's key path (from the
# document's root); it returns the parsed value or raises Invalid.
Parser = Callable[[Any, Any, KeyPath], Any]


@dataclass(frozen=True)
class Key:
    """One key of a configuration file, declared once."""

    name: str
    parse: Parser
    help: str
    default: Any = None  # a value in the file's own syntax (parsed like one), or Derived
    required: bool = False
    option: Option | None = None  # overridable on the command line as --<name>
    example: str = ""  # metavar of the command-line option

    @property
    def field(self) -> str:
        """The attribute name in the loaded configuration."""
        return self.name.replace("-", "_")

    def default_text(self) -> str | None:
        if isinstance(self.default, Derived):
            return self.default.text
        if self.default is None or self.default in ((), [], {}, ""):
            return None
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, list):
            return "[" + ", ".join(map(str, self.default)) + "]"
        return str(self.default)


def read_document(doc: YamlDocument, keys: Sequence[Key], kind: str) -> dict[str, Any]:
    """A host or target file's keys, parsed by ``keys``; raises ``ConfigError`` with
    every problem in the file (its YAML's too)."""
    issues = IssueCollector(list(doc.issues))
    if not isinstance(doc.data, dict):
        issues.add(doc.issue((), f"a {kind} file must be a mapping, got {shown(doc.data)}"))
        issues.check()
    values = read_keys(keys, doc.data, Reader(doc, issues))
    issues.check()
    return values


def read_keys(keys: Sequence[Key], data: Mapping[Any, Any], reader: Any,
              prefix: KeyPath = (), overrides: Mapping[str, Any] | None = None,
              override_issue: Callable[[str, str], ConfigIssue] | None = None
              ) -> dict[str, Any]:
    """Parse ``data`` (a mapping at ``prefix`` in ``reader.doc``) against ``keys``.

    Returns every key's value by name: parsed, or its default when absent or refused.
    ``overrides`` (command-line values, by key name) replace the file's values and are
    parsed the same way; their problems are reported through ``override_issue``.
    """
    by_name = {key.name: key for key in keys}
    for name in data:
        if name not in by_name:
            reader.report(prefix + (name,), unknown_key(name, by_name))
    values: dict[str, Any] = {}
    derived = []
    for key in keys:
        path = prefix + (key.name,)
        if overrides and key.name in overrides:
            try:
                values[key.name] = key.parse(overrides[key.name], reader, path)
                continue
            except Invalid as exc:
                assert override_issue is not None
                reader.issues.extend(override_issue(key.name, message)
                                     for _, message in exc.problems)
        if key.name in data:
            try:
                values[key.name] = key.parse(data[key.name], reader, path)
                continue
            except Invalid as exc:
                for where, message in exc.under(path).problems:
                    reader.report(where, message)
        elif key.required:
            reader.report(prefix, f"missing required key '{key.name}'")
        if isinstance(key.default, Derived):
            derived.append(key)
        elif key.default is None or key.required:
            values[key.name] = key.default
        else:
            values[key.name] = key.parse(key.default, reader, path)
    for key in derived:
        values[key.name] = key.default.compute(values, reader)
    return values


def option_value(text: str) -> Any:
    """A command-line override as the file would hold it: a whole number, else text."""
    return int(text) if re.fullmatch(r"-?[0-9]+", text.strip()) else text


def describe(keys: Sequence[Key], width: int = 24) -> str:
    """One line per key: name, help and default (for --help and the docs)."""
    lines = []
    for key in keys:
        default = key.default_text()
        text = key.help + (f" (default: {default})" if default else "")
        text += " (required)" if key.required else ""
        lines.append(f"  {key.name:<{width}} {text}")
    return "\n".join(lines)


# Parsers shared by the file kinds ---------------------------------------------------


SHOWN_LIMIT = 80  # characters of a refused value repeated in a message


def shown(value: Any) -> str:
    """A value as an error message shows it: escaped (repr) and cut short, a whole
    mapping or list not repeated (the file may be hostile)."""
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    text = repr(value)
    return text if len(text) <= SHOWN_LIMIT else text[: SHOWN_LIMIT - 3] + "..."


def parse_bool(value: Any, reader: Any = None, path: KeyPath = ()) -> bool:
    """A YAML boolean: ``"false"`` (a string) and ``0`` are refused, never read as true."""
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false (unquoted), got {shown(value)}")
    return value


def parse_text(value: Any, reader: Any = None, path: KeyPath = ()) -> str:
    """Any scalar as text (a description, a label)."""
    if isinstance(value, (dict, list)) or value is None:
        raise Invalid(f"must be a string, got {shown(value)}")
    return str(value)


def parse_name(value: Any, reader: Any = None, path: KeyPath = ()) -> str:
    """A name as ``results.names.is_name`` takes it (the whole string: no final newline)."""
    if not is_name(value):
        raise Invalid(f"{shown(value)}: a plain name is lower-case letters, digits, "
                      f"'.', '_' and '-', starting with a letter or digit, at most {MAX_NAME} "
                      "characters")
    return value


def parse_file_name(value: Any, reader: Reader, path: KeyPath) -> str:
    """A host's or target's ``name``: a plain name, and its file's name, wherever the
    file was found (a bundled directory, a directory given, or a path in a matrix)."""
    name = parse_name(value)
    if name != reader.doc.path.stem:
        raise Invalid(f"'{name}' must match the file name ('{reader.doc.path.stem}')")
    return name


def bounded_int(low: int, high: int) -> Parser:
    """A parser for a whole number from ``low`` to ``high`` (a YAML integer, not text:
    ``"3"`` and ``true`` are refused)."""

    def parse(value: Any, reader: Any = None, path: KeyPath = ()) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise Invalid(f"must be a whole number of at least {low} and at most {high}, "
                          f"got {shown(value)}")
        return value

    return parse


def enum_parser(kind: type[E]) -> Parser:
    """A parser for a closed set: the value must be one of the enum's values."""

    def parse(value: Any, reader: Any = None, path: KeyPath = ()) -> E:
        try:
            return kind(value)
        except (ValueError, TypeError):
            choices = ", ".join(str(m.value) for m in kind)
            raise Invalid(f"must be one of: {choices}, got {shown(value)}") from None

    return parse


# DIB_* names a build may set (ELEMENTS_PATH too): targets' and the matrix's env.
DIB_ENV_NAME_RE = re.compile(r"DIB_[A-Z0-9_]+|ELEMENTS_PATH")  # full matches
CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f]")  # C0 controls but tab and newline, DEL


def parse_dib_env(value: Any, reader: Any = None, path: KeyPath = ()
                  ) -> tuple[tuple[str, str], ...]:
    """A mapping of DIB_* names to scalar values, as sorted pairs; values are never
    given to a shell."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise Invalid("must be a mapping of DIB_* names to values")
    problems: list[tuple[KeyPath, str]] = []
    env = {}
    for name, item in value.items():
        if not isinstance(name, str) or not DIB_ENV_NAME_RE.fullmatch(name):
            problems.append(((name,), "only DIB_* variable names are accepted"))
        elif isinstance(item, (dict, list)) or item is None:
            problems.append(((name,), "value must be a string or number"))
        elif CONTROL_RE.search(str(item)):  # a NUL cannot even reach a process's environment
            problems.append(((name,), "value must not hold control characters (newlines and "
                             "tabs are fine: DIB_BLOCK_DEVICE_CONFIG is YAML text)"))
        else:
            env[name] = str(item).lower() if isinstance(item, bool) else str(item)
    if problems:
        raise Invalid.many(problems)
    return tuple(sorted(env.items()))

