"""The few lines of a failed log most unlike the successful logs of the same row.

A failure whose cause the catalogue cannot name precisely (``uncategorized``, or a
bucket such as "hook failed" or "package install failed") had only its log tail as
evidence. This module picks the lines a reader should look at first, the way
logreduce and LogJuicer do: lines a successful build of the same row never printed.

1. Every line is *normalised*: terminal escapes and dib's ``time | hook |`` prefix
   removed, then what changes from run to run (timestamps, UUIDs, hashes, IPs,
   temporary names, numbers, versions, sizes, progress bars) replaced by
   placeholders, so that ``Get:12 http://10.0.0.1/debian ... [6107 kB]`` on one host
   equals its twin on another.
2. A :class:`Baseline` holds what the successful logs said: their normalised lines,
   their words and their word pairs.
3. Each line of the failed log scores by *novelty* (never seen as a whole line;
   share of its words and word pairs never seen), by *error words* (``E:``,
   ``failed``, ``denied``, ``No space``, a Python traceback's exception line, a
   non-zero exit status) and by its *distance from the end* of the log. A line that
   repeats in the failed log (progress, retries) is one candidate, shown at its first
   occurrence, placed by its last, and weighs less the more it repeats.
4. The ``k`` best lines that say something (novel or error-shaped) come back in log
   order with their 1-based line numbers; when no line does, the log's last lines.

Without any successful log, novelty is unknown and the score is error words and
position alone.

Cost is bounded whatever the logs hold: the failed log is read streamed, at most its
last ``LOG_WINDOW`` bytes (line numbers still count from its start), each line cut to
``logscan.LINE_LIMIT`` bytes; ``CANDIDATES`` lines are kept besides the last
``TAIL_LINES``; successful logs are read up to ``BASELINE_BYTES`` in all and the
baseline's sets are capped.
"""

from __future__ import annotations

import collections
import heapq
import math
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from matrix.verdict.catalogue import UNCATEGORIZED
from matrix.verdict.classify import ATTEMPT_MARKER, message_of
from matrix.verdict.logscan import LINE_LIMIT, lines_of_stream
from reports.sanitize import clean_line
from results.archive import RunDir
from results.model import Cell, RunResults, State
from results.safefile import MiB, UnsafeFile, count_newlines, iter_lines, open_regular

EXCERPT_LINES = 5  # lines an excerpt shows
TEXT_LIMIT = 300  # characters of one excerpt line
LOG_WINDOW = 8 * MiB  # bytes read of a failed log, from its end (~80,000 lines)
MAX_LOG_BYTES = 1024 * MiB  # a failed log beyond this gets no excerpt (its lines are
# counted before the window, to number them: a second per GiB)
BASELINE_BYTES = 16 * MiB  # bytes read of the successful logs of a row, in all
BASELINE_LOG_BYTES = 4 * MiB  # ... and of any one of them
BASELINE_ENTRIES = 400_000  # cap of each of the baseline's sets
CANDIDATES = 256  # best-scoring lines kept while a failed log streams by
TAIL_LINES = 64  # the log's last lines, kept whatever their score
REPEATS_TRACKED = 100_000  # distinct lines whose repetitions are counted
RUN_BUDGET = 1024 * MiB  # bytes of logs a run's excerpts read in all (a few minutes)

# Causes that say where something failed but not why, whatever the catalogue flags:
# the run's own catch-alls (an engine or qemu error, a timeout of either kind, a boot
# that reset). The catalogue adds its ``generic: true`` entries (dib's per-phase
# buckets, hostgen's steps, a tool's catch-all): see ``Catalogue.generic_ids``. A named
# cause (no such script, package not found, out of disk space, ...) already has its line.
GENERIC_CAUSES = frozenset({
    UNCATEGORIZED, "engine-error", "qemu-error", "timeout", "boot-timeout", "vm-reset",
})

