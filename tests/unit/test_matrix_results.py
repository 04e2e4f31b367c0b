import json
import os

import pytest

from results import store
from results.model import SCHEMA_VERSION, Artifact, Category, Cell, CellKind, RunResults, State
from results.reader import read_results


def sample():
    run = RunResults("r1", "m.yaml", ["h1"], ["hostgen", "t"])
    run.cells = [
        Cell("h1", "hostgen", CellKind.HOSTGEN, State.SUCCESS, attempts=1),
        Cell(
            "h1",
            "t",
            CellKind.BUILD,
            State.FAILED,
            Category("x", "X thing", labels=["x"]),
            evidence="<script>alert(1)</script>",
            attempts=2,
            artifacts=[Artifact("images/h1/t.tar", "tar", 10, "ab" * 32)],
        ),
    ]
    return run


def test_round_trip(tmp_path):
    run = sample()
    store.save(run, tmp_path)
    back = read_results(tmp_path)
    assert back.to_json() == run.to_json()
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["cells"][1]["id"] == "h1.t"
    assert data["classification_rate"] == 1.0


def test_atomic_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    store.save(sample(), tmp_path)
    before = (tmp_path / "results.json").read_text()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        store.save(RunResults("r2", "m.yaml", [], []), tmp_path)
    assert (tmp_path / "results.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_unknown_schema_version_is_refused(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ValueError, match="schema_version 99"):
        read_results(tmp_path)


def test_pending_cells_are_what_a_resume_runs():
    run = sample()
    run.cells.append(Cell("h1", "u", CellKind.BUILD))
    unfinished = [c.id for c in run.cells if not c.state.is_finished]
    assert unfinished == ["h1.u"]
    assert run.cells[1].passed_on_retry is False
    assert Cell("h", "r", CellKind.BUILD, State.SUCCESS, attempts=2).passed_on_retry


def test_resume_keeps_the_runs_matrix_and_selection(tmp_path):
    import argparse

    from matrix.cli import runcli

    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "hosts: [debian-bookworm, debian-trixie]\ntargets: [debian-sid, debian-forky]\nchecks: []\n"
    )
    run = RunResults("r1", str(matrix), ["debian-trixie"], ["hostgen", "debian-sid"])
    run.cells = [
        Cell("debian-trixie", "hostgen", CellKind.HOSTGEN, State.SUCCESS),
        Cell("debian-trixie", "debian-sid", CellKind.BUILD),
    ]
    store.save(run, tmp_path / "r1")  # a run's directory is named by its id
    args = argparse.Namespace(
        matrix=None, resume=tmp_path / "r1", hosts=[], targets=[], timeout=None
    )
    loaded = runcli._load(args)
    config, plan = loaded.config, loaded.plan
    assert config.path == matrix
    assert [c.id for c in plan.cells] == ["debian-trixie.hostgen", "debian-trixie.debian-sid"]
    assert [h.name for h in plan.hosts] == ["debian-trixie"]


def test_cell_lookup_follows_appends_replacements_and_a_new_list():
    run = sample()
    assert run.cell("h1", "t").attempts == 2
    assert run.cell("h1", "nope") is None
    run.cells.append(Cell("h2", "t", CellKind.BUILD, State.PENDING))
    assert run.cell("h2", "t").state is State.PENDING
    run.cells[1] = Cell("h1", "t", CellKind.BUILD, State.SUCCESS)
    assert run.cell("h1", "t").state is State.SUCCESS
    run.cells = list(reversed(run.cells))
    assert [run.cell(c.host, c.row) for c in run.cells] == run.cells
    assert "_cell_positions" not in json.dumps(run.to_json()) and run == run
