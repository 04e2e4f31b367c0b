"""Plain data for the HTML templates: every decision is made here, the templates only lay out.

Strings in these views are raw text; jinja2's autoescape turns them into HTML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

from reports.compare import Comparison, describe, summary_line
from reports.grid import build_grid
from reports.history import TrendPoint
from reports.legend import (
    Legend,
    LegendEntry,
    base_mark,
    cell_mark,
    footnote_text,
    grid_order,
    has_named_cause,
)
from reports.logs import Excerpt, excerpt
from reports.sanitize import clean_text, one_line
from reports.shardinfo import shard_rows
from reports.styles import STYLES, Flag, StateStyle, flags, style
from reports.summary import rate_text, uncategorized
from results.model import Artifact, Cell, ImageCheck, RunResults, State


@dataclass(frozen=True)
class TrendView:
    css: str
    title: str


@dataclass(frozen=True)
class GridCellView:
    mark: str
    css: str
    title: str
    anchor: str
    trend: list[TrendView]


@dataclass(frozen=True)
class GridRowView:
    label: str
    cells: list[GridCellView | None]


@dataclass(frozen=True)
class ArtifactView:
    path: str
    href: str
    type: str
    size: str
    sha256: str


@dataclass(frozen=True)
class CheckView:
    """One image check in a cell's panel: what was checked and what was found."""

    name: str
    ok: bool
    status: str  # "ok" or "failed"
    css: str
    detail: str
    image: str
    seconds: str  # "" when the check's time was not recorded


@dataclass(frozen=True)
class DetailView:
    anchor: str
    id: str
    host: str
    row: str
    kind: str
    state: str
    css: str
    mark: str
    flags: list[Flag]
    footnote: str | None
    cause: str | None
    category: str | None
    category_legend: str | None
    category_link: str | None
    labels: list[str]
    reason: str | None
    excerpt: Excerpt
    started: str | None
    finished: str | None
    duration: str
    attempts: int
    voting: bool
    reused: bool
    reproducer: str | None
    log_href: str | None
    artifacts: list[ArtifactView]
    checks: list[CheckView]
    trend: list[TrendView]
    change: str | None


@dataclass(frozen=True)
class HostSection:
    host: str
    image: str | None
    details: list[DetailView]


@dataclass(frozen=True)
class CountView:
    label: str
    css: str
    count: int


@dataclass(frozen=True)
class ChangeRow:
    change: str
    id: str
    anchor: str | None
    before: str
    now: str
    voting: bool
    why: list[str] = field(default_factory=list)  # what differs for a regression or fix


@dataclass(frozen=True)
class ComparisonView:
    summary: str
    baseline: str
    rows: list[ChangeRow]


@dataclass(frozen=True)
class ReportView:
    title: str
    run_id: str
    interrupted: bool
    metadata: list[tuple[str, str]]
    host_images: list[tuple[str, str]]
    counts: list[CountView]
    rate: str
    corner: str
    columns: list[str]
    grid: list[GridRowView]
    legend: list[LegendEntry]
    legend_links: dict[int, str | None]
    states: list[StateStyle]
    hosts: list[HostSection]
    uncategorized: list[DetailView]
    comparison: ComparisonView | None


def anchor(cell_id: str) -> str:
    return "cell-" + re.sub(r"[^A-Za-z0-9_.-]", "_", cell_id)


def safe_href(url: str | None) -> str | None:
    """A link we are willing to put in an href: http(s), or a path relative to the report."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return url
    if parts.scheme or parts.netloc or url.startswith(("/", "\\")) or ".." in url.split("/"):
        return None
    return quote(url, safe="/")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def run_duration(results: RunResults) -> float | None:
    try:
        start = _parse_time(results.started)
        end = _parse_time(results.finished)
        return (end - start).total_seconds()
    except (ValueError, TypeError):  # missing, unparsable, or naive mixed with aware
        return None


def _parse_time(stamp: str | None) -> datetime:
    text = stamp or ""
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


def shows_log(cell: Cell) -> bool:
    """Only failures get a log excerpt; other panels link to the log."""
    return cell.state.is_failure or cell.state is State.ALLOWED_FAILURE


def cause(cell: Cell) -> str | None:
    """What the panel's summary line says after the state: the legend text, if any."""
    text = footnote_text(cell)
    if text is None and cell.category and cell.state is not State.SUCCESS:
        text = one_line(cell.category.legend)
    return text


