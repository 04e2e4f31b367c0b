"""Every catalogue entry's occurrences over the runs of an output directory.

::

    <out>/.dib-matrix/occurrences.jsonl    one JSON object a line, appended at each run's end
    <out>/.dib-matrix/occurrences.lock     held (flock) by whoever appends or rewrites

At the end of a run, each cell the verdict stage gave a named cause (a failure, an
allowed failure, a skip for a missing dependency) adds one line: the run, the cell,
the cause's id and every label that matched (multi-label), the evidence line and
the time. Reports read it to say how often a known issue was seen and when last
(``seen 4 times since 2025-05-02, last on RUN (cell)``); ``catalogue stale`` lists
the entries nothing matched for weeks.

Two runs may end at once on one output directory: a writer holds the lock, and each
batch is one ``O_APPEND`` write, so lines never interleave. The file stays bounded:
a line has at most ``MAX_LINE`` bytes, and an append rewrites the file when its first
(oldest) line is older than ``KEEP_DAYS`` or the file is past ``REWRITE_AT`` bytes,
keeping the lines of the last ``KEEP_DAYS`` up to the newest ``KEEP_BYTES``; other
appends cost their own lines only. It is read
as untrusted input (an output directory travels as a CI artifact): a regular file
only, never through a symlink, at most its newest ``MAX_READ`` bytes, each bad line
skipped and counted in one warning. A cell recorded twice (a resumed run) counts once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from results.locks import take_exclusive
from results.model import RunResults, State
from results.names import is_name, is_row, is_run_id
from results.paths import UnsafePath, inside
from results.safefile import MiB, open_regular
from results.store import write_atomically

LOG = logging.getLogger("dib-matrix")
RECORD_DIR = ".dib-matrix"
RECORD_FILE = "occurrences.jsonl"
LOCK_FILE = "occurrences.lock"
FORMAT = 1
MAX_LINE = 8192  # bytes of one line, its newline included
MAX_EVIDENCE = 500  # characters of the evidence line kept
MAX_LABELS = 32  # labels kept per cell (a schema-valid cell has at most 64)
MAX_STAMP = 40  # characters of an ISO 8601 time
MAX_READ = 64 * MiB  # the newest part of a file larger than this is read
REWRITE_AT = 48 * MiB  # a file past this is rewritten at the next append ...
KEEP_BYTES = 32 * MiB  # ... keeping its newest lines up to this (~100,000 cells)
KEEP_DAYS = 400  # a year of nightlies and then some: "seen N times since" stays honest
LOCK_TIMEOUT = 30.0  # seconds to wait for another run's append or rewrite
CLOCK_SKEW = dt.timedelta(days=1)  # a line dated further ahead is not ours: a rewrite drops it
UNCATEGORIZED = "uncategorized"
# States whose cell has a cause the verdict stage named (a skip: missing dependency).
NAMED_STATES = frozenset({State.FAILED, State.ALLOWED_FAILURE, State.TIMEOUT, State.ERROR,
                          State.SKIPPED})

Warn = Callable[[str], None]


class OccurrencesError(OSError):
    """The record cannot be written: its place is unsafe, or its lock is not had."""


@dataclass(frozen=True)
class Occurrence:
    """One cell of one run in which a catalogue entry matched."""

    run: str
    host: str
    row: str
    category: str  # the cause named (the highest-priority entry that matched)
    labels: tuple[str, ...]  # every entry that matched
    evidence: str  # the matched line, cut to MAX_EVIDENCE (untrusted when read back)
    at: dt.datetime  # when it was recorded, UTC

    @property
    def cell(self) -> str:
        return f"{self.host}.{self.row}"

    def names(self, entry_id: str) -> bool:
        """Whether this occurrence is one of entry ``entry_id`` (the cause or a label)."""
        return entry_id == self.category or entry_id in self.labels

    def to_json(self) -> dict[str, Any]:
        return {"v": FORMAT, "run": self.run, "host": self.host, "row": self.row,
                "category": self.category, "labels": list(self.labels),
                "evidence": self.evidence, "at": self.at.isoformat(timespec="seconds")}

    def to_line(self) -> bytes:
        """One line of at most MAX_LINE bytes (ASCII: json escapes the rest)."""
        document = self.to_json()
        line = json.dumps(document, sort_keys=True) + "\n"
        while len(line) > MAX_LINE and document["evidence"]:  # escapes can grow six-fold
            document["evidence"] = document["evidence"][: len(document["evidence"]) // 2]
            line = json.dumps(document, sort_keys=True) + "\n"
        return line.encode("ascii")

    @classmethod
    def from_json(cls, data: object) -> Occurrence:
        """An occurrence from one decoded line; ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if data.get("v") != FORMAT:
            raise ValueError(f"not format {FORMAT}")
        for key, valid in (("run", is_run_id), ("host", is_name), ("row", is_row),
                           ("category", is_name)):
            if not valid(data.get(key)):
                raise ValueError(f"'{key}' is not a {key} name")
        labels = data.get("labels")
        if not isinstance(labels, list) or len(labels) > MAX_LABELS or not all(
                is_name(label) for label in labels):
            raise ValueError(f"'labels' is not a list of at most {MAX_LABELS} ids")
        evidence = data.get("evidence")
        if not isinstance(evidence, str):
            raise ValueError("'evidence' is not text")
        return cls(data["run"], data["host"], data["row"], data["category"], tuple(labels),
                   evidence[:MAX_EVIDENCE], parse_stamp(data.get("at")))


