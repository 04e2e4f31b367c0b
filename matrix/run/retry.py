"""Which failed attempts are tried again, after how long, and what the cell says about it.

A retry helps only when the cause can change between two attempts: a mirror that was
unreachable or in the middle of a sync, a network or engine hiccup. The catalogue says
which causes those are (an entry's ``retry: true``); every other failure comes back the
same way, so trying it again only doubles the time to the same verdict. So:

- a failure whose cause is retryable is tried again, at most ``retries`` times, after
  ``delay`` seconds, doubled before each next retry up to ``cap``;
- a failure with any other cause is not retried, and its cell says why ("not retried:
  <legend> does not change on a retry");
- an ``uncategorized`` failure is not retried: nothing says a retry can fix it, and a
  pass on retry would hide a failure no one has named yet;
- a cell killed at its own timeout is not retried: it would take as long again. A
  network step that timed out says so in the log and gets that cause instead.

Only the cause that names the legend counts (the highest priority), not every label
that matched: a precise cause outranks the catch-alls, so a retryable one that matched
names the failure.

:meth:`RetryPolicy.decide` is a pure function of one judged attempt; the scheduler
(:mod:`matrix.run.scheduler`) does the waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from matrix.config.matrixfile import MAX_RETRY_DELAY
from matrix.run.cellreport import CellReport
from matrix.verdict.catalogue import UNCATEGORIZED
from results.model import State

MAX_DOUBLINGS = 32  # past this the cap has long been reached; keeps 2**n a small float
# A legend filled from a log line can be kilobytes; a note names it in at most this many
# characters, and the whole note (one line per attempt) stays well under the 20000
# characters results.schema.json lets a reader take.
LEGEND_LIMIT = 300
NOTE_LIMIT = 8000


@dataclass(frozen=True)
class Decision:
    """What becomes of one finished attempt."""

    retry: bool
    delay: float = 0.0  # seconds to wait before the next attempt (with retry)
    note: str | None = None  # the cell's line about this attempt, None when nothing to say


NO_RETRY = Decision(retry=False)
# What the scheduler asks after each attempt: (the judged report, its number) -> Decision.
Decide = Callable[[CellReport, int], Decision]


def never(report: CellReport, attempt: int) -> Decision:
    """No attempt is tried again: the scheduler's default."""
    return NO_RETRY


@dataclass(frozen=True)
class RetryPolicy:
    """The matrix's ``retries`` and ``retry-delay`` with the catalogue's retryable causes."""

    retries: int = 0  # at most this many extra attempts, for a retryable cause
    delay: float = 0.0  # seconds before the first retry
    retryable: frozenset[str] = frozenset()  # catalogue ids with retry: true
    cap: float = MAX_RETRY_DELAY  # the doubling stops here

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 is the first):
        ``delay``, then twice that, and so on, at most ``cap`` (or ``delay`` itself,
        when it is longer)."""
        doublings = min(max(attempt - 1, 0), MAX_DOUBLINGS)
        return min(self.delay * 2.0 ** doublings, max(self.cap, self.delay))

    def decide(self, report: CellReport, attempt: int) -> Decision:
        """Whether attempt number ``attempt``, judged into ``report``, is tried again."""
        if not report.state.is_failure or self.retries <= 0:
            return NO_RETRY
        category = report.category
        if report.state is State.TIMEOUT:
            return Decision(False, note=f"not retried: {_cause(report)}: the cell used its "
                            "whole timeout, and a retry would take as long again")
        if category is None or category.id == UNCATEGORIZED:
            return Decision(False, note="not retried: the cause is unknown (uncategorized); "
                            "only a cause the catalogue marks retry: true is retried")
        legend = _shortened(category.legend)
        if category.id not in self.retryable:
            return Decision(False, note=f"not retried: {legend} does not change on a retry")
        if attempt > self.retries:
            return Decision(False, note=f"attempt {attempt}: {legend}; no retries left "
                            f"(retries: {self.retries})")
        delay = self.backoff(attempt)
        return Decision(True, delay, f"attempt {attempt}: {legend}; retried {_after(delay)}")


def join_notes(notes: list[str]) -> str | None:
    """The cell's retry note: each attempt's line, in order; None when there is none."""
    return _shortened("; ".join(notes), NOTE_LIMIT) if notes else None


def _cause(report: CellReport) -> str:
    return _shortened(report.category.legend) if report.category is not None else "timeout"


def _shortened(text: str, limit: int = LEGEND_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _after(delay: float) -> str:
    if delay == 0:
        return "at once"
    if delay >= 60 and delay % 60 == 0:
        return f"after {delay / 60:.0f} min"
    return f"after {delay:g} s"
