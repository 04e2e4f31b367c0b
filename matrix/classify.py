"""Name the cause of a failure from its log, with the category catalogue (YAML).

Matching is multi-label: every category whose pattern matches a line is kept as a
label; the one with the highest priority names the legend footnote, and the line
it matched is kept as evidence. A failure nothing matches is ``uncategorized``
with the log's tail as evidence.
"""

from __future__ import annotations

import fnmatch
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matrix.diagnostics import ConfigError, IssueCollector
from matrix.results import Category
from matrix.yamlload import load_yaml

BUNDLED_CATALOGUE = Path(__file__).resolve().parent / "categories" / "default.yaml"
UNCATEGORIZED = "uncategorized"
TAIL_LINES = 15
RULE_KEYS = {"id", "legend", "priority", "patterns", "link", "hosts", "targets"}
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class CategoryRule:
    id: str
    legend: str
    patterns: tuple[re.Pattern[str], ...]
    priority: int = 50
    link: str | None = None
    hosts: tuple[str, ...] = ("*",)
    targets: tuple[str, ...] = ("*",)

    def in_scope(self, host: str, row: str) -> bool:
        return any(fnmatch.fnmatchcase(host, g) for g in self.hosts) and any(
            fnmatch.fnmatchcase(row, g) for g in self.targets
        )

    def search(self, line: str) -> re.Match[str] | None:
        for pattern in self.patterns:
            match = pattern.search(line)
            if match:
                return match
        return None


@dataclass(frozen=True)
class Verdict:
    category: Category
    evidence: str


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill_legend(legend: str, groups: dict[str, str | None]) -> str:
    values = _Defaulting({k: v for k, v in groups.items() if v is not None})
    return string.Formatter().vformat(legend, (), values)


def _globs(value: object) -> tuple[str, ...]:
    if value is None:
        return ("*",)
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)  # type: ignore[union-attr]


def load_catalogue(paths: Sequence[Path] = ()) -> list[CategoryRule]:
    """The bundled catalogue, then each user file; a later rule with the same id replaces."""
    issues = IssueCollector()
    rules: dict[str, CategoryRule] = {}
    for path in (BUNDLED_CATALOGUE, *paths):
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
            where = (index,)
            if not isinstance(entry, dict):
                issues.add(doc.issue(where, "each category must be a mapping"))
                continue
            for key in set(entry) - RULE_KEYS:
                issues.add(doc.issue(where + (key,), "unknown key; known: "
                                     + ", ".join(sorted(RULE_KEYS))))
            rule_id = entry.get("id")
            if not isinstance(rule_id, str) or not ID_RE.match(rule_id):
                issues.add(doc.issue(where + ("id",), "required: lower-case words and dashes"))
                continue
            patterns = []
            raw_patterns = entry.get("patterns")
            if not isinstance(raw_patterns, list) or not raw_patterns:
                issues.add(doc.issue(where + ("patterns",), "required: a list of regexes"))
                raw_patterns = []
            for number, text in enumerate(raw_patterns):
                try:
                    patterns.append(re.compile(str(text)))
                except re.error as err:
                    issues.add(doc.issue(where + ("patterns", number), f"bad regex: {err}"))
            priority = entry.get("priority", 50)
            if not isinstance(priority, int) or isinstance(priority, bool):
                issues.add(doc.issue(where + ("priority",), "must be a whole number"))
                priority = 50
            rules[rule_id] = CategoryRule(
                id=rule_id,
                legend=str(entry.get("legend", rule_id)),
                patterns=tuple(patterns),
                priority=priority,
                link=entry.get("link"),
                hosts=_globs(entry.get("hosts")),
                targets=_globs(entry.get("targets")),
            )
    issues.check()
    return list(rules.values())


def classify(lines: Iterable[str], host: str, row: str,
             rules: Sequence[CategoryRule]) -> Verdict:
    """The verdict for a failed cell's log lines."""
    scoped = [r for r in rules if r.in_scope(host, row)]
    last_match: dict[str, tuple[str, re.Match[str]]] = {}
    tail: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if line.strip():
            tail.append(line)
            del tail[:-TAIL_LINES]
        for rule in scoped:
            match = rule.search(line)
            if match:
                last_match[rule.id] = (line, match)
    if not last_match:
        return Verdict(Category(UNCATEGORIZED, UNCATEGORIZED), "\n".join(tail))
    order = {r.id: i for i, r in enumerate(scoped)}
    matched = sorted(last_match, key=lambda rid: (-_rule(scoped, rid).priority, order[rid]))
    best = _rule(scoped, matched[0])
    line, match = last_match[best.id]
    legend = fill_legend(best.legend, match.groupdict())
    return Verdict(Category(best.id, legend, best.link, labels=matched), line.strip())


def _rule(rules: Sequence[CategoryRule], rule_id: str) -> CategoryRule:
    return next(r for r in rules if r.id == rule_id)


def classify_file(path: Path, host: str, row: str, rules: Sequence[CategoryRule]) -> Verdict:
    with open(path, encoding="utf-8", errors="replace") as log:
        return classify(log, host, row, rules)
