"""dib-matrix reports: text, HTML, JSON and JUnit views of a run's results.

Reporters only read ``results.model.RunResults`` (and the logs it points to).
The orchestrator writes results.json itself and then calls :func:`write_all`.
"""

from __future__ import annotations

from pathlib import Path

from reports.bump import BumpMode, render_bump_markdown, render_bump_text, summary_section
from reports.compare import compare, render_comparison
from reports.gate import gate_exit_code
from reports.history import load_runs, trends_from, with_current
from reports.html import render_html, write_index
from reports.junit import render_junit
from reports.markdown import render_markdown
from reports.text import render_report, render_table
from results.archive import RunDir
from results.model import RunResults
from results.store import write_atomically

__all__ = ["BumpMode", "compare", "gate_exit_code", "render_table", "write_all"]

TREND_RUNS = 10


def write_all(
    run_dir: Path,
    results: RunResults,
    baseline: RunResults | None = None,
    history_dir: Path | None = None,
    bump: BumpMode | None = None,
) -> None:
    """Write report.txt, report.html and junit.xml into ``run_dir``.

    With ``baseline`` the text and HTML reports include the comparison. With
    ``history_dir`` (the output directory holding earlier runs) the HTML report
    shows each cell's last states and ``<history_dir>/index.html`` is rewritten.
    A bump run (``bump``: its pinned run is the baseline) also gets report.txt's
    package changes per cell, bump.md (the review body) and summary.md (the markdown
    summary, with a Bump section linking bump.md).
    """
    baseline = bump.pinned if bump is not None else baseline
    results = results.grid_view()  # an investigation's variants have their own section
    comparison = render_comparison(compare(baseline, results)) if baseline else None
    if bump is not None:
        comparison = f"{comparison}\n{render_bump_text(bump, results)}"
    trends = {}
    runs: list[RunResults] = []
    if history_dir is not None:  # read once: for the trends and for the index
        runs = with_current(load_runs(history_dir), results)
        trends = trends_from(runs, TREND_RUNS)
    run = RunDir(run_dir)
    write_atomically(run.text_report, render_report(results, comparison_text=comparison,
                                                    run_dir=run_dir))
    write_atomically(
        run.html_report,
        render_html(results, run_dir=run_dir, baseline=baseline, trends=trends),
    )
    write_atomically(run.junit_report, render_junit(results))
    if bump is not None:
        write_bump_reports(run, results, bump)
    if history_dir is not None:
        write_index(history_dir, current=results, runs=runs)


def write_bump_reports(run: RunDir, results: RunResults, bump: BumpMode) -> None:
    """bump.md, the review body, and summary.md, whose Bump section links it."""
    write_atomically(run.bump_report,
                     render_bump_markdown(bump.pinned, results, bump.infrastructure))
    write_atomically(run.summary_report,
                     render_markdown(results, bump.pinned, run.path,
                                     appendix=summary_section(bump, results)))