def parse_stamp(value: object) -> dt.datetime:
    """An ISO 8601 time with its offset, in UTC; ValueError otherwise."""
    if not isinstance(value, str) or len(value) > MAX_STAMP:
        raise ValueError("'at' is not an ISO 8601 time")
    stamp = dt.datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        raise ValueError("'at' has no UTC offset")
    try:
        return stamp.astimezone(dt.timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first UTC time
        raise ValueError("'at' is out of range") from None


def occurrences_of(results: RunResults, at: dt.datetime) -> list[Occurrence]:
    """The occurrences a run adds: each cell with a named cause, in the run's cell order.
    A reused cell is left out: its verdict was seen by the run it came from."""
    found = []
    for cell in results.cells:
        category = cell.category
        if (cell.state not in NAMED_STATES or cell.reused or category is None
                or category.id == UNCATEGORIZED or not is_name(category.id)):
            continue
        labels = tuple(label for label in category.labels if is_name(label))[:MAX_LABELS]
        found.append(Occurrence(results.run_id, cell.host, cell.row, category.id, labels,
                                (cell.evidence or "")[:MAX_EVIDENCE],
                                at.astimezone(dt.timezone.utc)))
    return found


# ---------------------------------------------------------------- where it lives


def record_path(out_dir: Path) -> Path:
    """``<out>/.dib-matrix/occurrences.jsonl`` (OccurrencesError when the directory
    leads out of ``out_dir``)."""
    return _inside(out_dir, RECORD_FILE)


def record_location(out_dir: Path) -> Path:
    """Where the record is, for a message (not checked: :func:`record_path` is)."""
    return out_dir / RECORD_DIR / RECORD_FILE


def _inside(out_dir: Path, name: str) -> Path:
    try:
        return inside(out_dir, RECORD_DIR, name)
    except UnsafePath as err:
        raise OccurrencesError(str(err)) from None


def _open_regular_for(path: Path, flags: int) -> int:
    """A descriptor on ``path``, never through a symlink, refused unless a regular file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OccurrencesError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _locked(out_dir: Path, timeout: float) -> Iterator[None]:
    """The record's lock, held exclusively; OccurrencesError after ``timeout`` seconds."""
    lock = _inside(out_dir, LOCK_FILE)
    lock.parent.mkdir(exist_ok=True)
    fd = _open_regular_for(lock, os.O_RDWR | os.O_CREAT)
    try:
        if not take_exclusive(fd, timeout):
            raise OccurrencesError(f"{lock}: held by another process for more than "
                                   f"{timeout:.0f} s")
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# ---------------------------------------------------------------- writing


def record_run(out_dir: Path, results: RunResults, now: dt.datetime | None = None,
               warn: Warn = LOG.warning, keep_days: int = KEEP_DAYS,
               timeout: float = LOCK_TIMEOUT) -> int:
    """Append the run's occurrences and drop those older than ``keep_days``; how many
    were appended. A record that cannot be written costs one warning, never the run."""
    now = now or dt.datetime.now(dt.timezone.utc)
    found = occurrences_of(results, now)
    if not found:  # a clean run leaves the output directory as it was
        return 0
    try:
        with _locked(out_dir, timeout):
            _append_unlocked(out_dir, found)
            if _rewrite_due(record_path(out_dir), now, keep_days):
                _prune_unlocked(out_dir, now, keep_days, warn)
    except OSError as err:
        warn(f"known-issue occurrences not recorded under {out_dir}: {err}")
        return 0
    return len(found)


def append(out_dir: Path, occurrences: Iterable[Occurrence],
           timeout: float = LOCK_TIMEOUT) -> None:
    """Add ``occurrences`` at the end of the record, under its lock."""
    with _locked(out_dir, timeout):
        _append_unlocked(out_dir, occurrences)


def _append_unlocked(out_dir: Path, occurrences: Iterable[Occurrence]) -> None:
    """The batch in one ``O_APPEND`` write (looped only if the kernel took part of it)."""
    data = b"".join(o.to_line() for o in occurrences)
    if not data:
        return
    fd = _open_regular_for(record_path(out_dir), os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a writer killed mid-line
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def prune(out_dir: Path, now: dt.datetime, keep_days: int = KEEP_DAYS,
          warn: Warn = LOG.warning, timeout: float = LOCK_TIMEOUT) -> int:
    """Rewrite the record without what is older than ``keep_days``, dated ahead of
    ``now``, unreadable, or beyond the newest KEEP_BYTES; how many lines went."""
    with _locked(out_dir, timeout):
        return _prune_unlocked(out_dir, now, keep_days, warn)


def _in_window(at: dt.datetime, now: dt.datetime, keep_days: int) -> bool:
    return now - dt.timedelta(days=keep_days) <= at <= now + CLOCK_SKEW


def _rewrite_due(path: Path, now: dt.datetime, keep_days: int) -> bool:
    """Whether the record is past REWRITE_AT, or its first line (the oldest: lines are
    appended in time order) is unreadable or out of the window; reads that line only."""
    with open_regular(path) as stream:
        if os.fstat(stream.fileno()).st_size > REWRITE_AT:
            return True
        first = stream.readline(MAX_LINE + 1)
    try:
        return bool(first) and not _in_window(
            Occurrence.from_json(_decode(first)).at, now, keep_days)
    except (ValueError, RecursionError):
        return True


def _prune_unlocked(out_dir: Path, now: dt.datetime, keep_days: int, warn: Warn) -> int:
    path = record_path(out_dir)
    if not os.path.lexists(path):
        return 0
    lines, bad = _read_lines(path, warn)
    kept: list[bytes] = []
    size = 0
    for occurrence in reversed(lines):  # the newest first, up to KEEP_BYTES
        line = occurrence.to_line()
        if not _in_window(occurrence.at, now, keep_days):
            continue
        size += len(line)
        if size > KEEP_BYTES:
            break
        kept.append(line)
    dropped = len(lines) - len(kept) + bad
    if dropped:
        write_atomically(path, b"".join(reversed(kept)).decode("ascii"))
    return dropped


# ---------------------------------------------------------------- reading


def read(out_dir: Path, warn: Warn = LOG.warning) -> list[Occurrence]:
    """The recorded occurrences, oldest first, each (run, cell) once (the last line
    wins); none when there is no record. A record that cannot be read (a symlink, a
    FIFO, no permission) costs one warning."""
    try:
        path = record_path(out_dir)
        if not os.path.lexists(path):
            return []
        lines, _ = _read_lines(path, warn)
    except OSError as err:
        warn(f"known-issue occurrences not read: {err}")
        return []
    latest: dict[tuple[str, str, str], Occurrence] = {}
    for occurrence in lines:
        key = (occurrence.run, occurrence.host, occurrence.row)
        latest.pop(key, None)
        latest[key] = occurrence
    return list(latest.values())


def _read_lines(path: Path, warn: Warn) -> tuple[list[Occurrence], int]:
    """Every good line of the record and the number of bad ones (warned about once)."""
    if path.is_symlink():
        raise OccurrencesError(f"{path}: a symlink, not the record itself")
    found: list[Occurrence] = []
    bad: list[tuple[int, str]] = []
    with open_regular(path) as stream:
        for number, raw in _lines(stream):
            try:
                if raw is None:
                    raise ValueError(f"longer than {MAX_LINE} bytes")
                found.append(Occurrence.from_json(_decode(raw)))
            except (ValueError, RecursionError) as err:
                bad.append((number, str(err)[:120]))
    if bad:
        warn(f"{path}: skipped {len(bad)} unreadable line{'s' if len(bad) > 1 else ''} "
             f"(first: line {bad[0][0]}: {bad[0][1]})")
    return found, len(bad)


def _lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(number, line) of the newest MAX_READ bytes, None for a line longer than
    MAX_LINE (skipped as it is read, so memory stays bounded)."""
    size = os.fstat(stream.fileno()).st_size
    if size > MAX_READ:
        stream.seek(size - MAX_READ)
        _skip_rest(stream, stream.readline(MAX_LINE + 1))  # a piece of a line
    number = 0
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE:
            _skip_rest(stream, line)
            yield number, None
            continue
        yield number, line


def _skip_rest(stream: BinaryIO, line: bytes) -> None:
    """Read on to the end of the line ``line`` began."""
    while line and not line.endswith(b"\n"):
        line = stream.readline(MAX_LINE + 1)


def _decode(raw: bytes) -> object:
    if not raw.endswith(b"\n"):
        raise ValueError("unfinished line")
    return json.loads(raw.decode("utf-8"), parse_constant=_no_constant,
                      object_pairs_hook=_unique_keys)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key given twice")
    return found


# ---------------------------------------------------------------- questions


@dataclass(frozen=True)
class Seen:
    """How often an entry was seen: ``count`` cells, the first at ``first``, the last."""

    count: int
    first: dt.datetime
    last: Occurrence


def seen(occurrences: Iterable[Occurrence], entry_id: str) -> Seen | None:
    """Entry ``entry_id``'s occurrences (as cause or label), or None when it has none."""
    mine = [o for o in occurrences if o.names(entry_id)]
    if not mine:
        return None
    last = max(mine, key=lambda o: o.at)
    return Seen(len(mine), min(o.at for o in mine), last)


def last_seen(occurrences: Iterable[Occurrence]) -> dict[str, dt.datetime]:
    """Each entry id (cause or label) -> when it was last seen."""
    found: dict[str, dt.datetime] = {}
    for occurrence in occurrences:
        for entry_id in {occurrence.category, *occurrence.labels}:
            if entry_id not in found or occurrence.at > found[entry_id]:
                found[entry_id] = occurrence.at
    return found
