"""Results for the report tests: small factories and the golden all-states run.

``run_all_states`` (tests/unit/golden/) is a realistic run directory: four hosts,
every cell state, passed-on-retry, reused and non-voting cells, logs, images, and
a ``<script>`` line in an uncategorized failure's evidence. Tests get it through
the ``all_states`` and ``all_states_dir`` fixtures (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

from results.model import Category, Cell, CellKind, RunResults, State

GOLDEN = Path(__file__).resolve().parent / "unit" / "golden"
ALL_STATES = GOLDEN / "run_all_states"


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
