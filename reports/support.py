"""The support table: every host x row over the last N runs of an archive.

Pure: it reads a list of runs (``RunResults``) and, optionally, the last-good cells of
the output directory (they outlive collected runs). For each cell, over the window:

- ``supported``: every verdict in the window is a success;
- ``broken since <run>``: the newest verdicts are failures and every verdict before
  them a success (one change, green to red; all red: since the window's first run);
- ``flaky``: both, any other way (red then green, or back and forth);
- ``not run``: no verdict in the window (never planned, excluded, only engine errors
  or cancellations).

A *verdict* is a success or a failure of the build: ``failed``, ``timeout``, an
allowed failure, or a skip whose cause is named (``missing dependency``: the host
cannot). An engine ``error``, an exclusion, a cancellation or a pending cell says
nothing about support. A broken or flaky cell names the cause of its newest failure,
as a numbered footnote (distinct legends, distinct numbers). Each cell also gives its
last green run and date: the later of its last success in the window and its last-good
(which outlives collected runs).

Renderers: markdown (what a project puts in its docs) and JSON here; HTML is
``reports.supportview`` with the templates.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reports.legend import FIRST_FOOTNOTE, LEGEND_LIMIT, has_named_cause
from reports.markdown import code, escape
from reports.sanitize import one_line
from reports.styles import style
from results.lastgood import LastGood
from results.model import Cell, RunResults, State

DEFAULT_RUNS = 10


class Status(str, enum.Enum):
    SUPPORTED = "supported"
    BROKEN = "broken"
    FLAKY = "flaky"
    NOT_RUN = "not run"


@dataclass(frozen=True)
class RunRef:
    run_id: str
    date: str  # the day the run started (YYYY-MM-DD), "" when unknown


@dataclass(frozen=True)
class Point:
    """One run of the window, as one cell saw it (oldest first in an entry)."""

    run: RunRef
    state: State | None  # None: the cell was not in that run
    duration: float | None


@dataclass(frozen=True)
class SupportEntry:
    host: str
    row: str
    status: Status
    points: tuple[Point, ...]
    since: RunRef | None = None  # broken: the first run of the trailing failures
    cause: str | None = None  # broken or flaky: the newest failure's legend
    footnote: int | None = None
    last_green: RunRef | None = None
    failures: int = 0
    verdicts: int = 0

    @property
    def cell_id(self) -> str:
        return f"{self.host}.{self.row}"

    @property
    def text(self) -> str:
        """The words in the grid: ``broken since 2025-06-08 - 1 -``."""
        words = self.status.value
        if self.status is Status.BROKEN and self.since is not None:
            words += f" since {self.since.date or self.since.run_id}"
        elif self.status is Status.FLAKY:
            words += f" ({self.failures} of {self.verdicts} failed)"
        return words + (f" - {self.footnote} -" if self.footnote is not None else "")


@dataclass(frozen=True)
class SupportTable:
    runs: tuple[RunRef, ...]  # the window, oldest first
    hosts: tuple[str, ...]
    rows: tuple[str, ...]
    entries: Mapping[tuple[str, str], SupportEntry]  # (host, row) -> entry
    causes: tuple[str, ...]  # footnote texts, numbered from FIRST_FOOTNOTE

    def entry(self, host: str, row: str) -> SupportEntry:
        return self.entries[(host, row)]


# ---------------------------------------------------------------- building


def build_table(runs: Iterable[RunResults], n: int = DEFAULT_RUNS,
                last_good: Mapping[str, RunRef] | None = None) -> SupportTable:
    """The table over the newest ``n`` of ``runs``; ``last_good`` (cell id -> the run of
    its last-good) answers "last green" for a cell with no success in the window."""
    window = sorted(runs, key=lambda r: (r.started or "", r.run_id))[-n:] if n > 0 else []
    refs = tuple(RunRef(run.run_id, _day(run.started)) for run in window)
    hosts = _ordered(run.hosts for run in reversed(window))
    rows = _ordered(run.rows for run in reversed(window))
    by_run = [{(c.host, c.row): c for c in run.cells} for run in window]
    causes: list[str] = []
    entries = {}
    for row in rows:  # reading order of the table: footnotes number top to bottom
        for host in hosts:
            cells = [found.get((host, row)) for found in by_run]
            entries[(host, row)] = _entry(host, row, refs, cells, causes,
                                          (last_good or {}).get(f"{host}.{row}"))
    return SupportTable(refs, hosts, rows, entries, tuple(causes))


def last_good_refs(records: Mapping[str, LastGood]) -> dict[str, RunRef]:
    """Cell id -> the run of its last-good (``results.lastgood.read_all``)."""
    return {cell_id: RunRef(good.run_id, _day(good.date)) for cell_id, good in records.items()}


def _entry(host: str, row: str, refs: tuple[RunRef, ...], cells: list[Cell | None],
           causes: list[str], last_good: RunRef | None) -> SupportEntry:
    points = tuple(Point(ref, cell.state if cell else None, _duration(cell))
                   for ref, cell in zip(refs, cells))
    verdicts = [(ref, cell) for ref, cell in zip(refs, cells) if cell and _verdict(cell)]
    greens = [ref for ref, cell in verdicts if cell.state is State.SUCCESS]
    reds = [(ref, cell) for ref, cell in verdicts if cell.state is not State.SUCCESS]
    last_green = _newer(greens[-1] if greens else None, last_good)
    if not verdicts:
        return SupportEntry(host, row, Status.NOT_RUN, points, last_green=last_green)
    if not reds:
        return SupportEntry(host, row, Status.SUPPORTED, points, last_green=last_green,
                            verdicts=len(verdicts))
    status, since = _status([cell.state is State.SUCCESS for _, cell in verdicts],
                            [ref for ref, _ in verdicts])
    cause = _cause(reds[-1][1])
    if cause not in causes:
        causes.append(cause)
    return SupportEntry(host, row, status, points, since, cause,
                        FIRST_FOOTNOTE + causes.index(cause), last_green, len(reds),
                        len(verdicts))


def _status(green: list[bool], refs: list[RunRef]) -> tuple[Status, RunRef | None]:
    """Broken since the first of the trailing failures when only successes precede them;
    flaky otherwise (``green`` has both values)."""
    if green[-1]:
        return Status.FLAKY, None
    start = len(green)
    while start > 0 and not green[start - 1]:
        start -= 1
    if all(green[:start]):
        return Status.BROKEN, refs[start]
    return Status.FLAKY, None


def _newer(one: RunRef | None, other: RunRef | None) -> RunRef | None:
    """The later of two runs (by date, then id: ids start with their time)."""
    if one is None or other is None:
        return one or other
    return max(one, other, key=lambda ref: (ref.date, ref.run_id))


def _verdict(cell: Cell) -> bool:
    """Whether the cell's state says something about support (see the module's text)."""
    if cell.state in (State.SUCCESS, State.FAILED, State.TIMEOUT, State.ALLOWED_FAILURE):
        return True
    return cell.state is State.SKIPPED and cell.category is not None


def _cause(cell: Cell) -> str:
    """The failure's legend, else its state's words (an uncategorized failure, a timeout)."""
    if has_named_cause(cell) and cell.category is not None:
        return one_line(cell.category.legend, LEGEND_LIMIT)
    return style(cell.state).label + (" (uncategorized: see the log)"
                                      if cell.state is State.FAILED else "")


def _duration(cell: Cell | None) -> float | None:
    if cell is None or cell.reused or not isinstance(cell.duration, (int, float)):
        return None  # a reused cell's time is not what the cell costs
    return float(cell.duration)


def _ordered(lists: Iterable[list[str]]) -> tuple[str, ...]:
    """Names in the order the newest run has them, older runs' others after."""
    return tuple(dict.fromkeys(name for names in lists for name in names))


