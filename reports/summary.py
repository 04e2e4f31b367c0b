"""Run-level numbers every report prints: counts per state and the classification rate."""

from __future__ import annotations

from reports.legend import has_named_cause
from reports.styles import STYLES
from results.model import Cell, RunResults, State


def counted_failures(results: RunResults) -> list[Cell]:
    """The cells ``RunResults.classification_rate()`` counts: failures, allowed ones too."""
    return [c for c in results.cells if c.state.is_failure or c.state is State.ALLOWED_FAILURE]


def uncategorized(results: RunResults) -> list[Cell]:
    return [c for c in counted_failures(results) if not has_named_cause(c)]


def rate_text(results: RunResults) -> str:
    rate = results.classification_rate()
    if rate is None:
        return "classification rate: n/a (no failures)"
    failures = counted_failures(results)
    named = len(failures) - len(uncategorized(results))
    return (
        f"classification rate: {rate:.0%} "
        f"({named} of {len(failures)} failures have a named cause)"
    )


def counts_text(results: RunResults) -> str:
    counts = results.counts()
    parts = [f"{counts[s.value]} {STYLES[s].label}" for s in STYLES if counts.get(s.value)]
    return f"{len(results.cells)} cells: " + (", ".join(parts) if parts else "none")


def retried(results: RunResults) -> list[Cell]:
    return [c for c in results.cells if c.passed_on_retry]


RETRY_NOTE_LIMIT = 600  # characters of one cell's retry note in a report line


def retry_notes(results: RunResults) -> list[Cell]:
    """Cells whose failed attempts say why they were tried again or not (only a run
    asked for retries has them)."""
    return [c for c in results.cells if c.retry]
