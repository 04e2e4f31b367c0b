"""The table's shape, shared by the text and HTML reports: rows x hosts, or transposed."""

from __future__ import annotations

from dataclasses import dataclass

from results.model import Cell, RunResults

CORNER = "target \\ host"
CORNER_TRANSPOSED = "host \\ target"


@dataclass(frozen=True)
class GridRow:
    label: str
    cells: list[Cell | None]  # None: no cell planned at this position


@dataclass(frozen=True)
class Grid:
    corner: str
    columns: list[str]
    rows: list[GridRow]


def build_grid(results: RunResults, transpose: bool = False) -> Grid:
    """Rows ``hostgen``, checks, targets against host columns (swapped when transposed)."""
    lookup = {(c.row, c.host): c for c in results.cells}
    if transpose:
        rows = [GridRow(h, [lookup.get((r, h)) for r in results.rows]) for h in results.hosts]
        return Grid(CORNER_TRANSPOSED, list(results.rows), rows)
    rows = [GridRow(r, [lookup.get((r, h)) for h in results.hosts]) for r in results.rows]
    return Grid(CORNER, list(results.hosts), rows)