def trend_view(points: list[TrendPoint]) -> list[TrendView]:
    """Coloured squares for the last runs; nothing when there is no history yet."""
    if len(points) < 2:
        return []
    views = []
    for point in points:
        if point.state is None:
            views.append(TrendView("st-absent", f"{point.run_id}: not in this run"))
        else:
            s = style(point.state)
            views.append(TrendView(s.css_class, f"{point.run_id}: {s.label}"))
    return views


def cell_css(cell: Cell, regressed: bool) -> str:
    classes = [style(cell.state).css_class, *(f"flag-{f.name}" for f in flags(cell))]
    if regressed:
        classes.append("regressed")
    return " ".join(classes)


def artifact_view(artifact: Artifact) -> ArtifactView:
    return ArtifactView(
        path=artifact.path,
        href=safe_href(artifact.path) or "",
        type=artifact.type,
        size=f"{human_size(artifact.size)} ({artifact.size:,} bytes)",
        sha256=artifact.sha256,
    )


def check_view(check: ImageCheck) -> CheckView:
    seconds = getattr(check, "seconds", None)
    return CheckView(
        name=one_line(check.name),
        ok=check.ok,
        status="ok" if check.ok else "failed",
        css="check-ok" if check.ok else "check-failed",
        detail=one_line(check.detail),
        image=one_line(check.image),
        seconds=f"{seconds:.2f} s" if isinstance(seconds, (int, float)) else "",
    )


@dataclass(frozen=True)
class ViewInputs:
    results: RunResults
    legend: Legend
    run_dir: Path | None
    trends: dict[str, list[TrendPoint]]
    comparison: Comparison | None

    def change(self, cell: Cell) -> str | None:
        if self.comparison is None:
            return None
        diff = self.comparison.by_id().get(cell.id)
        if diff is None:
            return None
        found = self.comparison.attributions.get(cell.id)
        why = f"; why: {one_line(found.headline, 300)}" if found is not None else ""
        return f"{diff.change.value} (baseline: {describe(diff.old)}){why}"

    def regressed(self, cell: Cell) -> bool:
        if self.comparison is None:
            return False
        return any(d.id == cell.id for d in self.comparison.regressions)


def detail_view(cell: Cell, inputs: ViewInputs) -> DetailView:
    s = style(cell.state)
    number = inputs.legend.number(cell)
    category = cell.category
    return DetailView(
        anchor=anchor(cell.id),
        id=cell.id,
        host=cell.host,
        row=cell.row,
        kind=cell.kind.value,
        state=s.label,
        css=cell_css(cell, inputs.regressed(cell)),
        mark=base_mark(cell, inputs.legend),
        flags=flags(cell),
        footnote=f"- {number} -" if number is not None else None,
        cause=cause(cell),
        category=category.id if category else None,
        category_legend=one_line(category.legend) if category else None,
        category_link=safe_href(category.link) if category else None,
        labels=list(category.labels) if category else [],
        reason=one_line(cell.reason) if cell.reason else None,
        excerpt=excerpt(inputs.run_dir if shows_log(cell) else None, cell),
        started=cell.started,
        finished=cell.finished,
        duration=human_duration(cell.duration),
        attempts=cell.attempts,
        voting=cell.voting,
        reused=cell.reused,
        reproducer=clean_text(cell.reproducer) if cell.reproducer else None,
        log_href=safe_href(cell.log),
        artifacts=[artifact_view(a) for a in cell.artifacts],
        checks=[check_view(c) for c in cell.checks],
        trend=trend_view(inputs.trends.get(cell.id, [])),
        change=inputs.change(cell),
    )


