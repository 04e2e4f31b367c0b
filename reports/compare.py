"""Compare two runs cell by cell: regressions, fixes, changed causes, new and removed cells."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tabulate import tabulate

from reports.attribution import Attribution, attribute
from reports.legend import grid_order
from reports.sanitize import one_line, safe_text
from reports.styles import style
from results.model import Cell, RunResults, State

# States that count as "not success" for a regression or a fix.
NOT_PASSING = frozenset(
    {State.FAILED, State.TIMEOUT, State.ERROR, State.SKIPPED, State.ALLOWED_FAILURE}
)


class Change(str, enum.Enum):
    REGRESSION = "regression"  # was success, now failed/timeout/error/skipped/allowed-failure
    FIX = "fix"  # was one of those, now success
    CHANGED = "changed"  # any other change of state or cause (e.g. another category)
    NEW = "new"  # only in the new run
    REMOVED = "removed"  # only in the old run


@dataclass(frozen=True)
class CellDiff:
    change: Change
    id: str
    old: Cell | None
    new: Cell | None

    @property
    def voting(self) -> bool:
        """Whether this difference can fail the gate: the new cell is voting."""
        cell = self.new or self.old
        return cell is not None and cell.voting and cell.state is not State.ALLOWED_FAILURE


@dataclass
class Comparison:
    old_run: str
    new_run: str
    diffs: list[CellDiff] = field(default_factory=list)
    unchanged: int = 0
    # Regressions and fixes: what differs between the two runs for the cell (provenance).
    attributions: dict[str, Attribution] = field(default_factory=dict)

    def of(self, change: Change) -> list[CellDiff]:
        return [d for d in self.diffs if d.change is change]

    @property
    def regressions(self) -> list[CellDiff]:
        return self.of(Change.REGRESSION)

    @property
    def fixes(self) -> list[CellDiff]:
        return self.of(Change.FIX)

    @property
    def voting_regressions(self) -> list[CellDiff]:
        return [d for d in self.regressions if d.voting]

    def by_id(self) -> dict[str, CellDiff]:
        return {d.id: d for d in self.diffs}


def _signature(cell: Cell) -> tuple[State, str | None, str | None]:
    category = cell.category
    return cell.state, category.id if category else None, category.legend if category else None


def classify_change(old: Cell, new: Cell) -> Change | None:
    if old.state is State.SUCCESS and new.state in NOT_PASSING:
        return Change.REGRESSION
    if old.state in NOT_PASSING and new.state is State.SUCCESS:
        return Change.FIX
    if _signature(old) != _signature(new):
        return Change.CHANGED
    return None


def compare(old: RunResults, new: RunResults) -> Comparison:
    """Every cell that differs, in the new run's table order; removed cells last."""
    old_cells = {c.id: c for c in old.grid_cells()}  # never an investigation's variants
    new_ids = {c.id for c in new.grid_cells()}
    result = Comparison(old.run_id, new.run_id)
    for cell in grid_order(new):
        before = old_cells.get(cell.id)
        change = Change.NEW if before is None else classify_change(before, cell)
        if change is None:
            result.unchanged += 1
        else:
            result.diffs.append(CellDiff(change, cell.id, before, cell))
        if before is not None and change in (Change.REGRESSION, Change.FIX):
            result.attributions[cell.id] = attribute(old, new, before, cell)
    for cell in grid_order(old):
        if cell.id not in new_ids:
            result.diffs.append(CellDiff(Change.REMOVED, cell.id, cell, None))
    return result


def describe(cell: Cell | None) -> str:
    """A cell's verdict in a few words: ``failed: No such script: ...``."""
    if cell is None:
        return "-"
    text = style(cell.state).label
    if cell.category and cell.state is not State.SUCCESS:
        text += f": {one_line(cell.category.legend, 80)}"
    elif cell.reason and cell.state is State.EXCLUDED:
        text += f": {one_line(cell.reason, 80)}"
    return text


def summary_line(comparison: Comparison) -> str:
    counts = {change: len(comparison.of(change)) for change in Change}
    voting = len(comparison.voting_regressions)
    return (
        f"{one_line(comparison.old_run)} -> {one_line(comparison.new_run)}: "
        f"{counts[Change.REGRESSION]} regressions ({voting} voting), "
        f"{counts[Change.FIX]} fixes, {counts[Change.CHANGED]} changed, "
        f"{counts[Change.NEW]} new, {counts[Change.REMOVED]} removed, "
        f"{comparison.unchanged} unchanged"
    )


def render_comparison(comparison: Comparison) -> str:
    """The comparison as a text table under a one-line summary."""
    lines = [summary_line(comparison)]
    if comparison.diffs:
        rows = [
            [d.change.value, one_line(d.id), describe(d.old), describe(d.new),
             "yes" if d.voting else "no"]
            for d in comparison.diffs
        ]
        headers = ["change", "cell", "before", "now", "voting"]
        lines += ["", tabulate(rows, headers, tablefmt="grid", disable_numparse=True)]
    lines += attribution_text(comparison)
    return safe_text("\n".join(lines) + "\n")


def attribution_text(comparison: Comparison) -> list[str]:
    """Why each regression and fix changed: what differs between the runs for the cell."""
    lines = []
    for diff in comparison.regressions + comparison.fixes:
        found = comparison.attributions.get(diff.id)
        if found is None:
            continue
        if not lines:
            lines += ["", "why (what differs between the two runs for the cell):"]
        lines.append(f"{diff.change.value} {one_line(diff.id)}: {describe(diff.new)}")
        for entry, details in found.entries():
            lines.append(f"  - {one_line(entry, 300)}")
            lines += [f"      {one_line(detail, 300)}" for detail in details]
    return lines
