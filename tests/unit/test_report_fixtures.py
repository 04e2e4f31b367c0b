"""Results fixtures shared by the report tests (and a check that they are what they claim).

``run_all_states`` (tests/unit/golden/) is a realistic run directory: four hosts,
every cell state, passed-on-retry, reused and non-voting cells, logs, images, and
a ``<script>`` line in an uncategorized failure's evidence.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from results.model import Category, Cell, CellKind, RunResults, State, load

GOLDEN = Path(__file__).resolve().parent / "golden"
ALL_STATES = GOLDEN / "run_all_states"


def all_states() -> RunResults:
    return load(ALL_STATES)


def copy_all_states(dest: Path) -> Path:
    """A writable copy of the all-states run directory; returns the run directory."""
    run_dir = dest / all_states().run_id
    shutil.copytree(ALL_STATES, run_dir)
    return run_dir


def category(cat_id: str, legend: str | None = None) -> Category:
    return Category(cat_id, legend or cat_id.replace("-", " "), labels=[cat_id])


def make_cell(host: str, row: str, state: State = State.SUCCESS, **kw) -> Cell:
    kinds = {"hostgen": CellKind.HOSTGEN, "tox": CellKind.CHECK}
    kind = kinds.get(row, CellKind.BOOT if row.endswith(":boot") else CellKind.BUILD)
    kw.setdefault("attempts", 0 if state in (State.SKIPPED, State.EXCLUDED) else 1)
    return Cell(host, row, kind, state, **kw)


def make_run(cells: list[Cell], run_id: str = "run-1", started: str | None = None) -> RunResults:
    hosts = list(dict.fromkeys(c.host for c in cells))
    rows = list(dict.fromkeys(c.row for c in cells))
    return RunResults(run_id, "matrix.yaml", hosts, rows, cells, started=started)


def test_all_states_covers_every_finished_state():
    results = all_states()
    finished = {s for s in State if s is not State.PENDING}
    assert {c.state for c in results.cells} == finished
    assert any(c.passed_on_retry for c in results.cells)
    assert any(c.reused for c in results.cells)
    assert any(not c.voting for c in results.cells)
    assert any("<script>" in (c.evidence or "") for c in results.cells)
    assert len(results.hosts) >= 3


def test_all_states_logs_exist_for_finished_cells():
    for cell in all_states().cells:
        if cell.log:
            assert (ALL_STATES / cell.log).is_file(), cell.log
