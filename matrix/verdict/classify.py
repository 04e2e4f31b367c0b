"""The verdict stage: the one place that names the cause of a failed or skipped cell.

Every cell kind (hostgen, check, build, boot, preflight, skipped) hands over the
same inputs (:class:`Evidence`): the lines it saw itself, its log, dib's own
failure record when dib wrote one, the free space of its filesystems, and
optionally a *hint*, a catalogue id the cell knows applies (a timeout, an engine
error, the hostgen step that failed). Causes come from the catalogue alone
(:mod:`matrix.verdict.catalogue`): a hint is just one more match of that entry.

Every entry that matches is a label; the one with the highest priority names the
legend footnote, and the line it matched is the evidence. On equal priority the
cell's own lines beat dib's record, and the record beats the log. A failure
nothing matches is ``uncategorized`` with the log's tail as evidence.

Cost is bounded whatever the log holds: each line is cut to its first few KiB
(:mod:`matrix.verdict.logscan`), all patterns in scope are tried in one RE2 pass
(``re2.Set``) and only the entries that hit are matched again for their groups.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2

from dib import failure
from matrix.verdict.catalogue import OPTIONAL_SEGMENT, UNCATEGORIZED, Catalogue, CategoryRule
from matrix.verdict.logscan import EVIDENCE_LIMIT, evidence, lines_of_file, lines_of_text
from matrix.verdict.runparts import RunPartsTrail
from results.model import Category

TAIL_LINES = 15
# Below this many bytes free, a filesystem the cell wrote to is full, whatever the
# log says (tools that hide ENOSPC say "write error" or nothing at all).
DISK_FULL_BYTES = 1 << 20
ATTEMPT_MARKER = "# dib-matrix: attempt "
RECORD_PREFIX = failure.LOG_PREFIX
# dib's log prefix ("2026-11-29 08:31:10.123 | root.d/08-debootstrap | debootstrap | ":
# the time, the hook, the command it ran), so patterns can anchor on the tool's own line.
_DIB_PREFIX = re.compile(
    r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)? \| (?:[^|\s]{1,120} \| ){0,2}")
# Lines that only inform: debootstrap's and apt's I:/N:, apt's download progress.
_INFORMATIONAL = re.compile(r"^(?:I|N): |^(?:Get|Hit|Ign):\d* ")
_WARNING = re.compile(r"^W: ")
# Sources of a line, best first: the cell's own lines, dib's record, the log.
CELL, RECORD, LOG = 0, 1, 2


@dataclass(frozen=True)
class Evidence:
    """What a finished cell hands to the verdict stage."""

    host: str
    row: str
    lines: tuple[str, ...] = ()  # lines the cell itself saw (engine message, preflight, ...)
    log: Path | None = None
    record: Mapping[str, Any] | None = None  # dib's failure record (see dib.failure)
    hint: str | None = None  # a catalogue id the cell knows applies
    free_bytes: Mapping[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    category: Category
    evidence: str


@dataclass(frozen=True)
class _Hit:
    rule: CategoryRule
    line: str
    groups: Mapping[str, Any]
    source: int


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


_FIELD = re.compile(r"\{(\w+)\}")


def fill_legend(legend: str, groups: Mapping[str, Any]) -> str:
    """The legend with ``{name}`` filled in; a ``[[...]]`` segment is left out when a
    field inside it has no value (``[[element {element}: ]]`` for an unknown element)."""
    values = _Defaulting({k: str(v) for k, v in groups.items() if v is not None})

    def optional(match: re.Match[str]) -> str:
        known = all(name in values for name in _FIELD.findall(match.group(1)))
        return match.group(1) if known else ""

    try:
        return string.Formatter().vformat(OPTIONAL_SEGMENT.sub(optional, legend), (), values)
    except (ValueError, IndexError, AttributeError, KeyError):
        return legend  # a legend with stray braces is shown as written


def message_of(line: str) -> str:
    """The tool's own text of a log line: dib's timestamp and hook tag removed."""
    return _DIB_PREFIX.sub("", line.strip(), count=1).strip()


class _Matcher:
    """All patterns of the rules in scope, tried in one RE2 pass per line."""

    def __init__(self, rules: Sequence[CategoryRule]):
        self.owners: list[tuple[CategoryRule, Any]] = []
        self.set = re2.Set.SearchSet()
        for rule in rules:
            for pattern in rule.patterns:
                self.set.Add(pattern.pattern)
                self.owners.append((rule, pattern))
        if self.owners:
            self.set.Compile()

    def hits(self, line: str, source: int) -> Iterator[_Hit]:
        if not self.owners or not line:
            return
        text = message_of(line)
        if not text or _INFORMATIONAL.match(text) or text.startswith(RECORD_PREFIX):
            return
        warning = bool(_WARNING.match(text))
        seen: set[str] = set()
        for index in sorted(self.set.Match(text) or ()):
            rule, pattern = self.owners[index]
            if rule.id in seen or (warning and not rule.warnings):
                continue
            match = pattern.search(text)
            if match is not None and not any(benign.search(text) for benign in rule.ignore):
                seen.add(rule.id)
                yield _Hit(rule, text, match.groupdict(), source)


@functools.lru_cache(maxsize=16)
def _matcher_for(rules: tuple[CategoryRule, ...]) -> _Matcher:
    """One matcher per set of rules in scope: RE2 builds a set's automaton while it
    matches, so a run's cells (and a check's thousands of lines) share the built one."""
    return _Matcher(rules)


def classify(evidence_in: Evidence, catalogue: Catalogue) -> Verdict:
    """The verdict for one failed (or skipped) cell."""
    rules = catalogue.scoped(evidence_in.host, evidence_in.row)
    order = {rule.id: index for index, rule in enumerate(rules)}
    matcher = _matcher_for(rules)
    best: dict[str, _Hit] = {}

    def keep(hit: _Hit) -> None:
        old = best.get(hit.rule.id)
        if old is None or hit.source < old.source or (
                hit.source == old.source and _filled(hit) >= _filled(old)):
            best[hit.rule.id] = hit

    own_lines = [*evidence_in.lines, *_disk_full_lines(evidence_in.free_bytes)]
    if evidence_in.hint:
        rule = next((r for r in rules if r.id == evidence_in.hint), None)
        if rule is not None:
            keep(_Hit(rule, own_lines[0] if own_lines else rule.id, {}, CELL))
    for line in lines_of_text(own_lines):
        for hit in matcher.hits(line, CELL):
            keep(hit)
    record = evidence_in.record
    tail: list[str] = []
    log_hits: dict[str, _Hit] = {}
    if evidence_in.log is not None and evidence_in.log.is_file():
        trail = RunPartsTrail()
        for line in lines_of_file(evidence_in.log):
            if line.startswith(ATTEMPT_MARKER):  # judge the last attempt only
                log_hits.clear()
                tail.clear()
                trail = RunPartsTrail()
                continue
            message = message_of(line)
            if record is None and message.startswith(RECORD_PREFIX):
                record = _parse_record(message)
            trail.feed(message)
            if line.strip():
                tail.append(line)
                del tail[:-TAIL_LINES]
            for hit in matcher.hits(line, LOG):
                # The last occurrence is the freshest, unless it fills fewer of the legend's
                # fields (dpkg names the package first, then "leaving unconfigured").
                old = log_hits.get(hit.rule.id)
                if old is None or _filled(hit) >= _filled(old):
                    log_hits[hit.rule.id] = hit
        record = record or trail.record()
    if record is not None:
        for hit in _record_hits(record, rules, matcher):
            keep(hit)
    for hit in log_hits.values():
        keep(hit)
    if not best:
        fallback = tail or [line for line in own_lines if line.strip()]
        text = "\n".join(fallback)[-EVIDENCE_LIMIT:]
        return Verdict(Category(UNCATEGORIZED, UNCATEGORIZED), text)
    ranked = sorted(best.values(),
                    key=lambda h: (-h.rule.priority, h.source, order[h.rule.id]))
    top = ranked[0]
    legend = fill_legend(top.rule.legend, top.groups)
    category = Category(top.rule.id, evidence(legend, 300), top.rule.link,
                        labels=[h.rule.id for h in ranked], ticket=top.rule.ticket,
                        infrastructure=top.rule.infrastructure)
    return Verdict(category, evidence(top.line))


def _filled(hit: _Hit) -> int:
    return sum(value is not None for value in hit.groups.values())


def _record_hits(record: Mapping[str, Any], rules: Sequence[CategoryRule],
                 matcher: _Matcher) -> Iterator[_Hit]:
    """Entries named by dib's record: by its kind, and by patterns over its own lines
    (the error line, dib's message, dib's reason); a legend may use the record's fields."""
    fields = {k: v for k, v in record.items() if isinstance(v, (str, int))}
    line = str(record.get("error") or record.get("message") or "")
    kind = record.get("kind")
    for rule in rules:
        if kind in rule.record:
            yield _Hit(rule, line or rule.id, fields, RECORD)
    for text in (record.get("error"), record.get("message"), record.get("reason")):
        if isinstance(text, str):
            for raw in lines_of_text([text]):
                for hit in matcher.hits(raw, RECORD):
                    found = {k: v for k, v in hit.groups.items() if v is not None}
                    yield _Hit(hit.rule, hit.line, {**fields, **found}, RECORD)


