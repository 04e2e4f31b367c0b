"""Plain data for the HTML templates: every decision is made here, the templates only lay out.

Strings in these views are raw text; jinja2's autoescape turns them into HTML, and the
environment's ``finalize`` (reports/html.py) replaces control characters in every value.

Links: a report links only inside itself (``#cell-...``) and into its run directory
(logs, images; the index into each run's directory). Every ``href`` is a plain relative
path built from checked components (:func:`safe_href`, :func:`run_href`): results.json
is untrusted, so a URL in it (a category's documentation, a log "path") is shown as
text for a reader to copy, never as a link to follow.

One exception, by design: a known issue's ticket (:func:`ticket_href`). The run wrote it
from the catalogue, checked (``results.weblinks``); results.json is read back, so the
same rule is applied again here and only an http(s) link passes, shown with its whole
address as the link's text and opened with ``rel="noopener noreferrer"``. It is kept in
results.json rather than looked up in a catalogue at render time because a report is
re-rendered from results.json alone (``dib-matrix report``, merged shards), where the
catalogue the run used is not at hand.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

from reports import investigation
from reports.compare import Comparison, describe, summary_line
from reports.excerptview import ExcerptLineView, excerpt_lines
from reports.grid import build_grid
from reports.history import TrendPoint
from reports.investigation import InvestigationView
from reports.knownissues import KnownIssues
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
from reports.sanitize import UNSAFE_RE, clean_text, one_line
from reports.shardinfo import shard_rows
from reports.styles import STYLES, Flag, StateStyle, flags, style
from reports.summary import RETRY_NOTE_LIMIT, rate_text, uncategorized
from results import lastgood
from results.archive import LAST_GOOD_DIR, STATE_DIR, OutDir
from results.model import SKIPPED_PREFIX, Artifact, Cell, ImageCheck, RunResults, State
from results.names import is_run_id
from results.weblinks import is_web_url

NODE_NAME_LIMIT = 120  # characters of a swarm node's name (the node names itself)


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
    href: str | None
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
class KnownIssueView:
    """A failure's known issue: the ticket (a checked http(s) link) and its counts."""

    href: str
    ticket: str
    seen: str


@dataclass(frozen=True)
class LastGoodView:
    """Where a failed cell's last success is: its run's report while the run exists,
    else the archived files' place (text, relative to the output directory)."""

    run_id: str
    date: str
    href: str | None
    archived: str


def last_good_views(results: RunResults, run_dir: Path | None) -> dict[str, LastGoodView]:
    """Each failed cell's last-good in the output directory holding ``run_dir``."""
    if run_dir is None:
        return {}
    out = OutDir(run_dir.parent)
    found = {}
    for cell in results.cells:
        if not shows_log(cell):
            continue
        try:
            good = lastgood.read(out, cell.host, cell.row)
        except (OSError, ValueError):  # unreadable (LastGoodError), a hostile name
            continue
        if good is None or good.run_id == results.run_id:
            continue
        href = run_href(good.run_id) if out.run(good.run_id).path.is_dir() else None
        found[cell.id] = LastGoodView(
            good.run_id, good.date, f"../{href}#{anchor(cell.id)}" if href else None,
            f"{STATE_DIR}/{LAST_GOOD_DIR}/{cell.host}/{cell.row}/")
    return found


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
    category_docs: str | None  # the category's documentation URL, shown as text
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
    # A failure without a precise cause: its log lines most unlike successful builds.
    unusual: list[ExcerptLineView] = field(default_factory=list)
    known_issue: KnownIssueView | None = None
    also_on: str | None = None  # "also on a, b" or "only on this host"
    last_good: LastGoodView | None = None  # a failure's last success, kept in the archive
    retry: str | None = None  # why failed attempts were tried again or not
    tree_cache: str | None = None  # what dib's installed-tree cache did (a build's)
    node: str | None = None  # the swarm node the cell ran on


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
    legend_docs: dict[int, str | None]  # footnote number -> documentation URL, as text
    states: list[StateStyle]
    hosts: list[HostSection]
    uncategorized: list[DetailView]
    comparison: ComparisonView | None
    legend_known: dict[int, KnownIssueView] = field(default_factory=dict)  # by footnote
    # Investigated regressions (matrix.run.investigate), each variant's log as an href
    investigations: list[tuple[InvestigationView, dict[str, str | None]]] = field(
        default_factory=list)


