"""Entries scored against logs (``dib-matrix catalogue check``).

A catalogue entry is only as good as the logs it leaves alone: every entry is run
over every line of every *successful* log it can find (the corpus's, and with an
output directory the successful cells of every run in it), and each hit is a false
positive, kept with its file and line. Over the *failure* logs the same pass says
which entries never match (stale, or named only by a record or a cell's hint) and
which always match together (one may be redundant).

Logs are untrusted: each is opened as a regular file only (a FIFO cannot hang the
check), streamed, every line cut to the classifier's bound, and at most
``LOG_LIMIT`` bytes of it read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from matrix.verdict.catalogue import ANY, Catalogue, CategoryRule
from matrix.verdict.classify import line_hits
from matrix.verdict.logscan import lines_of_stream
from reports.logs import log_path
from results.archive import Warn, runs_in, warn_on_stderr
from results.model import State
from results.safefile import MiB, UnsafeFile, open_regular

LOG_LIMIT = 256 * MiB  # bytes of one log judged: the rest is not read


@dataclass(frozen=True)
class Log:
    """A log to judge, with the scope of the cell it came from."""

    path: Path
    host: str = ANY
    row: str = ANY
    bundled: bool = False  # from the corpus shipped with the tool


@dataclass(frozen=True)
class FalsePositive:
    log: Log
    line: int
    rule_id: str
    text: str


@dataclass(frozen=True)
class FailureStats:
    logs: int
    never_matched: tuple[str, ...]  # entries with patterns that matched no failure log
    record_only: tuple[str, ...]  # entries without patterns (a record or a hint names them)
    together: tuple[tuple[tuple[str, ...], int], ...]  # entries always matching together


def corpus_logs(corpus: Path | None, kind: str) -> list[Log]:
    """The corpus's ``success`` or ``failures`` logs (none when there is no corpus,
    as in an installed wheel)."""
    if corpus is None or not (corpus / kind).is_dir():
        return []
    return [Log(path, bundled=True) for path in sorted((corpus / kind).rglob("*.log"))]


def archive_logs(out_dir: Path, states: Iterable[State],
                 warn: Warn = warn_on_stderr) -> list[Log]:
    """The logs of the cells in ``states`` of every readable run under ``out_dir``; a log
    that is missing or resolves outside its run (a symlink planted there) is left out."""
    wanted = set(states)
    found = []
    for stored in runs_in(out_dir, warn):
        for cell in stored.results.cells:
            if cell.state not in wanted or not cell.log:
                continue
            path = log_path(stored.run_dir, cell)
            if path is None:
                warn(f"skipped the log of {cell.host}/{cell.row} in {stored.run_dir}: "
                     "missing, or not a file inside the run")
                continue
            found.append(Log(path, cell.host, cell.row))
    return found


def read_lines(log: Log, warn: Warn = warn_on_stderr) -> Iterator[str]:
    """The lines of ``log`` as the classifier sees them; a log that cannot be read is
    warned about and yields nothing."""
    try:
        stream = open_regular(log.path)
    except (UnsafeFile, OSError) as err:
        warn(f"skipped log {log.path}: {err.strerror or err}")
        return
    with stream:
        yield from lines_of_stream(_Bounded(stream, LOG_LIMIT))  # type: ignore[arg-type]


class _Bounded:
    """A binary stream that ends after ``limit`` bytes."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream = stream
        self.left = limit

    def read(self, size: int) -> bytes:
        data = self.stream.read(max(0, min(size, self.left)))
        self.left -= len(data)
        return data


def false_positives(catalogue: Catalogue, logs: Sequence[Log],
                    warn: Warn = warn_on_stderr) -> list[FalsePositive]:
    """Every line of a successful log that an entry in scope of its cell matches."""
    found = []
    for log in logs:
        rules = catalogue.scoped(log.host, log.row)
        for number, text, matched in line_hits(read_lines(log, warn), rules):
            found += [FalsePositive(log, number, rule.id, text) for rule in matched]
    return found


def failure_stats(catalogue: Catalogue, logs: Sequence[Log],
                  warn: Warn = warn_on_stderr) -> FailureStats:
    """Which entries the failure ``logs`` never match, and which always match together
    (in two logs or more: one shared log is a coincidence)."""
    matched_in: dict[str, set[int]] = defaultdict(set)
    for index, log in enumerate(logs):
        rules = catalogue.scoped(log.host, log.row)
        for _, _, matched in line_hits(read_lines(log, warn), rules):
            for rule in matched:
                matched_in[rule.id].add(index)
    with_patterns = [r for r in catalogue.rules if r.patterns]
    never = tuple(r.id for r in with_patterns if not matched_in.get(r.id))
    groups: dict[frozenset[int], list[str]] = defaultdict(list)
    for rule in with_patterns:
        where = frozenset(matched_in.get(rule.id, ()))
        if len(where) >= 2:
            groups[where].append(rule.id)
    together = tuple(sorted((tuple(ids), len(where)) for where, ids in groups.items()
                            if len(ids) >= 2))
    record_only = tuple(r.id for r in catalogue.rules if not r.patterns)
    return FailureStats(len(logs), never, record_only, together)


def same_entry(rule: CategoryRule, other: CategoryRule | None) -> bool:
    """Whether two entries say the same (a user's file may replace a bundled entry)."""
    if other is None:
        return False

    def said(entry: CategoryRule) -> tuple[object, ...]:
        return (entry.id, entry.legend, entry.priority, entry.record, entry.warnings,
                entry.hosts, entry.targets, tuple(p.pattern for p in entry.patterns))

    return said(rule) == said(other)
