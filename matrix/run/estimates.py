"""How long each cell is expected to take: its duration in the newest earlier runs.

The scheduler starts the cells with the most expected work behind them first; a cell's
last real duration is a better guess than its kind's (a warm vm build takes 11 s, its
boot 40 s, a cold arm64 build 75 s). A reused or unfinished cell says nothing of how
long the cell takes and is passed over; runs that cannot be read are skipped quietly
(the estimate only orders the cells).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from results.archive import OutDir

RUNS_READ = 5  # the newest runs looked at


def past_durations(out_dir: Path, cell_ids: Iterable[str], exclude: str | None = None,
                   runs: int = RUNS_READ) -> dict[str, float]:
    """cell id -> seconds of its newest run that ran it (not reused), for ``cell_ids``."""
    wanted = set(cell_ids)
    found: dict[str, float] = {}
    for stored in OutDir(out_dir).runs(runs, warn=lambda _: None, exclude=exclude):
        for cell in stored.results.cells:
            if (cell.id in wanted and cell.id not in found and not cell.reused
                    and cell.attempts and cell.duration and cell.duration > 0):
                found[cell.id] = float(cell.duration) / max(1, cell.attempts)
        if len(found) == len(wanted):
            break
    return found