def grid_cell(cell: Cell, inputs: ViewInputs) -> GridCellView:
    s = style(cell.state)
    title = f"{cell.id}: {s.label}"
    if cell.category and has_named_cause(cell):
        title += f" - {one_line(cell.category.legend, 120)}"
    if cell.reason:
        title += f" - {one_line(cell.reason, 120)}"
    return GridCellView(
        mark=cell_mark(cell, inputs.legend),
        css=cell_css(cell, inputs.regressed(cell)),
        title=title,
        anchor=anchor(cell.id),
        trend=trend_view(inputs.trends.get(cell.id, [])),
    )


def metadata(results: RunResults) -> list[tuple[str, str]]:
    tree = results.dib_tree
    rows = [
        ("run", results.run_id),
        ("matrix", results.matrix),
        ("dib tree", str(tree.get("path", "-"))),
        ("dib commit", str(tree.get("commit", "-"))),
        ("engine", ", ".join(f"{k}={v}" for k, v in sorted(results.engine.items())) or "-"),
        ("started", results.started or "-"),
        ("finished", results.finished or "-"),
        ("duration", human_duration(run_duration(results))),
    ]
    for key, value in sorted(results.options.items()):
        rows.append((f"option {key}", str(value)))
    rows += shard_rows(results)
    if results.interrupted:
        rows.append(("interrupted", "yes: results are partial"))
    return [(k, one_line(v)) for k, v in rows]


def comparison_view(comparison: Comparison, known: set[str]) -> ComparisonView:
    rows = [
        ChangeRow(
            change=d.change.value,
            id=d.id,
            anchor=anchor(d.id) if d.id in known else None,
            before=describe(d.old),
            now=describe(d.new),
            voting=d.voting,
            why=why_lines(comparison, d.id),
        )
        for d in comparison.diffs
    ]
    return ComparisonView(summary_line(comparison), comparison.old_run, rows)


def why_lines(comparison: Comparison, cell_id: str) -> list[str]:
    """The attribution of a regression or fix, one line per entry (details joined)."""
    found = comparison.attributions.get(cell_id)
    if found is None:
        return []
    return [one_line(entry + (": " + "; ".join(details) if details else ""), 600)
            for entry, details in found.entries()]


def build_view(inputs: ViewInputs, transpose: bool = False) -> ReportView:
    results = inputs.results
    grid = build_grid(results, transpose)
    rows = [
        GridRowView(r.label, [grid_cell(c, inputs) if c else None for c in r.cells])
        for r in grid.rows
    ]
    details = {c.id: detail_view(c, inputs) for c in results.cells}
    hosts = [
        HostSection(
            host,
            results.host_images.get(host),
            [details[c.id] for c in grid_order(results) if c.host == host],
        )
        for host in results.hosts
    ]
    counts = results.counts()
    return ReportView(
        title=f"dib-matrix run {results.run_id}",
        run_id=results.run_id,
        interrupted=results.interrupted,
        metadata=metadata(results),
        host_images=sorted(results.host_images.items()),
        counts=[CountView(s.label, s.css_class, counts[s.state.value])
                for s in STYLES.values() if counts.get(s.state.value)],
        rate=rate_text(results),
        corner=grid.corner,
        columns=grid.columns,
        grid=rows,
        legend=inputs.legend.entries,
        legend_links={e.number: safe_href(e.link) for e in inputs.legend.entries},
        states=list(STYLES.values()),
        hosts=hosts,
        uncategorized=[details[c.id] for c in _uncategorized(results)],
        comparison=comparison_view(inputs.comparison, set(details))
        if inputs.comparison else None,
    )


def _uncategorized(results: RunResults) -> list[Cell]:
    order = {c.id: i for i, c in enumerate(grid_order(results))}
    return sorted(uncategorized(results), key=lambda c: order[c.id])
