"""What earlier runs say of each cell: how long it takes, and where it last ran.

The scheduler starts the cells with the most expected work behind them first; a cell's
last real duration is a better guess than its kind's (a warm vm build takes 11 s, its
boot 40 s, a cold arm64 build 75 s). A reused or unfinished cell says nothing of how
long the cell takes and is passed over; runs that cannot be read are skipped quietly
(the estimate only orders the cells).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from results.archive import OutDir
from results.model import Cell

T = TypeVar("T")

RUNS_READ = 5  # the newest runs looked at


def past_durations(out_dir: Path, cell_ids: Iterable[str], exclude: str | None = None,
                   runs: int = RUNS_READ) -> dict[str, float]:
    """cell id -> seconds of its newest run that ran it (not reused), for ``cell_ids``."""
    def seconds(cell: Cell) -> float | None:
        if cell.attempts and cell.duration and cell.duration > 0:
            return float(cell.duration) / max(1, cell.attempts)
        return None

    return _newest(out_dir, cell_ids, exclude, runs, seconds)


def past_nodes(out_dir: Path, cell_ids: Iterable[str], exclude: str | None = None,
               runs: int = RUNS_READ) -> dict[str, str]:
    """cell id -> the swarm node its newest run ran it on: that node's image cache holds
    the cell's cached tree, so placing it there again makes its build warm."""
    return _newest(out_dir, cell_ids, exclude, runs, lambda cell: cell.node or None)


def _newest(out_dir: Path, cell_ids: Iterable[str], exclude: str | None, runs: int,
            value: Callable[[Cell], T | None]) -> dict[str, T]:
    """cell id -> ``value`` of the cell in the newest run that ran it (not reused) and
    for which ``value`` is not None."""
    wanted = set(cell_ids)
    found: dict[str, T] = {}
    for stored in OutDir(out_dir).runs(runs, warn=lambda _: None, exclude=exclude):
        for cell in stored.results.cells:
            if cell.id in wanted and cell.id not in found and not cell.reused:
                got = value(cell)
                if got is not None:
                    found[cell.id] = got
        if len(found) == len(wanted):
            break
    return found
