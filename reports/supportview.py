"""The support table as the HTML pages show it: the grid, each cell's strip of its last
states (coloured squares) and an inline SVG of its duration over the runs.

Plain data for the templates (``_support.html.j2``, used by the history index and by
``dib-matrix support --format html``). The SVG path is built from numbers alone,
formatted here: no text from a run directory reaches it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reports.styles import style
from reports.support import FIRST_FOOTNOTE, Status, SupportEntry, SupportTable

SPARK_WIDTH, SPARK_HEIGHT = 80.0, 16.0
STATUS_CSS = {Status.SUPPORTED: "support-supported", Status.BROKEN: "support-broken",
              Status.FLAKY: "support-flaky", Status.NOT_RUN: "support-not-run"}


@dataclass(frozen=True)
class Square:
    css: str
    title: str


@dataclass(frozen=True)
class SupportCellView:
    text: str
    css: str
    title: str
    strip: list[Square]
    spark: str  # an SVG path ("M0.0 4.0 L...") or "" with fewer than two durations
    spark_title: str


@dataclass(frozen=True)
class SupportRowView:
    label: str
    cells: list[SupportCellView]


@dataclass(frozen=True)
class SupportView:
    caption: str
    columns: list[str]
    rows: list[SupportRowView]
    causes: list[tuple[int, str]]
    spark_width: float = SPARK_WIDTH
    spark_height: float = SPARK_HEIGHT


def build_support_view(table: SupportTable) -> SupportView:
    caption = "no runs yet"
    if table.runs:
        first, last = table.runs[0], table.runs[-1]
        caption = (f"over the last {len(table.runs)} runs ({first.date or first.run_id} to "
                   f"{last.date or last.run_id}), oldest first in each strip")
    rows = [SupportRowView(row, [_cell_view(table.entry(host, row)) for host in table.hosts])
            for row in table.rows]
    causes = [(FIRST_FOOTNOTE + i, text) for i, text in enumerate(table.causes)]
    return SupportView(caption, list(table.hosts), rows, causes)


def _cell_view(entry: SupportEntry) -> SupportCellView:
    strip = [Square("st-absent", f"{p.run.run_id}: not in this run") if p.state is None
             else Square(style(p.state).css_class, f"{p.run.run_id}: {style(p.state).label}")
             for p in entry.points]
    title = f"{entry.cell_id}: {entry.text}"
    if entry.cause:
        title += f" - {entry.cause}"
    green = entry.last_green
    title += f"; last green: {green.run_id} ({green.date or '?'})" if green else \
        "; never green in this window"
    durations = [p.duration for p in entry.points]
    known = [d for d in durations if _usable(d)]
    spark_title = (f"duration {min(known):.0f}-{max(known):.0f} s over the runs"
                   if known else "")
    return SupportCellView(entry.text, STATUS_CSS[entry.status], title, strip,
                           sparkline(durations), spark_title)


def sparkline(durations: list[float | None], width: float = SPARK_WIDTH,
              height: float = SPARK_HEIGHT) -> str:
    """An SVG path of ``durations`` (one x step per run; a gap where there is none),
    scaled to ``height``; "" with fewer than two usable values."""
    usable = [d for d in durations if _usable(d)]
    if len(usable) < 2:
        return ""
    top = max(usable) or 1.0
    step = width / max(len(durations) - 1, 1)
    parts, pen_down = [], False
    for index, value in enumerate(durations):
        if not _usable(value):
            pen_down = False
            continue
        x = index * step
        y = height - 1.0 - (height - 2.0) * (float(value) / top)  # type: ignore[arg-type]
        parts.append(f"{'L' if pen_down else 'M'}{x:.1f} {y:.1f}")
        pen_down = True
    return " ".join(parts)


def _usable(value: object) -> bool:
    """A duration a path can draw: a finite number of at least zero."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)
