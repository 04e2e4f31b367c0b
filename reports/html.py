"""The HTML report and the history index: jinja2 templates, autoescape on.

Everything a template shows is built in ``reports.htmlview``; the output is one
self-contained file (inline CSS, a few lines of inline script, no fetches). Every value
a template prints passes :func:`shown` first (the environment's ``finalize``), so no
control character or terminal escape from a run directory reaches the page, whichever
template or field it comes through; jinja2's autoescape then makes it HTML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from reports.compare import compare
from reports.history import TrendPoint, load_runs, with_current
from reports.htmlview import (
    CountView,
    ViewInputs,
    build_view,
    human_duration,
    run_duration,
    run_href,
)
from reports.legend import build_legend
from reports.sanitize import safe_text
from reports.styles import STYLES
from reports.summary import counted_failures
from reports.support import RunRef, SupportTable, build_table, last_good_refs
from reports.supportview import build_support_view
from results import lastgood
from results.archive import OutDir
from results.model import RunResults
from results.store import write_atomically

TEMPLATES = Path(__file__).resolve().parent / "templates"


def shown(value: Any) -> Any:
    """A value on its way into a page: control characters replaced (Markup stays Markup)."""
    if isinstance(value, Markup):
        return Markup(safe_text(str(value)))
    return safe_text(value) if isinstance(value, str) else value


def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,  # logs are untrusted: every value is escaped, always
        finalize=shown,  # ... and cleaned of control characters first
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
        href=run_href(run.run_id),
        started=run.started or "-",
        duration=human_duration(run_duration(run)),
        counts=[CountView(s.label, s.css_class, counts[s.state.value])
                for s in STYLES.values() if counts.get(s.state.value)],
        passed=counts.get("success", 0),
        failed=len(counted_failures(run)),
        rate="n/a" if rate is None else f"{rate:.0%}",
        interrupted=run.interrupted,
    )


def render_index(runs: list[RunResults], last_good: Mapping[str, RunRef] | None = None
                 ) -> str:
    """index.html over ``runs`` in the order given (newest first, by convention), with
    the support table of the newest of them (``last_good``: cell id -> its last-good's
    run, for "last green" beyond them)."""
    rows = [index_row(r) for r in runs]
    support = build_support_view(build_table(runs, last_good=last_good))
    return environment().get_template("index.html.j2").render(
        rows=rows, states=list(STYLES.values()), support=support
    )


def render_support(table: SupportTable) -> str:
    """``dib-matrix support --format html``: the support grid as a page of its own."""
    return environment().get_template("support.html.j2").render(
        support=build_support_view(table), states=list(STYLES.values()))


def write_index(out_dir: Path, current: RunResults | None = None,
                runs: list[RunResults] | None = None) -> Path:
    """Write ``<out>/index.html`` listing every run, newest first; returns its path.
    ``runs``: the runs under ``out_dir`` when the caller read them already (a bad run
    is then warned about once, not once per reading)."""
    runs = with_current(load_runs(out_dir) if runs is None else runs, current)
    path = out_dir / "index.html"
    last_good = last_good_refs(lastgood.read_all(OutDir(out_dir)))
    write_atomically(path, render_index(list(reversed(runs)), last_good))
    return path
