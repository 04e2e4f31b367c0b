"""Nightly history: the runs under an output directory and each cell's recent trend
(computed only; reports/html.py renders them and the index)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from results.archive import OutDir, Warn, warn_on_stderr
from results.model import RunResults, State

DEFAULT_TREND = 10


@dataclass(frozen=True)
class TrendPoint:
    run_id: str
    state: State | None  # None: the cell was not in that run


def load_runs(out_dir: Path, warn: Warn = warn_on_stderr) -> list[RunResults]:
    """Every readable run directly under ``out_dir``, oldest first (``results.archive``:
    ``latest`` is not counted twice, a run that cannot be read is skipped with a warning)."""
    runs = [stored.results for stored in OutDir(out_dir).runs(warn=warn)]
    return sorted(runs, key=lambda r: (r.started or "", r.run_id))


def with_current(runs: list[RunResults], current: RunResults | None) -> list[RunResults]:
    """``runs`` with ``current`` in place of (or after) the stored copy of the same run."""
    if current is None:
        return runs
    others = [r for r in runs if r.run_id != current.run_id]
    return sorted([*others, current], key=lambda r: (r.started or "", r.run_id))


def trends_from(runs: list[RunResults], n: int = DEFAULT_TREND) -> dict[str, list[TrendPoint]]:
    """For each cell id of the last ``n`` runs, its state in each of them (oldest first)."""
    recent = runs[-n:] if n > 0 else []
    states = [{c.id: c.state for c in run.cells} for run in recent]
    ids = sorted({cell_id for by_id in states for cell_id in by_id})
    return {
        cell_id: [TrendPoint(run.run_id, by_id.get(cell_id)) for run, by_id in zip(recent, states)]
        for cell_id in ids
    }


def trends(out_dir: Path, n: int = DEFAULT_TREND) -> dict[str, list[TrendPoint]]:
    """Each cell's states over the last ``n`` runs stored under ``out_dir``."""
    return trends_from(load_runs(out_dir), n)

