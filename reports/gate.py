"""Release gating: the exit code a run (or a comparison) ends with.

Exit codes of ``dib-matrix``: 0 ok, 1 failures/regressions, 2 usage or
configuration error, 130 interrupted.
"""

from __future__ import annotations

from reports import bump
from reports.compare import compare
from results.model import Cell, RunResults, State

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def is_voting(cell: Cell) -> bool:
    return cell.voting and cell.state is not State.ALLOWED_FAILURE


def gating_cells(results: RunResults, baseline: RunResults | None = None,
                 bump_mode: bump.BumpMode | None = None) -> list[Cell]:
    """The cells that fail the gate.

    A bump run (``bump_mode``, whose pinned run is the baseline): voting cells that
    regressed for a cause other than the mirror, the network or the engine.
    With a baseline: voting cells that regressed (success before, not now).
    Without: voting cells that failed, timed out or hit an engine error. Skipped
    cells follow a failure that is itself counted (or allowed), so never count.
    """
    if bump_mode is not None:
        return bump.gating_cells(results, bump_mode)
    if baseline is not None:
        return [d.new for d in compare(baseline, results).voting_regressions if d.new]
    return [c for c in results.cells if is_voting(c) and c.state.is_failure]


def gate_exit_code(results: RunResults, baseline: RunResults | None = None,
                   bump_mode: bump.BumpMode | None = None) -> int:
    """0 when the gate passes, 1 when a voting cell regressed (or failed, without baseline;
    in a bump run: regressed for a cause other than the mirror, the network or the engine)."""
    return EXIT_FAILURES if gating_cells(results, baseline, bump_mode) else EXIT_OK