# ---- normalisation ---------------------------------------------------------
# What varies between two runs of the same build, in the words of a lower-cased line
# that hold a digit (one regex pass per such word, none for the others: logs are
# long). At each position the first shape that fits wins, so whole shapes
# (timestamps, UUIDs, addresses, hashes) come before the digits in them.
_SHAPES = (
    ("time", r"\b\d{4}-\d\d-\d\d(?:t\d\d:\d\d(?::\d\d)?(?:[.,]\d+)?(?:z|[+-]\d\d:?\d\d)?)?"
             r"|\b\d\d:\d\d:\d\d(?:[.,]\d+)?(?:z|[+-]\d\d:?\d\d)?\b"),
    ("uuid", r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),
    ("ip", r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\b(?:[0-9a-f]{1,4}:){3,7}[0-9a-f]{1,4}\b"),
    ("hex", r"\b(?:0x[0-9a-f]+|(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{6,})\b"),
    # mktemp's and mkdtemp's names: dib_build.o2xu4_02, corpus-dib-host-m3d7fois (the
    # look-aheads are bounded: a long word of them would make each position cost its rest)
    ("rand", r"(?<=[._-])(?=[a-z0-9_]{0,11}\d)(?=[a-z0-9_]{0,11}[a-z])[a-z0-9_]{6,12}\b"),
    # numbers with what versions and sizes put around them: 1:2.38.1-5+deb12u3, 6107kb
    ("number", r"\d+(?:[.:,~+]\d+)*"),
)
_VARIABLE = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _SHAPES))
_PLACEHOLDERS = {"time": "<time>", "uuid": "<uuid>", "ip": "<ip>", "hex": "<hex>",
                 "rand": "<rand>", "number": "0"}
_KERNEL_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")  # the kernel's [   5.126651]
# Sizes and rates, whatever the unit a tool picked for them: 6107 kB, 12.7 MB/s, 206 MiB
_SIZE = re.compile(r"\b\d+(?:[.,]\d+)? ?(?:[kmgtp]i?b|bytes?|b)(?:/s)?\b")
_TEMP_NAME = re.compile(r"(?<=/tmp/)[^/\s'\"]+")  # /tmp/<anything>, /var/tmp/<anything>
_RUN = re.compile(r"([^\w\s])\1{2,}")  # progress bars ([####.....]) and rules (-----)
_DIGIT = re.compile(r"\d")
_WORD = re.compile(r"[a-z][a-z_'-]*[a-z]|[a-z]|<\w+>")


def _placeholder(match: re.Match[str]) -> str:
    return _PLACEHOLDERS[match.lastgroup or "number"]


def message(line: str) -> str:
    """A log line as its tool printed it: escapes and dib's ``time | hook |`` prefix gone."""
    return message_of(clean_line(line))


def normalise(text: str) -> str:
    """``text`` (a :func:`message`) with what varies between runs replaced by placeholders."""
    text = _SIZE.sub("<size>", _KERNEL_TIME.sub("", text.lower(), count=1))
    if "/tmp/" in text:
        text = _TEMP_NAME.sub("<tmp>", text)
    return " ".join([_VARIABLE.sub(_placeholder, word) if _DIGIT.search(word) else word
                     for word in _RUN.sub(r"\1", text).split()])


def words(normalised: str) -> list[str]:
    return _WORD.findall(normalised)


# ---- error words -----------------------------------------------------------
# What a tool says when it fails, in tiers that add up (at most 1): a line that says
# *what* went wrong (denied, no space, not found) outweighs one that only says that
# something failed ("ERROR: tar failed with exit code 2", "exit status 1"). Looked up
# as words and word pairs of the normalised line: a set lookup per word, where a regex
# of alternatives costs every branch at every position of a long log.
_ERROR_SHAPE = re.compile(  # apt's E:, ERROR/FATAL, a Python exception line
    r"^(?:E: |ERROR\b|FATAL\b|fatal: |error: )|^[A-Za-z_][\w.]*(?:Error|Exception)\b(?::|$)")
_FAILING = frozenset({"error", "errors", "fatal", "panic", "alert", "fail", "failed",
                      "fails", "failure", "failures", "non-zero"})
_WHAT_FAILED = frozenset({
    "denied", "cannot", "can't", "couldn't", "unable", "refused", "unreachable",
    "mismatch", "invalid", "killed", "abort", "aborted", "aborting", "unknown",
    "read-only", "bad", "segfault", "enospc", "eacces", "eperm", "enoent"})
_WHAT_FAILED_PAIRS = frozenset({
    ("not", "permitted"), ("no", "such"), ("not", "found"), ("no", "space"),
    ("not", "available"), ("timed", "out"), ("could", "not"), ("not", "exist"),
    ("segmentation", "fault"), ("out", "of")})
_MAYBE_WHY = frozenset({"warning", "missing", "expired"})
_CALM = frozenset({"success", "successful", "successfully", "succeeded", "ignored",
                   "ignoring"})
_EXIT_STATUS = re.compile(  # a non-zero exit status: its digits are gone once normalised
    r"\bexit(?:ed)?(?: with)? (?:status |code )?[1-9]|returned an error", re.I)


