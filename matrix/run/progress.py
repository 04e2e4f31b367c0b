"""Progress of a run on the console: a live status line on a terminal, plain lines elsewhere.

On a terminal (stdout a TTY, ``CI`` unset, ``TERM`` not ``dumb``) one status line sits
under the per-cell lines, redrawn in place (``\\r`` and an ANSI clear to the end of
the line) about once a second and after every cell::

    [7/20] 35% | 1 failed | ~3m10s left | running 2: debian-bookworm.debian-forky 1m02s, ...

Log records are written above it (the line is cleared, the record printed, the line
drawn again), so the per-cell lines scroll as before. Elsewhere (a pipe, a CI log) no
status line is drawn: the per-cell lines are exactly what they were. The status line
goes to the terminal only, never through logging, so ``run.log`` never holds it.

The estimate of the time left comes from earlier runs' durations in the same output
directory (the median of each cell's finished, not reused attempts), falling back to
the median of the successful cells of its kind (hostgen, check, build, boot) from
earlier runs and this one; with no duration known at all it is left out. A cell that
overruns its estimate counts as about to end.

:class:`ProgressState` is pure (a clock is passed in), so the frames are tested
without a terminal; :class:`Console` is the part that writes.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from results.archive import OutDir
from results.model import Cell, CellKind, RunResults, State

LOG = logging.getLogger("dib-matrix")

CLEAR_LINE = "\r\x1b[K"  # carriage return, then erase to the end of the line
REDRAW_SECONDS = 1.0
HISTORY_RUNS = 5  # earlier runs read for the estimate (newest first)
MIN_WIDTH = 20
ELLIPSIS = "..."
QUIET, NORMAL, VERBOSE = -1, 0, 1
FAILED_STATES = frozenset({State.FAILED, State.TIMEOUT, State.ERROR, State.ALLOWED_FAILURE})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


def short_duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``: the status line's clock."""
    total = max(int(round(seconds)), 0)
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the cut marked with ``...``."""
    width = max(width, 0)
    if len(text) <= width:
        return text
    if width <= len(ELLIPSIS):
        return text[:width]
    return text[: width - len(ELLIPSIS)] + ELLIPSIS


def _printable(text: str) -> str:
    """Names on the status line: no control characters (they would move the cursor)."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


# ---------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimates:
    """Expected seconds per cell, from earlier runs: by cell id, else by cell kind."""

    by_cell: Mapping[str, float] = field(default_factory=dict)
    by_kind: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_runs(cls, runs: Iterable[RunResults]) -> Estimates:
        cells: dict[str, list[float]] = {}
        kinds: dict[str, list[float]] = {}
        for run in runs:
            for cell in run.cells:
                seconds = measured(cell)
                if seconds is not None:
                    cells.setdefault(cell.id, []).append(seconds)
                    if cell.state is State.SUCCESS:  # a preflight failure takes no time
                        kinds.setdefault(cell.kind.value, []).append(seconds)
        return cls({k: statistics.median(v) for k, v in cells.items()},
                   {k: statistics.median(v) for k, v in kinds.items()})

    def expected(self, cell_id: str, kind: str) -> float | None:
        if cell_id in self.by_cell:
            return self.by_cell[cell_id]
        return self.by_kind.get(kind)


def measured(cell: Cell) -> float | None:
    """A cell's duration when it says what the cell costs: it ran (not reused, not
    skipped or excluded) and finished with a verdict."""
    if cell.reused or cell.duration is None or cell.attempts < 1:
        return None
    if cell.state not in (State.SUCCESS, *FAILED_STATES):
        return None
    return float(cell.duration)


def load_estimates(out_dir: Path, exclude_run: str, limit: int = HISTORY_RUNS) -> Estimates:
    """Estimates from the newest ``limit`` readable runs in ``out_dir`` (a run that cannot
    be read is skipped with a warning)."""
    newest = OutDir(out_dir).runs(limit, exclude=exclude_run)
    return Estimates.from_runs(stored.results for stored in newest)


# ---------------------------------------------------------------- state


@dataclass
class _Running:
    cell_id: str
    kind: str
    since: float  # clock time of the first attempt's start
    attempt: int = 1


