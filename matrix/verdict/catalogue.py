"""The failure category catalogue: one YAML entry per cause, loaded and checked.

An entry names a cause (``id``), says it in one line (``legend``, which may use
named groups of the pattern that matched, or fields of dib's failure record),
and says how to recognise it: ``patterns`` over log lines, ``record`` (kinds of
dib's own failure record), or neither (then only a cell that knows the cause for
sure, e.g. a timeout, names it). The bundled catalogue comes first; a user's file
adds entries or replaces one with the same id, so any row can be re-categorised.

Patterns are compiled with RE2, whose matching time is linear in the line: a
pattern from a user's file cannot hang a run. What RE2 does not take
(backreferences, lookaround) is refused at load time with file, line and key.
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import re2

from matrix.config.diagnostics import ConfigError, IssueCollector
from matrix.config.yamlload import YamlDocument, load_yaml

UNCATEGORIZED = "uncategorized"
ANY = "*"  # a host or row that every entry's scope takes (dib-matrix classify without --row)
DEFAULT_PRIORITY = 50
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
RECORD_KINDS = ("hook", "environment", "packages", "debootstrap", "output", "elements",
                "config", "interrupted", "internal")
RULE_KEYS = {"id", "legend", "priority", "patterns", "record", "warnings", "link", "hosts",
             "targets"}
MAX_PATTERN_LENGTH = 2000
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is reported once, by us, with its place


def bundled_catalogue() -> Path:
    return Path(str(resources.files("matrix.verdict") / "categories" / "default.yaml"))


@dataclass(frozen=True)
class CategoryRule:
    id: str
    legend: str
    patterns: tuple[Any, ...] = ()  # compiled RE2 patterns
    priority: int = DEFAULT_PRIORITY
    record: tuple[str, ...] = ()  # kinds of dib failure record this entry names
    warnings: bool = False  # may match apt/debootstrap "W:" lines (else never)
    link: str | None = None
    hosts: tuple[str, ...] = ("*",)
    targets: tuple[str, ...] = ("*",)  # globs over the row: a target, "tox", "hostgen", "x:boot"

    def in_scope(self, host: str, row: str) -> bool:
        """Whether the entry applies to this cell; ``*`` stands for any host or row."""
        return (host == ANY or any(fnmatch.fnmatchcase(host, g) for g in self.hosts)) and (
            row == ANY or any(fnmatch.fnmatchcase(row, g) for g in self.targets))


@dataclass(frozen=True)
class Catalogue:
    rules: tuple[CategoryRule, ...]

    def get(self, rule_id: str) -> CategoryRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def scoped(self, host: str, row: str) -> tuple[CategoryRule, ...]:
        return tuple(r for r in self.rules if r.in_scope(host, row))


def compile_pattern(text: str) -> Any:
    """An RE2 pattern, or ValueError saying why it is refused."""
    if len(text) > MAX_PATTERN_LENGTH:
        raise ValueError(f"longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(text, options=_OPTIONS)
    except re2.error as err:
        detail = err.args[0] if err.args else err
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", errors="replace")
        raise ValueError(f"not a linear-time (RE2) regex: {detail}") from None


OPTIONAL_SEGMENT = re.compile(r"\[\[(.*?)\]\]")
MAX_LEGEND = 300


def legend_problem(legend: object) -> str | None:
    """Why ``legend`` cannot be a legend: only plain ``{name}`` fields may be filled in
    (a format spec such as ``{path:>99999999999}`` would exhaust memory)."""
    if not isinstance(legend, str) or not legend.strip():
        return "must be a non-empty string"
    if len(legend) > MAX_LEGEND:
        return f"longer than {MAX_LEGEND} characters"
    try:
        fields = list(string.Formatter().parse(OPTIONAL_SEGMENT.sub(r"\1", legend)))
    except ValueError as err:
        return f"not a legend template ({err}); write a literal brace as {{{{ or }}}}"
    for _, name, spec, conversion in fields:
        if name is not None and (not name.isidentifier() or spec or conversion):
            return (f"'{{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}': only {{name}} fields (a pattern's named "
                    "group or a dib failure record field) can be filled in")
    return None


def load_catalogue(paths: Sequence[Path] = ()) -> Catalogue:
    """The bundled catalogue, then each user file; a later entry with the same id replaces."""
    issues = IssueCollector()
    rules: dict[str, CategoryRule] = {}
    for path in (bundled_catalogue(), *paths):
        try:
            doc = load_yaml(path)
        except ConfigError as err:
            issues.extend(err.issues)
            continue
        issues.extend(doc.issues)
        if not isinstance(doc.data, list):
            issues.add(doc.issue((), "a category file must be a list of categories"))
            continue
        for index, entry in enumerate(doc.data):
            rule = _rule(doc, index, entry, issues)
            if rule is not None:
                rules.pop(rule.id, None)  # a replacement takes the place of the last file
                rules[rule.id] = rule
    issues.check()
    return Catalogue(tuple(rules.values()))


def _rule(doc: YamlDocument, index: int, entry: object,
          issues: IssueCollector) -> CategoryRule | None:
    where = (index,)
    if not isinstance(entry, dict):
        issues.add(doc.issue(where, "each category must be a mapping"))
        return None
    for key in sorted(set(map(str, entry)) - RULE_KEYS):
        issues.add(doc.issue(where + (key,), "unknown key; known: " + ", ".join(sorted(RULE_KEYS))))
    rule_id = entry.get("id")
    if not isinstance(rule_id, str) or not ID_RE.match(rule_id) or rule_id == UNCATEGORIZED:
        issues.add(doc.issue(where + ("id",), "required: lower-case words and dashes "
                             f"(not '{UNCATEGORIZED}')"))
        return None
    legend = entry.get("legend", rule_id)
    problem = legend_problem(legend)
    if problem:
        issues.add(doc.issue(where + ("legend",), problem))
        legend = rule_id
    priority = entry.get("priority", DEFAULT_PRIORITY)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 1000:
        issues.add(doc.issue(where + ("priority",), "must be a whole number from 0 to 1000"))
        priority = DEFAULT_PRIORITY
    warnings = entry.get("warnings", False)
    if not isinstance(warnings, bool):
        issues.add(doc.issue(where + ("warnings",), "must be true or false"))
        warnings = False
    link = entry.get("link")
    if link is not None and not isinstance(link, str):
        issues.add(doc.issue(where + ("link",), "must be a string (a URL)"))
        link = None
    return CategoryRule(
        id=rule_id,
        legend=legend,
        patterns=_patterns(doc, where, entry.get("patterns"), issues),
        priority=priority,
        record=_record_kinds(doc, where, entry.get("record"), issues),
        warnings=warnings,
        link=link,
        hosts=_globs(doc, where + ("hosts",), entry.get("hosts"), issues),
        targets=_globs(doc, where + ("targets",), entry.get("targets"), issues),
    )


def _patterns(doc: YamlDocument, where: tuple, raw: object,
              issues: IssueCollector) -> tuple[Any, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        issues.add(doc.issue(where + ("patterns",), "must be a list of regexes"))
        return ()
    compiled = []
    for number, text in enumerate(raw):
        if not isinstance(text, str) or not text:
            issues.add(doc.issue(where + ("patterns", number), "must be a non-empty string"))
            continue
        try:
            compiled.append(compile_pattern(text))
        except ValueError as err:
            issues.add(doc.issue(where + ("patterns", number), f"bad regex: {err}"))
    return tuple(compiled)


def _record_kinds(doc: YamlDocument, where: tuple, raw: object,
                  issues: IssueCollector) -> tuple[str, ...]:
    if raw is None:
        return ()
    kinds = [raw] if isinstance(raw, str) else raw
    if not isinstance(kinds, list) or any(k not in RECORD_KINDS for k in kinds):
        issues.add(doc.issue(where + ("record",), "must be a list of dib failure kinds: "
                             + ", ".join(RECORD_KINDS)))
        return ()
    return tuple(kinds)


def _globs(doc: YamlDocument, where: tuple, raw: object,
           issues: IssueCollector) -> tuple[str, ...]:
    if raw is None:
        return ("*",)
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and raw and all(isinstance(g, str) for g in raw):
        return tuple(raw)
    issues.add(doc.issue(where, "must be a glob or a list of globs"))
    return ("*",)