def _parse_record(text: str) -> Mapping[str, Any] | None:
    """dib's record from its log line; None when the line is not a readable record."""
    try:
        return failure.FailureRecord.from_json(text).bounded().to_dict()
    except (ValueError, TypeError):
        return None


def _disk_full_lines(free: Mapping[str, int | None]) -> list[str]:
    return [f"disk full: the {name} filesystem had {value} bytes free when the cell failed"
            for name, value in sorted(free.items())
            if value is not None and value < DISK_FULL_BYTES]


def classify_lines(lines: Iterable[str], host: str, row: str,
                   catalogue: Catalogue) -> Verdict:
    """Classify lines already in memory (tests, and a cell with no log)."""
    return classify(Evidence(host, row, tuple(lines)), catalogue)


def line_hits(lines: Iterable[str], rules: Sequence[CategoryRule]
              ) -> Iterator[tuple[int, str, tuple[CategoryRule, ...]]]:
    """Each line (numbered from 1) that some of ``rules`` match, with those rules best
    first, judged as :func:`classify` judges a log line; the patterns are compiled once,
    for checking thousands of lines (catalogue coverage, false positives)."""
    matcher = _matcher_for(tuple(rules))
    order = {rule.id: index for index, rule in enumerate(rules)}
    for number, line in enumerate(lines, 1):
        matched = [hit.rule for hit in matcher.hits(line, LOG)]
        if matched:
            matched.sort(key=lambda rule: (-rule.priority, order[rule.id]))
            yield number, message_of(line), tuple(matched)