def anchor(cell_id: str) -> str:
    return "cell-" + re.sub(r"[^A-Za-z0-9_.-]", "_", cell_id)


def safe_href(path: str | None) -> str | None:
    """An href into the run directory: a plain relative path (``logs/h/a%3Aboot.log``),
    each component quoted; None for anything else (a URL, an absolute path, ``..``,
    empty components, backslashes or control characters)."""
    if not path or "\\" in path or UNSAFE_RE.search(path) or urlsplit(path).scheme:
        return None
    components = path.split("/")
    if any(part in ("", ".", "..") for part in components):
        return None
    return "/".join(quote(part, safe="") for part in components)


def ticket_href(url: str | None) -> str | None:
    """A known issue's ticket as a link: an http(s) URL that passes ``results.weblinks``
    (read back from results.json, so asked again), else None."""
    return url if url is not None and is_web_url(url) else None


def run_href(run_id: str) -> str | None:
    """The index's link to a run's report, for a valid run id (its directory's name) only."""
    return f"{quote(run_id, safe='')}/report.html" if is_run_id(run_id) else None


def docs_text(url: str | None) -> str | None:
    """A documentation link as text to show (one line, bounded), not to follow."""
    text = one_line(url or "", 300)
    return text or None


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
        href=safe_href(artifact.path),
        type=artifact.type,
        size=f"{human_size(artifact.size)} ({artifact.size:,} bytes)",
        sha256=artifact.sha256,
    )


def check_view(check: ImageCheck) -> CheckView:
    seconds = getattr(check, "seconds", None)
    return CheckView(
        name=one_line(check.name),
        ok=check.ok,
        status=("failed" if not check.ok
                else "skipped" if check.detail.startswith(SKIPPED_PREFIX) else "ok"),
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

    @functools.cached_property
    def known(self) -> KnownIssues:
        """Known issues and also-on, the counts from the record beside ``run_dir``."""
        return KnownIssues.load(self.results, self.run_dir)

    def known_issue(self, cell: Cell) -> KnownIssueView | None:
        found = self.known.known_issue(cell)
        href = ticket_href(found[0]) if found else None
        return None if found is None or href is None else KnownIssueView(
            href, found[0], one_line(found[1], 400))

    @functools.cached_property
    def last_goods(self) -> dict[str, LastGoodView]:
        return last_good_views(self.results, self.run_dir)

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
        category_docs=docs_text(category.link) if category else None,
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
        unusual=excerpt_lines(cell),
        known_issue=inputs.known_issue(cell),
        also_on=_also_on(cell, inputs),
        last_good=inputs.last_goods.get(cell.id),
        retry=one_line(cell.retry, RETRY_NOTE_LIMIT) if cell.retry else None,
        tree_cache=_tree_cache(cell),
        node=one_line(cell.node, NODE_NAME_LIMIT) if cell.node else None,
    )


def _tree_cache(cell: Cell) -> str | None:
    said = cell.provenance.get("tree_cache") if isinstance(cell.provenance, dict) else None
    return one_line(said, RETRY_NOTE_LIMIT) if isinstance(said, str) and said else None


def _also_on(cell: Cell, inputs: ViewInputs) -> str | None:
    text = inputs.known.also_on_text(cell)
    return one_line(text, 400) if text else None


def legend_known(inputs: ViewInputs) -> dict[int, KnownIssueView]:
    """Footnote number -> the known issue of its cells (the first that has one)."""
    cells = {c.id: c for c in inputs.results.cells}
    found = {}
    for entry in inputs.legend.entries:
        views = (inputs.known_issue(cells[i]) for i in entry.cells if i in cells)
        view = next((v for v in views if v is not None), None)
        if view is not None:
            found[entry.number] = view
    return found


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
        legend_docs={e.number: docs_text(e.link) for e in inputs.legend.entries},
        states=list(STYLES.values()),
        hosts=hosts,
        uncategorized=[details[c.id] for c in _uncategorized(results)],
        comparison=comparison_view(inputs.comparison, set(details))
        if inputs.comparison else None,
        legend_known=legend_known(inputs),
        investigations=[(found, {v.cell: safe_href(v.log) for v in found.variants})
                        for found in investigation.views(results)],
    )


def _uncategorized(results: RunResults) -> list[Cell]:
    order = {c.id: i for i, c in enumerate(grid_order(results))}
    return sorted(uncategorized(results), key=lambda c: order[c.id])
