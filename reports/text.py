"""The text table (tabulate, grid borders, no padding) and report.txt around it."""

from __future__ import annotations

import re
from pathlib import Path

from tabulate import DataRow, Line, TableFormat, tabulate

from reports import investigation
from reports.grid import build_grid
from reports.knownissues import KnownIssues
from reports.legend import Legend, build_legend, cell_mark
from reports.sanitize import one_line, safe_text
from reports.shardinfo import shard_lines
from reports.summary import (
    RETRY_NOTE_LIMIT,
    counts_text,
    rate_text,
    retried,
    retry_notes,
    uncategorized,
)
from results.model import RunResults

_RULE = Line("+", "-", "+", "+")
_ROW = DataRow("|", "|", "|")
# Borders: '+---+' everywhere (no '=' under the header), no padding: cells stay narrow.
SEED_GRID = TableFormat(
    lineabove=_RULE,
    linebelowheader=_RULE,
    linebetweenrows=_RULE,
    linebelow=_RULE,
    headerrow=_ROW,
    datarow=_ROW,
    padding=0,
    with_header_hide=None,
)

# (pattern found in a rendered mark, how the key shows it, meaning); listed when used.
MARKS = (
    (r"^- \d+ -", "- N -", "a named cause (or missing dependency), see the legend"),
    (r"^failed", "failed", "failed, cause not recognised (uncategorized): read the log"),
    (r"^n/a - ", "n/a - N -", "excluded by the matrix file, reason in the legend"),
    (r"^timeout", "timeout", "killed at the per-cell timeout"),
    (r"^error", "error", "the container engine failed, not the build"),
    (r"^pending", "pending", "not finished: the run was interrupted"),
    (r"\(.*try \d+", "(try N)", "passed only on attempt N, not a clean pass"),
    (r"\(.*allowed", "(allowed)", "non-voting cell: its failure never fails the gate"),
    (r"\(.*non-voting", "(non-voting)", "non-voting cell"),
    (r"\(.*reused", "(reused)", "result reused from an earlier run"),
)


def marks_key(results: RunResults) -> list[str]:
    """The key to the marks the table uses, one line each."""
    legend = build_legend(results)
    shown = [cell_mark(c, legend) for c in results.cells]
    return [
        f"  {key:<12} {meaning}"
        for pattern, key, meaning in MARKS
        if any(re.search(pattern, mark) for mark in shown)
    ]


def legend_lines(results: RunResults, legend: Legend, known: KnownIssues) -> list[str]:
    """The legend, each footnote of a known issue followed by its ticket and counts."""
    cells = {c.id: c for c in results.cells}
    lines = []
    for entry, line in zip(legend.entries, legend.lines()):
        lines.append(line)
        said = (known.known_issue_text(cells[i]) for i in entry.cells if i in cells)
        text = next((t for t in said if t), None)
        if text:
            lines.append(" " * (len(entry.label) + 1) + one_line(text, 400))
    return lines


def render_table(results: RunResults, transpose: bool = False,
                 known: KnownIssues | None = None) -> str:
    """The table and its numbered legend, exactly as printed at the end of a run;
    ``known``: the counts of known issues (without it, their tickets alone)."""
    legend = build_legend(results)
    grid = build_grid(results, transpose)
    header = [grid.corner, *(one_line(c) for c in grid.columns)]
    body = [
        [one_line(row.label), *(cell_mark(c, legend) if c else "" for c in row.cells)]
        for row in grid.rows
    ]
    # The header goes in as the first row: tabulate pads real headers by two spaces.
    table = tabulate([header, *body], tablefmt=SEED_GRID, disable_numparse=True, stralign="left")
    lines = [table]
    if legend.entries:
        lines += ["", *legend_lines(results, legend, known or KnownIssues(results))]
    return safe_text("\n".join(lines) + "\n")


def render_report(
    results: RunResults, transpose: bool = False, comparison_text: str | None = None,
    run_dir: Path | None = None,
) -> str:
    """report.txt: a heading, the table with its legend, the marks, counts and rate;
    ``run_dir`` (the run's directory) finds the known issues' counts beside it."""
    heading = f"dib-matrix run {one_line(results.run_id)} - matrix {one_line(results.matrix)}"
    started, finished = (one_line(stamp or "?") for stamp in (results.started, results.finished))
    when = f"started {started}, finished {finished}"
    if results.interrupted:
        when += " (INTERRUPTED: results are partial)"
    known = KnownIssues.load(results, run_dir)
    lines = [heading, when, *shard_lines(results), "", render_table(results, transpose, known)]
    key = marks_key(results)
    if key:
        lines += ["marks:", *key, ""]
    lines.append(counts_text(results))
    lines.append(rate_text(results))
    unnamed = uncategorized(results)
    if unnamed:
        lines.append("uncategorized failures: " + ", ".join(one_line(c.id) for c in unnamed))
    flaky = retried(results)
    if flaky:
        lines.append("passed only on retry: "
                     + ", ".join(f"{one_line(c.id)} ({c.attempts})" for c in flaky))
    noted = retry_notes(results)
    if noted:
        lines.append("retries:")
        lines += [f"  {one_line(c.id)}: {one_line(c.retry or '', RETRY_NOTE_LIMIT)}"
                  for c in noted]
    lines += investigation.text_lines(results)
    if comparison_text:
        lines += ["", comparison_text.rstrip("\n")]
    # The last guard: whatever a line above forgot to clean cannot reach a terminal.
    return safe_text("\n".join(lines) + "\n")