class ProgressState:
    """Counts, running cells and the estimate; every method takes the time ``now``."""

    def __init__(self, cells: Iterable[tuple[str, str]], done: Iterable[str] = (),
                 estimates: Estimates | None = None, parallel: int = 1,
                 failed: int = 0):
        self.kinds: dict[str, str] = dict(cells)  # cell id -> kind, every cell of the run
        self.finished: dict[str, State] = {c: State.SUCCESS for c in done if c in self.kinds}
        self.failed = failed  # failures among the cells a resumed run keeps
        self.skipped = 0
        self.running: dict[str, _Running] = {}
        self.estimates = estimates or Estimates()
        self.parallel = max(parallel, 1)
        self.this_run: dict[str, list[float]] = {}  # kind -> durations measured in this run

    @property
    def total(self) -> int:
        return len(self.kinds)

    @property
    def done(self) -> int:
        return len(self.finished)

    def started(self, cell_id: str, kind: str, now: float, attempt: int = 1) -> None:
        self.kinds.setdefault(cell_id, kind)
        if cell_id in self.running:
            self.running[cell_id].attempt = attempt
        else:
            self.running[cell_id] = _Running(cell_id, kind, now, attempt)

    def ended(self, cell_id: str, kind: str, state: State, duration: float | None = None,
              reused: bool = False) -> None:
        self.kinds.setdefault(cell_id, kind)
        self.running.pop(cell_id, None)
        if state is State.PENDING:  # cut short: not finished, a resume runs it again
            return
        if cell_id not in self.finished:
            if state in FAILED_STATES:
                self.failed += 1
            elif state is State.SKIPPED:
                self.skipped += 1
        self.finished[cell_id] = state
        if duration is not None and not reused and state is State.SUCCESS:
            self.this_run.setdefault(kind, []).append(duration)

    def _expected(self, cell_id: str, kind: str) -> float | None:
        known = self.estimates.expected(cell_id, kind)
        if known is not None:
            return known
        if self.this_run.get(kind):
            return statistics.median(self.this_run[kind])
        return None

    def seconds_left(self, now: float) -> float | None:
        """The time left: the running cells' rest and the pending cells' work spread over
        the parallel slots, at least the longest running cell's rest. None when no
        duration is known for some cell still to do."""
        work = 0.0
        longest = 0.0
        for cell in self.running.values():
            expected = self._expected(cell.cell_id, cell.kind)
            if expected is None:
                return None
            rest = max(expected - (now - cell.since), 0.0)
            longest = max(longest, rest)
            work += rest
        for cell_id, kind in self.kinds.items():
            if cell_id in self.finished or cell_id in self.running:
                continue
            expected = self._expected(cell_id, kind)
            if expected is None:
                return None
            work += expected
        return max(longest, work / self.parallel)

    def line(self, now: float, width: int) -> str:
        """The status line, at most ``width`` characters."""
        percent = 100 * self.done // self.total if self.total else 100
        parts = [f"[{self.done}/{self.total}] {percent}%", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        left = self.seconds_left(now)
        if left is not None and self.done < self.total:
            parts.append(f"~{short_duration(left)} left")
        if self.running:
            oldest_first = sorted(self.running.values(), key=lambda r: (r.since, r.cell_id))
            names = ", ".join(
                f"{_printable(r.cell_id)} {short_duration(now - r.since)}"
                + (f" (try {r.attempt})" if r.attempt > 1 else "") for r in oldest_first)
            parts.append(f"running {len(self.running)}: {names}")
        return fit(" | ".join(parts), width)


# ---------------------------------------------------------------- console


class RunObserver(Protocol):
    """What the run tells the console (``matrix.run.runner.execute``'s ``observer``)."""

    def cell_started(self, cell_id: str, kind: CellKind, attempt: int) -> None: ...

    def cell_finished(self, cell: Cell) -> None: ...


def wants_status_line(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """A live line only on a real terminal, and never under CI (``CI`` set, not false)."""
    env = os.environ if environ is None else environ
    if env.get("CI", "").strip().lower() not in FALSE_WORDS:
        return False
    if env.get("TERM", "") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Console:
    """The run's console output: log records, the per-cell lines and, on a terminal, the
    status line under them. ``verbosity``: QUIET (warnings and errors, and the table at
    the end), NORMAL (a line per finished cell) or VERBOSE (also each cell's start, and
    its duration, log and evidence when it ends)."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None,
                 verbosity: int = NORMAL, clock: Callable[[], float] = time.monotonic,
                 width: Callable[[], int] | None = None, interval: float = REDRAW_SECONDS):
        self.stream = stream if stream is not None else sys.stdout
        self.live = wants_status_line(self.stream) if live is None else live
        self.verbosity = verbosity
        self.clock = clock
        self.width = width or (lambda: shutil.get_terminal_size((80, 24)).columns)
        self.interval = interval
        self.state: ProgressState | None = None
        self.lock = threading.RLock()
        self.shown = False  # a status line is on the screen now
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- what the run calls

    def begin(self, results: RunResults, done: Iterable[str], out_dir: Path | None,
              parallel: int | None = None) -> None:
        """The run's cells are known (``execute``'s ``on_start``): start the status line."""
        kept = set(done)
        estimates = load_estimates(out_dir, results.run_id) if out_dir else Estimates()
        failed = sum(1 for c in results.cells if c.id in kept and c.state in FAILED_STATES)
        slots = parallel or results.options.get("max_parallel") or 1
        with self.lock:
            self.state = ProgressState(((c.id, c.kind.value) for c in results.cells), kept,
                                       estimates, int(slots), failed)
        if self.live and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        self.redraw()

    def cell_started(self, cell_id: str, kind: CellKind, attempt: int) -> None:
        with self.lock:
            if self.state is not None:
                self.state.started(cell_id, kind.value, self.clock(), attempt)
        if self.verbosity >= VERBOSE:
            LOG.info("%-40s started%s", cell_id, f" (attempt {attempt})" if attempt > 1 else "")
        self.redraw()

    def cell_finished(self, cell: Cell) -> None:
        with self.lock:
            if self.state is not None:
                self.state.ended(cell.id, cell.kind.value, cell.state, cell.duration,
                                 cell.reused)
        if self.verbosity >= VERBOSE and cell.state is not State.PENDING:
            for line in details(cell):
                LOG.info("%-40s %s", "", line)
        self.redraw()

    def close(self) -> None:
        """Stop redrawing and take the status line off the screen (before the table)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None
        with self.lock:
            if self.shown:
                self.stream.write(CLEAR_LINE)
                self.stream.flush()
                self.shown = False

    # --- drawing

    def frame(self) -> str:
        """What a redraw writes: clear the line, then the status line (no newline)."""
        with self.lock:
            if self.state is None:
                return ""
            width = max(self.width() - 1, MIN_WIDTH)  # the last column would wrap
            return CLEAR_LINE + self.state.line(self.clock(), width)

    def redraw(self) -> None:
        if not self.live or self._stop.is_set():
            return
        with self.lock:
            text = self.frame()
            if not text:
                return
            self._write(text)
            self.shown = True

    def write_above(self, text: str) -> None:
        """Write ``text`` (whole lines) above the status line, which is then redrawn."""
        with self.lock:
            if self.shown:
                self.stream.write(CLEAR_LINE)
                self.shown = False
            self._write(text)
            self.redraw()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not stop the run
            pass

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.redraw()

    def handler(self) -> logging.Handler:
        """The console's logging handler: records go above the status line; with QUIET
        only warnings and errors."""
        handler = ConsoleHandler(self)
        handler.setLevel(logging.WARNING if self.verbosity <= QUIET else logging.NOTSET)
        return handler


class ConsoleHandler(logging.Handler):
    """Writes records through :meth:`Console.write_above`."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.write_above(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging's own contract
            self.handleError(record)


def details(cell: Cell) -> list[str]:
    """``--verbose``'s lines under a finished cell: duration, log, evidence."""
    lines = []
    facts: list[str] = []
    if cell.duration is not None:
        facts.append(f"took {short_duration(cell.duration)}")
    if cell.attempts > 1:
        facts.append(f"{cell.attempts} attempts")
    if cell.log:
        facts.append(f"log {cell.log}")
    if facts:
        lines.append(", ".join(facts))
    if cell.evidence and cell.state is not State.SUCCESS:
        lines.append("evidence: " + fit(_printable(" ".join(cell.evidence.split())), 200))
    return lines



def observed(finish: Callable[[Any, Any], None], results: RunResults,
             observer: RunObserver | None) -> Callable[[Any, Any], None]:
    """The scheduler's ``finish`` that also tells ``observer`` (when there is one)."""
    if observer is None:
        return finish

    def finish_and_tell(planned: Any, report: Any) -> None:
        finish(planned, report)
        cell = results.cell(planned.host.name, planned.row)
        if cell is not None:
            observer.cell_finished(cell)

    return finish_and_tell


def add_arguments(parser: Any) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` of ``dib-matrix run``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="only warnings, errors and the table at the end (the live status "
                       "line stays on a terminal)")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="also each cell's start, and its duration, log and evidence line "
                       "when it ends")


def console_for(args: Any, stream: TextIO | None = None) -> Console:
    """The console for ``dib-matrix run``'s arguments: a live status line on a terminal
    (not under CI), plain lines elsewhere."""
    verbosity = QUIET if getattr(args, "quiet", False) else (
        VERBOSE if getattr(args, "verbose", False) else NORMAL)
    return Console(stream, verbosity=verbosity)
