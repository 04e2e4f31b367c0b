"""How each cell state looks, in one place: the text, HTML and JUnit reports all read this.

A state has one label, one colour and one JUnit outcome everywhere. Facts that are
not states (passed only on retry, reused from an earlier run, non-voting) are
*flags*: they add a word to the text mark and a badge/pattern in HTML, never a
colour of their own, so a green cell always means "success".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from results.model import Cell, State


class JUnitOutcome(str, enum.Enum):
    PASSED = "passed"
    FAILURE = "failure"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StateStyle:
    state: State
    label: str  # human words, used in legends, HTML and summaries
    word: str  # what a text cell shows when it has no footnote
    background: str  # HTML cell colour
    foreground: str  # HTML text colour on that background
    junit: JUnitOutcome
    meaning: str  # one sentence for the HTML key

    @property
    def css_class(self) -> str:
        return f"st-{self.state.value}"


STYLES: dict[State, StateStyle] = {
    s.state: s
    for s in (
        StateStyle(
            State.SUCCESS, "success", "success", "#c8e6c9", "#1b5e20", JUnitOutcome.PASSED,
            "built (or checked) without error",
        ),
        StateStyle(
            State.FAILED, "failed", "failed", "#ffcdd2", "#b71c1c", JUnitOutcome.FAILURE,
            "the build failed; the footnote names the cause, 'failed' means uncategorized",
        ),
        StateStyle(
            State.TIMEOUT, "timeout", "timeout", "#ffe0b2", "#bf360c", JUnitOutcome.FAILURE,
            "killed at the per-cell timeout",
        ),
        StateStyle(
            State.ERROR, "error", "error", "#e1bee7", "#4a148c", JUnitOutcome.ERROR,
            "the infrastructure (container engine) failed, not the build",
        ),
        StateStyle(
            State.SKIPPED, "skipped", "skipped", "#fff59d", "#5d4c00", JUnitOutcome.SKIPPED,
            "not run because a prerequisite failed (missing dependency)",
        ),
        StateStyle(
            State.ALLOWED_FAILURE, "allowed failure", "failed", "#b2dfdb", "#004d40",
            JUnitOutcome.SKIPPED,
            "failed, but the cell is non-voting: never fails the gate",
        ),
        StateStyle(
            State.EXCLUDED, "excluded", "n/a", "#eceff1", "#607d8b", JUnitOutcome.SKIPPED,
            "left out by the matrix file; the legend gives the reason",
        ),
        StateStyle(
            State.PENDING, "pending", "pending", "#ffffff", "#757575", JUnitOutcome.SKIPPED,
            "planned but not finished (partial or interrupted run)",
        ),
    )
}


def style(state: State) -> StateStyle:
    return STYLES[state]


@dataclass(frozen=True)
class Flag:
    name: str  # css class suffix and JSON-ish name
    text: str  # the word added to the text mark


def flags(cell: Cell) -> list[Flag]:
    """The non-state facts shown beside a cell's state, in a fixed order."""
    found: list[Flag] = []
    if cell.passed_on_retry:
        found.append(Flag("retry", f"try {cell.attempts}"))
    if cell.state is State.ALLOWED_FAILURE:
        found.append(Flag("allowed", "allowed"))
    elif not cell.voting and cell.state is not State.EXCLUDED:
        found.append(Flag("non-voting", "non-voting"))
    if cell.reused:
        found.append(Flag("reused", "reused"))
    return found