def error_weight(text: str, tokens: Sequence[str] | None = None) -> float:
    """How much ``text`` (a :func:`message`) reads like a tool reporting a failure, 0 to
    1; ``tokens``: its normalised :func:`words`, when already known."""
    if tokens is None:
        tokens = words(normalise(text))
    found = set(tokens)
    pairs = set(zip(tokens, tokens[1:]))
    total = 0.4 if _ERROR_SHAPE.match(text) else 0.0
    if not found.isdisjoint(_FAILING) or (
            ("exit" in found or "returned" in found) and _EXIT_STATUS.search(text)):
        total += 0.4
    if not found.isdisjoint(_WHAT_FAILED) or not pairs.isdisjoint(_WHAT_FAILED_PAIRS):
        total += 0.5
    if text.startswith("W: ") or not found.isdisjoint(_MAYBE_WHY) or ("not", "set") in pairs:
        total += 0.2
    if not found.isdisjoint(_CALM) or ("no", "errors") in pairs:
        total -= 0.5
    return max(0.0, min(total, 1.0))


_TRACEBACK = "Traceback (most recent call last):"
_FRAME = re.compile(r'^File "[^"]*", line \d+')
_CARETS = re.compile(r"^[\s~^]+$")
_QUIET = re.compile(r"^\+|^(?:I|N): |^(?:Get|Hit|Ign):\d* ")  # shell trace, progress


class _TracebackState:
    """Finds a Python traceback's exception line (its frames are never the error)."""

    def __init__(self) -> None:
        self.inside = False
        self.after_frame = False

    def feed(self, text: str) -> str:
        """'exception', 'frame' (a frame or its source line) or '' for other lines."""
        if text.endswith(_TRACEBACK):
            self.inside, self.after_frame = True, False
            return "frame"
        if not self.inside or not text:
            return ""
        if _FRAME.match(text):
            self.after_frame = True
            return "frame"
        if self.after_frame or _CARETS.match(text):
            self.after_frame = False
            return "frame"
        self.inside = False
        return "exception"


# ---- the baseline ----------------------------------------------------------
@dataclass
class Baseline:
    """What successful logs of the row said, normalised: lines, words, word pairs."""

    lines: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    logs: int = 0

    @property
    def empty(self) -> bool:
        return not self.lines

    def add_log(self, lines: Iterable[str]) -> None:
        """Learn one successful log's lines (raw, as read)."""
        for raw in lines:
            normalised = normalise(message(raw))
            if not normalised or len(self.lines) >= BASELINE_ENTRIES:
                continue
            self.lines.add(normalised)
            tokens = words(normalised)
            if len(self.words) < BASELINE_ENTRIES:
                self.words.update(tokens)
            if len(self.pairs) < BASELINE_ENTRIES:
                self.pairs.update(zip(tokens, tokens[1:]))
        self.logs += 1

    def novelty(self, normalised: str, tokens: Sequence[str] | None = None) -> float:
        """0 for a line successful logs printed as it is, up to 1 for one made of words
        they never used (``tokens``: its :func:`words`, when already known)."""
        if normalised in self.lines:
            return 0.0
        tokens = words(normalised) if tokens is None else tokens
        if not tokens:
            return 0.3  # punctuation and numbers only, yet not a line seen before
        unseen = sum(token not in self.words for token in tokens) / len(tokens)
        pairs = list(zip(tokens, tokens[1:]))
        new_pairs = (sum(pair not in self.pairs for pair in pairs) / len(pairs)
                     if pairs else unseen)
        # Not seen as a whole line is itself a signal, however known its words.
        return 0.2 + 0.4 * unseen + 0.4 * new_pairs


def baseline_of(paths: Iterable[Path], budget: int = BASELINE_BYTES) -> Baseline:
    """The baseline of successful logs, read in order up to ``budget`` bytes in all
    (``BASELINE_LOG_BYTES`` of each). A log that cannot be read is left out: logs are
    untrusted (missing, a FIFO, a device, huge)."""
    baseline = Baseline()
    for path in paths:
        if budget <= 0:
            break
        limit = min(budget, BASELINE_LOG_BYTES)
        try:
            baseline.add_log(raw.decode("utf-8", "replace")
                             for raw in iter_lines(path, limit, LINE_LIMIT))
        except OSError:  # UnsafeFile included
            continue
        budget -= limit
    return baseline


# ---- scoring ---------------------------------------------------------------
@dataclass(frozen=True)
class ExcerptLine:
    line: int  # 1-based line number in the log
    text: str  # cleaned of escapes, at most TEXT_LIMIT characters

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "text": self.text}


# Weights of the three signals; novelty leads when a baseline exists.
NOVELTY, ERRORS, POSITION = 1.0, 0.8, 0.5
POSITION_SCALE = 40.0  # lines from the end at which the position weighs 1/e
INTERESTING = 0.1  # a line scoring less (position aside) says nothing new


