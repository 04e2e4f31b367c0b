"""Run a DAG of cells on a bounded thread pool: retries, fail-fast, cancellation.

Pure orchestration: what a cell does is the ``execute`` callable's business, so
this module is tested with fake executors. A cell whose prerequisite did not
succeed is not run: it is finished at once as ``skipped``. Whether a failed attempt
is tried again, and after how long, is the ``decide`` callable's (the run passes
:meth:`matrix.run.retry.RetryPolicy.decide`); the wait between two attempts ends at
once when the run stops (Ctrl-C, fail-fast, a lost engine).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping

from matrix.run.cellreport import CellReport
from matrix.run.plan import PlannedCell
from matrix.run.retry import Decide, join_notes, never
from results.model import CellKind, State

LOG = logging.getLogger("dib-matrix")
CUT_SHORT = (State.FAILED, State.TIMEOUT, State.ERROR, State.SKIPPED)
Execute = Callable[[PlannedCell, int], CellReport]
Finish = Callable[[PlannedCell, CellReport], None]


class Scheduler:
    def __init__(self, cells: list[PlannedCell], execute: Execute, finish: Finish, *,
                 max_parallel: int, decide: Decide = never,
                 fail_fast: bool = False,
                 done: Mapping[str, State] | None = None,
                 stop: threading.Event | None = None,
                 on_stop: Callable[[], None] | None = None,
                 estimates: Mapping[str, float] | None = None):
        self.cells = {c.id: c for c in cells}
        self.execute = execute
        self.finish = finish
        self.max_parallel = max_parallel
        self.decide = decide  # after each attempt: try it again, and after how long
        self.fail_fast = fail_fast
        self.state: dict[str, State] = dict(done or {})
        self.stop = stop or threading.Event()
        self.failed_fast = False
        self.on_stop = on_stop  # kills what runs (containers, processes) when stopping early
        self.estimates = estimates  # cell id -> expected seconds (its last duration)

    def _blocked_by(self, cell: PlannedCell) -> str | None:
        for need in cell.needs:
            state = self.state.get(need)
            if state is not None and state not in (State.SUCCESS, State.PENDING):
                return need
        return None

    def _waits_on(self, cell: PlannedCell) -> str | None:
        """A prerequisite left without a verdict (its node left): the cell waits for a
        resumed run, as that prerequisite does."""
        return next((n for n in cell.needs if self.state.get(n) is State.PENDING), None)

    def _ready(self, cell: PlannedCell) -> bool:
        return all(self.state.get(need) is not None for need in cell.needs)

    def _attempt(self, cell: PlannedCell) -> CellReport:
        """Attempts at ``cell`` until one is not to be tried again. The back-off between
        two is a wait on ``stop``: a stopping run never waits it out (the cell is then
        recorded as interrupted, see ``_record``)."""
        attempt = 0
        started, clock = time.monotonic(), dt.datetime.now(dt.timezone.utc)
        notes: list[str] = []
        while True:
            attempt += 1
            report = self.execute(cell, attempt)
            decision = self.decide(report, attempt)
            if decision.note:
                notes.append(decision.note)
            report = report.replace(
                attempts=attempt, started=clock.isoformat(timespec="seconds"),
                duration=round(time.monotonic() - started, 2), retry=join_notes(notes))
            if not decision.retry or self.stop.is_set():
                return report
            LOG.info("%s: %s", cell.id, decision.note or f"attempt {attempt} failed; retried")
            if self.stop.wait(decision.delay):
                return report

    def _record(self, cell: PlannedCell, outcome: CellReport) -> None:
        if self.stop.is_set() and outcome.state in CUT_SHORT:
            # Cut short by Ctrl-C or fail-fast: no verdict; a resumed run runs it again.
            outcome = CellReport(State.PENDING, reason="interrupted", attempts=outcome.attempts,
                                 log=outcome.log, started=outcome.started,
                                 duration=outcome.duration)
        self.state[cell.id] = outcome.state
        self.finish(cell, outcome)
        if self.fail_fast and cell.voting and outcome.state.is_failure and not self.stop.is_set():
            self.failed_fast = True
            self.stop.set()
            if self.on_stop is not None:
                self.on_stop()  # stop the cells still running

    def run(self) -> None:
        """Run until every cell is finished or ``stop`` is set (then the rest stay pending)."""
        # Host images first: each one unlocks a whole column of cells. Then the cells
        # with the most work behind them, in expected seconds (a vm build and its boot
        # before a quick build), so that a long cell does not start last and hold the
        # run on one slot.
        paths = critical_paths(list(self.cells.values()), self.estimates)
        pending = sorted((c for c in self.cells.values() if c.id not in self.state),
                         key=lambda c: (c.kind is not CellKind.HOSTGEN, -paths[c.id]))
        running: dict[concurrent.futures.Future[CellReport], PlannedCell] = {}
        with concurrent.futures.ThreadPoolExecutor(self.max_parallel) as pool:
            try:
                while pending or running:
                    progressed = self._settle_excluded_and_blocked(pending)
                    while not self.stop.is_set() and len(running) < self.max_parallel:
                        cell = next((c for c in pending if self._ready(c)), None)
                        if cell is None:
                            break
                        pending.remove(cell)
                        running[pool.submit(self._attempt, cell)] = cell
                        progressed = True
                    if self.stop.is_set() and not running:
                        break
                    if not running:
                        if not progressed:
                            break  # nothing runnable: only cells whose needs are outside
                        continue
                    finished, _ = concurrent.futures.wait(
                        running, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in finished:
                        self._record(running.pop(future), _result(future))
            finally:
                if running and not self.stop.is_set():
                    self.stop.set()
                    if self.on_stop is not None:
                        self.on_stop()
                self.stop.set()
                for future, cell in list(running.items()):
                    self._record(cell, _result(future))

    def _settle_excluded_and_blocked(self, pending: list[PlannedCell]) -> bool:
        settled = False
        for cell in list(pending):
            if cell.excluded is not None:
                outcome = CellReport(State.EXCLUDED, reason=cell.excluded, attempts=0)
            elif (blocker := self._blocked_by(cell)) is not None:
                outcome = CellReport(State.SKIPPED, (f"prerequisite failed: {blocker}",),
                                     reason=f"{blocker} did not succeed", attempts=0,
                                     hint="missing-dependency")
            elif (waited := self._waits_on(cell)) is not None:
                outcome = CellReport(State.PENDING, reason=f"{waited} is pending", attempts=0)
            else:
                continue
            pending.remove(cell)
            self._record(cell, outcome)
            settled = True
        return settled


# Expected seconds of a cell with no history (a warm run's cells take about these).
KIND_SECONDS = {CellKind.HOSTGEN: 60.0, CellKind.CHECK: 30.0, CellKind.BUILD: 30.0,
                CellKind.BOOT: 45.0}


def critical_paths(cells: list[PlannedCell], estimates: Mapping[str, float] | None = None
                   ) -> dict[str, float]:
    """Each cell's expected seconds plus the longest chain of cells that wait for it:
    ``estimates`` (a cell's last duration) where known, its kind's guess otherwise."""
    known = estimates or {}
    dependents: dict[str, list[str]] = {c.id: [] for c in cells}
    for cell in cells:
        for need in cell.needs:
            if need in dependents:
                dependents[need].append(cell.id)
    own = {c.id: known.get(c.id, KIND_SECONDS.get(c.kind, 30.0)) for c in cells}
    paths: dict[str, float] = {}
    for cell in cells:
        # Iterative: a deep plan must not exhaust the recursion limit.
        stack = [cell.id]
        while stack:
            top = stack[-1]
            waiting = [d for d in dependents[top] if d not in paths]
            if waiting:
                stack.extend(waiting)
                continue
            stack.pop()
            paths[top] = own[top] + max((paths[d] for d in dependents[top]), default=0.0)
    return paths


def _result(future: concurrent.futures.Future[CellReport]) -> CellReport:
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - a bug in one cell must not sink the run
        return CellReport(State.ERROR, (f"engine error: {err!r}",), hint="engine-error")
