"""A run that lost its engine, and a resume after a killed orchestrator (fake engine)."""

from pathlib import Path
from types import SimpleNamespace

from matrix.run import runner
from results.archive import StoredRun
from results.model import Cell, CellKind, RunResults, State
from results.store import save


def resumed_run(tmp_path: Path) -> runner.MatrixRun:
    results = RunResults("r1", "m.yaml", ["h"], ["hostgen", "tox", "a", "b", "c"])
    results.cells = [
        Cell("h", "hostgen", CellKind.HOSTGEN, State.SUCCESS),
        Cell("h", "tox", CellKind.CHECK, State.SUCCESS),
        Cell("h", "a", CellKind.BUILD, State.ERROR),
        Cell("h", "b", CellKind.BUILD, State.PENDING),
        Cell("h", "c", CellKind.BUILD, State.FAILED),
    ]
    save(results, tmp_path / "r1")
    request = SimpleNamespace(resume=StoredRun(tmp_path / "r1", results), out_dir=tmp_path)
    return runner.MatrixRun(request, client=None, catalogue=None)


def test_a_resumed_run_runs_error_and_pending_cells_again(tmp_path):
    run = resumed_run(tmp_path)
    assert run.done_states() == {"h.tox": State.SUCCESS, "h.c": State.FAILED}
    assert [c.id for c in run.unfinished()] == ["h.hostgen", "h.a", "h.b"]


def test_losing_the_engine_stops_the_run_and_says_why(tmp_path):
    run = resumed_run(tmp_path)
    run.lose_engine("connection refused")
    run.lose_engine("again")
    assert run.stop.is_set()
    assert run.engine_lost == "connection refused"
    assert run.results.engine["lost"].endswith(": connection refused")


class FakeEngine:
    def __init__(self):
        self.removed = []

    def ping(self):
        raise runner.requests.ConnectionError("engine gone")


def test_an_engine_that_is_gone_neither_answers_nor_crashes_the_clean_up(monkeypatch):
    def gone(client, run_id):
        raise runner.requests.ConnectionError("Connection aborted")

    monkeypatch.setattr(runner.engine, "remove_run_objects", gone)
    assert runner._engine_answers(FakeEngine()) is False

    class ShuttingDown:  # answers once more, then its socket is gone
        calls = 0

        def ping(self):
            self.calls += 1
            if self.calls > 1:
                raise runner.requests.ConnectionError("gone")
            return True

    assert runner._engine_answers(ShuttingDown(), pause=0) is False
    runner._remove_run_objects(FakeEngine(), "r1")  # logs, does not raise


def test_a_daemon_stopping_its_containers_still_counts_as_going_away():
    class SlowShutdown:  # answers for ~10 s while it stops its containers, then is gone
        calls = 0

        def ping(self):
            self.calls += 1
            if self.calls > 10:
                raise runner.requests.ConnectionError("gone")
            return True

    class Alive:
        def ping(self):
            return True

    assert runner._engine_answers(SlowShutdown(), pause=0) is False
    assert runner._engine_answers(Alive(), pause=0) is True


def test_resume_removes_the_dead_runs_containers_and_unfinished_images(tmp_path, monkeypatch):
    run = resumed_run(tmp_path)
    images = tmp_path / "r1" / "images" / "h"
    images.mkdir(parents=True)
    for name in ("a.qcow2", "a.failure.json", "b.tar", "c.tar", "ab.tar"):
        (images / name).write_text("x")
    calls = []
    monkeypatch.setattr(runner.engine, "remove_run_objects",
                        lambda client, run_id: calls.append(run_id) or
                        runner.engine.Removed(2, 0, 1))
    runner._clear_what_a_dead_run_left(run, client=None)
    assert calls == ["r1"]
    assert sorted(p.name for p in images.iterdir()) == ["ab.tar", "c.tar"]