@dataclass(frozen=True)
class _Scored:
    score: float  # without the position, which is known only at the end
    normalised: str
    number: int  # of the last occurrence: its distance from the end counts
    text: str  # of the last occurrence
    first: int  # the first occurrence, shown: where the trouble began
    first_text: str


def _line_score(text: str, normalised: str, baseline: Baseline, role: str) -> float:
    tokens = words(normalised)
    errors = error_weight(text, tokens)
    if baseline.empty:
        novelty = 0.0
    else:
        novelty = baseline.novelty(normalised, tokens)
        errors *= 0.25 + 0.75 * min(novelty / 0.6, 1.0)  # an error word successes print too
    score = NOVELTY * novelty + ERRORS * errors
    if role == "exception":
        score += ERRORS
    elif role == "frame" or _QUIET.match(text):
        score *= 0.4
    return score


class _Selection:
    """The best lines of a log as it streams by, in bounded memory."""

    def __init__(self, baseline: Baseline):
        self.baseline = baseline
        self.best: dict[str, _Scored] = {}  # by normalised text
        self.tail: collections.deque[_Scored] = collections.deque(maxlen=TAIL_LINES)
        self.repeats: collections.Counter[str] = collections.Counter()
        self.traceback = _TracebackState()
        self.last = 0

    def feed(self, number: int, raw: str) -> None:
        self.last = number
        text = message(raw)
        role = self.traceback.feed(text)
        normalised = normalise(text)
        if not normalised:
            return
        if normalised in self.repeats or len(self.repeats) < REPEATS_TRACKED:
            self.repeats[normalised] += 1
        earlier = self.best.get(normalised)
        first, first_text = (earlier.first, earlier.first_text) if earlier else (number, text)
        scored = _Scored(_line_score(text, normalised, self.baseline, role), normalised,
                         number, text, first, first_text)
        self.tail.append(scored)
        self.best[normalised] = scored
        if len(self.best) >= 2 * CANDIDATES:
            kept = heapq.nlargest(CANDIDATES, self.best.values(), key=lambda s: s.score)
            self.best = {s.normalised: s for s in kept}

    def top(self, k: int) -> list[ExcerptLine]:
        latest = dict(self.best)
        for scored in self.tail:
            if scored.number >= latest.get(scored.normalised, scored).number:
                latest[scored.normalised] = scored
        interesting = [s for s in latest.values() if self._weight(s) >= INTERESTING]
        if not interesting:  # nothing new and nothing error-shaped: where the log stopped
            return [ExcerptLine(s.number, _shown(s.text)) for s in list(self.tail)[-k:]]
        ranked = heapq.nlargest(k, interesting, key=self._final)
        return [ExcerptLine(s.first, _shown(s.first_text))
                for s in sorted(ranked, key=lambda s: s.first)]

    def _weight(self, scored: _Scored) -> float:
        """The score of a line, less the more it repeats in the log."""
        return scored.score / (1.0 + math.log(self.repeats.get(scored.normalised, 1)))

    def _final(self, scored: _Scored) -> tuple[float, int]:
        position = math.exp(-(self.last - scored.number) / POSITION_SCALE)
        return self._weight(scored) + POSITION * position, scored.number


