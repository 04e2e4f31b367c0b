"""The HTML report and the history index: jinja2 templates, autoescape on.

Everything a template shows is built in ``reports.htmlview``; the output is one
self-contained file (inline CSS, a few lines of inline script, no fetches).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from reports.compare import compare
from reports.history import TrendPoint, load_runs, with_current
from reports.htmlview import (
    CountView,
    ViewInputs,
    build_view,
    human_duration,
    run_duration,
    safe_href,
)
from reports.legend import build_legend
from reports.styles import STYLES
from reports.summary import counted_failures
from results.model import RunResults, write_atomically

TEMPLATES = Path(__file__).resolve().parent / "templates"


def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,  # logs are untrusted: every value is escaped, always
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_html(
    results: RunResults,
    run_dir: Path | None = None,
    baseline: RunResults | None = None,
    trends: dict[str, list[TrendPoint]] | None = None,
    transpose: bool = False,
) -> str:
    """report.html; ``run_dir`` is where logs are read from for excerpts (optional)."""
    inputs = ViewInputs(
        results=results,
        legend=build_legend(results),
        run_dir=run_dir,
        trends=trends or {},
        comparison=compare(baseline, results) if baseline is not None else None,
    )
    view = build_view(inputs, transpose)
    return environment().get_template("report.html.j2").render(view=view)


@dataclass(frozen=True)
class IndexRow:
    run_id: str
    href: str | None
    started: str
    duration: str
    counts: list[CountView]
    passed: int
    failed: int
    rate: str
    interrupted: bool


def index_row(run: RunResults) -> IndexRow:
    counts = run.counts()
    rate = run.classification_rate()
    return IndexRow(
        run_id=run.run_id,
        href=safe_href(f"{run.run_id}/report.html"),
        started=run.started or "-",
        duration=human_duration(run_duration(run)),
        counts=[CountView(s.label, s.css_class, counts[s.state.value])
                for s in STYLES.values() if counts.get(s.state.value)],
        passed=counts.get("success", 0),
        failed=len(counted_failures(run)),
        rate="n/a" if rate is None else f"{rate:.0%}",
        interrupted=run.interrupted,
    )


def render_index(runs: list[RunResults]) -> str:
    """index.html over ``runs`` in the order given (newest first, by convention)."""
    rows = [index_row(r) for r in runs]
    return environment().get_template("index.html.j2").render(
        rows=rows, states=list(STYLES.values())
    )


def write_index(out_dir: Path, current: RunResults | None = None) -> Path:
    """Write ``<out>/index.html`` listing every run, newest first; returns its path."""
    runs = with_current(load_runs(out_dir), current)
    path = out_dir / "index.html"
    write_atomically(path, render_index(list(reversed(runs))))
    return path
