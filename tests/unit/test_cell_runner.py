"""The per-cell boundary: an engine that goes away is an engine error, not 'internal'."""

from types import SimpleNamespace

import requests.exceptions

from matrix.run.cells import CellRunner
from results.model import CellKind, State


def test_a_lost_engine_connection_is_an_engine_error(tmp_path, monkeypatch):
    log = tmp_path / "cell.log"
    ctx = SimpleNamespace(log_path=lambda cell: log)
    runner = CellRunner(ctx)

    def lost(cell, log):
        raise requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError)")

    monkeypatch.setattr(runner, "_in_container", lost)
    report = runner.execute(SimpleNamespace(kind=CellKind.BUILD), attempt=1)
    assert report.state is State.ERROR
    assert report.evidence[0].startswith("engine error: the container engine stopped answering")
    assert "internal" not in log.read_text()