def _shown(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "\u2026"


def excerpt_lines(lines: Iterable[tuple[int, str]], baseline: Baseline,
                  k: int = EXCERPT_LINES) -> list[ExcerptLine]:
    """The ``k`` lines of ``lines`` ((1-based number, raw text), in order) most unlike
    ``baseline``, in log order. A ``# dib-matrix: attempt`` line starts over: the
    last attempt is the one that failed."""
    selection = _Selection(baseline)
    for number, raw in lines:
        if raw.startswith(ATTEMPT_MARKER):
            selection = _Selection(baseline)
            continue
        selection.feed(number, raw)
    return selection.top(k) if k > 0 else []


def excerpt_of_text(text: str, baseline_texts: Sequence[str] = (),
                    k: int = EXCERPT_LINES) -> list[ExcerptLine]:
    """:func:`excerpt_lines` for logs already in memory."""
    baseline = Baseline()
    for other in baseline_texts:
        baseline.add_log(other.splitlines())
    return excerpt_lines(enumerate(text.splitlines(), 1), baseline, k)


# ---- reading an untrusted failed log -------------------------------------------
class _Bounded:
    """At most ``left`` more bytes of ``stream`` (a log may still grow as it is read)."""

    def __init__(self, stream: BinaryIO, left: int):
        self.stream, self.left = stream, left

    def read(self, size: int = -1) -> bytes:
        wanted = self.left if size < 0 else min(size, self.left)
        data = self.stream.read(wanted) if wanted > 0 else b""
        self.left -= len(data)
        return data


def numbered_tail(path: Path, window: int = LOG_WINDOW) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of the lines in the last ``window`` bytes of the
    regular file ``path``, each cut to ``LINE_LIMIT`` bytes; UnsafeFile (an OSError)
    when ``path`` is not a regular file or is over ``MAX_LOG_BYTES``. The lines before
    the window are counted, not decoded."""
    with open_regular(path) as stream:
        size = stream.seek(0, 2)
        if size > MAX_LOG_BYTES:
            raise UnsafeFile(f"{path}: over {MAX_LOG_BYTES // MiB} MiB: no excerpt")
        start = max(size - window, 0)
        stream.seek(0)
        number = 1 + count_newlines(stream, start)
        if start:  # the window starts inside a line (or at one): skip to the next
            partial = stream.readline(LINE_LIMIT)
            while partial and not partial.endswith(b"\n"):
                partial = stream.readline(LINE_LIMIT)
            number += 1
        reader: Any = _Bounded(stream, size - stream.tell())
        for offset, line in enumerate(lines_of_stream(reader)):
            yield number + offset, line


def excerpt_of_log(log: Path, baseline: Baseline | Sequence[Path],
                   k: int = EXCERPT_LINES) -> list[ExcerptLine]:
    """The excerpt of the failed ``log`` against a baseline, or the successful logs of
    the same row to make one of; [] when ``log`` cannot be read."""
    if not isinstance(baseline, Baseline):
        baseline = baseline_of(baseline)
    try:
        return excerpt_lines(numbered_tail(log), baseline, k)
    except OSError:  # UnsafeFile included: gone, a FIFO, a device, unreadable
        return []


# ---- the run's verdict stage -------------------------------------------------
def needs_excerpt(cell: Cell, generic: Collection[str] = GENERIC_CAUSES) -> bool:
    """A failure whose cause is not precise (one of ``generic``), with a log to read."""
    failed = cell.state.is_failure or cell.state is State.ALLOWED_FAILURE
    cause = cell.category.id if cell.category else UNCATEGORIZED
    return failed and (cause in generic or cause in GENERIC_CAUSES) and bool(cell.log)


def add_excerpts(results: RunResults, run_dir: Path,
                 earlier: Mapping[str, Sequence[Path]] | None = None,
                 budget: int = RUN_BUDGET, generic: Collection[str] = GENERIC_CAUSES) -> int:
    """Give every failed cell of ``results`` without a precise cause (its cause is one
    of ``generic``, the catalogue's catch-alls, or of GENERIC_CAUSES) its excerpt. The
    baseline of a row: the logs of its successful cells in this run (same mirror
    state, same dib), then ``earlier[row]``, successful logs of that row from earlier
    runs when the caller has them. At most ``budget`` bytes of logs are read in all
    (a resumed run's results.json may list any number of cells): the cells past it get
    none. Returns how many cells got an excerpt."""
    # results.json is untrusted once written (a resumed run reads it back): a log is
    # read only inside the run.
    run = RunDir(run_dir)
    successes: dict[str, list[Path]] = collections.defaultdict(list)
    for cell in results.cells:
        if cell.excerpt:  # from an earlier verdict of the cell
            cell.excerpt = []
        path = run.recorded(cell.log) if cell.state is State.SUCCESS else None
        if path is not None:
            successes[cell.row].append(path)
    baselines: dict[str, Baseline] = {}
    given = 0
    for cell in results.cells:
        log = run.recorded(cell.log) if needs_excerpt(cell, generic) else None
        if log is None:
            continue
        if cell.row not in baselines:
            logs = [*successes.get(cell.row, ()), *(earlier or {}).get(cell.row, ())]
            budget -= _cost(logs, BASELINE_LOG_BYTES, BASELINE_BYTES)
            baselines[cell.row] = baseline_of(logs) if budget >= 0 else Baseline()
        budget -= _cost([log], LOG_WINDOW, LOG_WINDOW)
        if budget < 0:
            break
        lines = excerpt_of_log(log, baselines[cell.row])
        cell.excerpt = [line.to_json() for line in lines]
        given += bool(lines)
    return given


def _cost(paths: Sequence[Path], each: int, most: int) -> int:
    """Bytes reading ``paths`` costs: of each at most ``each``, in all at most ``most``."""
    total = 0
    for path in paths:
        try:
            total += min(path.stat().st_size, each)
        except (OSError, ValueError):
            continue
    return min(total, most)