def _day(stamp: str | None) -> str:
    """The day (YYYY-MM-DD) a timestamp starts with, "" for anything else."""
    match = _DAY.match(stamp or "")
    try:
        return dt.date.fromisoformat(match.group(0)).isoformat() if match else ""
    except ValueError:  # 2025-13-99
        return ""


_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?![0-9])")


# ---------------------------------------------------------------- markdown and JSON


def render_markdown(table: SupportTable) -> str:
    """The grid (rows x hosts), the causes, then every cell's last green run."""
    if not table.runs:
        return "No runs to build a support table from.\n"
    first, last = table.runs[0], table.runs[-1]
    lines = [f"Support of each host and target over the last {len(table.runs)} runs "
             f"({first.date or '?'} to {last.date or '?'}; runs {code(first.run_id, 80)} "
             f"to {code(last.run_id, 80)}).", "",
             "| target \\\\ host | " + " | ".join(code(h) for h in table.hosts) + " |",
             "|---|" + "---|" * len(table.hosts)]
    for row in table.rows:
        cells = [_markdown_text(table.entry(host, row)) for host in table.hosts]
        lines.append(f"| {code(row)} | " + " | ".join(cells) + " |")
    if table.causes:
        lines += ["", "Causes:", ""]
        lines += [f"- `- {FIRST_FOOTNOTE + i} -` {escape(text)}"
                  for i, text in enumerate(table.causes)]
    lines += ["", "| cell | status | since | last green run | date |", "|---|---|---|---|---|"]
    for entry in table.entries.values():
        since = code(entry.since.run_id, 80) if entry.since else ""
        green = entry.last_green
        lines.append(f"| {code(entry.cell_id)} | {_markdown_text(entry)} | {since} | "
                     f"{code(green.run_id, 80) if green else 'none'} | "
                     f"{green.date if green else ''} |")
    return "\n".join(lines) + "\n"


def _markdown_text(entry: SupportEntry) -> str:
    """:attr:`SupportEntry.text` in markdown: our words, digits and dates as they are, a
    run id (when a run has no date) as code."""
    if entry.status is Status.BROKEN and entry.since is not None and not entry.since.date:
        text = f"{entry.status.value} since {code(entry.since.run_id, 80)}"
        return text + (f" - {entry.footnote} -" if entry.footnote is not None else "")
    return entry.text


def to_json(table: SupportTable) -> dict:
    def ref(value: RunRef | None) -> dict | None:
        return {"run_id": value.run_id, "date": value.date} if value else None

    return {
        "runs": [ref(r) for r in table.runs],
        "hosts": list(table.hosts),
        "rows": list(table.rows),
        "causes": [{"footnote": FIRST_FOOTNOTE + i, "legend": text}
                   for i, text in enumerate(table.causes)],
        "cells": [{"id": e.cell_id, "host": e.host, "row": e.row, "status": e.status.value,
                   "text": e.text, "since": ref(e.since), "cause": e.cause,
                   "footnote": e.footnote, "last_green": ref(e.last_green),
                   "failures": e.failures, "verdicts": e.verdicts,
                   "states": [p.state.value if p.state else None for p in e.points]}
                  for e in table.entries.values()],
    }


def render_json(table: SupportTable) -> str:
    return json.dumps(to_json(table), indent=2, sort_keys=True) + "\n"
