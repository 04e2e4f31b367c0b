"""Excerpts of a cell's log for the HTML report: the evidence line in context, or the tail.

Reporters only read. Logs can be large, so at most ``MAX_BYTES`` from the end are
decoded; line numbers still count from the start of the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reports.sanitize import clean_line, clean_text
from results.archive import RunDir
from results.model import Cell
from results.safefile import count_newlines, open_regular

MAX_BYTES = 1024 * 1024
CONTEXT = 6  # lines shown before and after the evidence line
TAIL = 20  # lines shown when there is no evidence line to find


@dataclass(frozen=True)
class ExcerptLine:
    number: int | None  # 1-based line number in the log, None when not from the log
    text: str
    highlight: bool


@dataclass(frozen=True)
class Excerpt:
    lines: list[ExcerptLine]
    source: str  # "log" or "evidence"
    omitted_before: bool  # the log has earlier lines not shown


def log_path(run_dir: Path | None, cell: Cell) -> Path | None:
    """The cell's log inside ``run_dir``; None if absent or pointing outside the run."""
    if run_dir is None:
        return None
    path = RunDir(run_dir).recorded(cell.log)
    return path if path is not None and path.is_file() else None


def read_tail(path: Path, max_bytes: int = MAX_BYTES) -> tuple[int, list[str]]:
    """(number of the first returned line, cleaned lines) of the end of a log."""
    with open_regular(path) as handle:
        start = max(handle.seek(0, 2) - max_bytes, 0)
        handle.seek(start)
        data = handle.read(max_bytes)
        first = 1
        if start:
            cut = data.find(b"\n") + 1  # drop the partial first line
            handle.seek(0)
            first = count_newlines(handle, start + cut) + 1
            data = data[cut:]
    text = data.decode("utf-8", errors="replace")
    return first, [clean_line(line) for line in text.splitlines()]


def _find(lines: list[str], needle: str) -> int | None:
    for index in range(len(lines) - 1, -1, -1):
        if needle in lines[index]:
            return index
    return None


def excerpt(run_dir: Path | None, cell: Cell, context: int = CONTEXT, tail: int = TAIL) -> Excerpt:
    """The evidence line with ``context`` lines around it, else the last ``tail`` lines."""
    evidence = clean_text(cell.evidence or "").strip("\n")
    path = log_path(run_dir, cell)
    if path is None:
        lines = evidence.split("\n") if evidence else []
        mark = len(lines) == 1
        return Excerpt([ExcerptLine(None, t, mark) for t in lines], "evidence", False)
    first, lines = read_tail(path)
    needle = evidence.split("\n")[-1].strip() if evidence else ""
    hit = _find(lines, needle) if needle and "\n" not in evidence else None
    if hit is None:
        start = max(len(lines) - tail, 0)
        end = len(lines)
    else:
        start, end = max(hit - context, 0), min(hit + context + 1, len(lines))
    shown = [
        ExcerptLine(first + i, lines[i], i == hit) for i in range(start, end)
    ]
    return Excerpt(shown, "log", first + start > 1)
