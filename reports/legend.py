"""The numbered legend under the table, and the mark each cell shows.

The rule: a cell whose cause is *named* points to a footnote
``- N -``; the legend under the table gives the cause. Precisely:

* ``failed`` and ``allowed-failure`` cells with a category other than
  ``uncategorized`` show ``- N -`` with the category's legend text; without a
  category (or ``uncategorized``) they show the word ``failed`` - read the log.
* ``skipped`` cells show ``- N -`` with the category's legend (``missing
  dependency``, named by the verdict stage), or their reason (``cancelled by
  fail-fast``).
* ``excluded`` cells show ``n/a - N -``; the legend says ``excluded: <reason>``.
* ``success``, ``timeout``, ``error`` and ``pending`` show their word.

Flags follow in parentheses: ``(try N)`` passed only on attempt N, ``(allowed)``
non-voting failure, ``(non-voting)``, ``(reused)`` result of an earlier run.

Footnotes are numbered from 0 in reading order of the
untransposed table (rows top to bottom, hosts left to right), so the numbers do
not change with ``--transpose``. Equal legend texts share a number; different
texts (``No such script: .../noble`` and ``.../forky``) get different numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reports.sanitize import one_line
from reports.styles import flags, style
from results.model import Cell, RunResults, State

UNCATEGORIZED = "uncategorized"
FIRST_FOOTNOTE = 0
LEGEND_LIMIT = 200


def has_named_cause(cell: Cell) -> bool:
    return cell.category is not None and cell.category.id != UNCATEGORIZED


def footnote_text(cell: Cell) -> str | None:
    """The legend text a cell points to, or None when the cell shows a word."""
    if cell.state is State.EXCLUDED:
        reason = one_line(cell.reason or "", LEGEND_LIMIT)
        return f"excluded: {reason}" if reason else "excluded"
    category = cell.category if has_named_cause(cell) else None
    if cell.state is State.SKIPPED:
        # The verdict stage names a skip's cause (missing dependency); a cell skipped for
        # another reason (cancelled by fail-fast, Ctrl-C) shows that reason.
        text = category.legend if category else (cell.reason or "skipped")
        return one_line(text, LEGEND_LIMIT)
    if cell.state in (State.FAILED, State.ALLOWED_FAILURE) and category:
        return one_line(category.legend, LEGEND_LIMIT) or category.id
    return None


@dataclass
class LegendEntry:
    number: int
    text: str
    category_id: str | None
    link: str | None
    cells: list[str] = field(default_factory=list)  # cell ids pointing here

    @property
    def label(self) -> str:
        return f"- {self.number} -"


@dataclass
class Legend:
    entries: list[LegendEntry]

    def __post_init__(self) -> None:
        self._numbers = {e.text: e.number for e in self.entries}

    def numbers(self) -> dict[str, int]:
        """Legend text -> footnote number."""
        return dict(self._numbers)

    def number(self, cell: Cell) -> int | None:
        text = footnote_text(cell)
        return None if text is None else self._numbers[text]

    def lines(self) -> list[str]:
        return [f"{e.label} {e.text}" for e in self.entries]


def grid_order(results: RunResults) -> list[Cell]:
    """Every cell in reading order of the table; cells off the grid last, by id (an
    investigation's variants are no cells of the table: never)."""
    by_position = {(c.row, c.host): c for c in results.cells}
    ordered = [by_position[(r, h)] for r in results.rows for h in results.hosts
               if (r, h) in by_position]
    seen = {id(c) for c in ordered}
    rest = sorted((c for c in results.cells if id(c) not in seen and c.investigation is None),
                  key=lambda c: c.id)
    return ordered + rest


def build_legend(results: RunResults) -> Legend:
    entries: dict[str, LegendEntry] = {}
    for cell in grid_order(results):
        text = footnote_text(cell)
        if text is None:
            continue
        if text not in entries:
            category = cell.category if cell.state is not State.EXCLUDED else None
            entries[text] = LegendEntry(
                number=FIRST_FOOTNOTE + len(entries),
                text=text,
                category_id=category.id if category else None,
                link=category.link if category else None,
            )
        entries[text].cells.append(cell.id)
    return Legend(list(entries.values()))


def base_mark(cell: Cell, legend: Legend) -> str:
    number = legend.number(cell)
    if number is None:
        return style(cell.state).word
    if cell.state is State.EXCLUDED:
        return f"{style(cell.state).word} - {number} -"
    return f"- {number} -"


def cell_mark(cell: Cell, legend: Legend) -> str:
    """What the text table shows for a cell, e.g. ``- 2 -``, ``success (try 2)``."""
    words = [f.text for f in flags(cell)]
    mark = base_mark(cell, legend)
    return f"{mark} ({', '.join(words)})" if words else mark
