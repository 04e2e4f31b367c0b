"""Expected cell durations from the archive: the newest run that really ran each cell."""

from __future__ import annotations

from matrix.run.estimates import past_durations, past_nodes
from results.archive import OutDir
from results.model import State
from results.store import save
from tests.resultfactory import make_cell, make_run


def store(out, run_id, cells):
    run = make_run(cells)
    run.run_id = run_id
    save(run, OutDir(out).new_run(run_id).path)


def cell(host, row, duration, reused=False, attempts=1):
    made = make_cell(host, row, State.SUCCESS)
    made.duration, made.reused, made.attempts = duration, reused, attempts
    return made


def test_the_newest_real_duration_of_each_cell(tmp_path):
    store(tmp_path, "20261201-010000-aaaa", [cell("h", "t", 50.0), cell("h", "u", 30.0)])
    store(tmp_path, "20261202-010000-bbbb", [cell("h", "t", 0.5, reused=True),
                                             cell("h", "u", 12.0, attempts=3)])
    store(tmp_path, "20261203-010000-cccc", [cell("h", "t", 9.0)])
    found = past_durations(tmp_path, ["h.t", "h.u", "h.new"], exclude="20261203-010000-cccc")
    assert found == {"h.t": 50.0, "h.u": 4.0}  # a reused cell says nothing; per attempt


def test_no_archive_and_unreadable_runs_give_no_estimates(tmp_path):
    assert past_durations(tmp_path / "none", ["h.t"]) == {}
    (tmp_path / "20261201-010000-aaaa").mkdir()
    (tmp_path / "20261201-010000-aaaa" / "results.json").write_text("{broken")
    assert past_durations(tmp_path, ["h.t"]) == {}


def test_the_node_each_cell_last_ran_on(tmp_path):
    def on(node, *args, **kwargs):
        made = cell(*args, **kwargs)
        made.node = node
        return made

    store(tmp_path, "20261201-010000-aaaa", [on("w1", "h", "t", 50.0), on("w2", "h", "u", 9.0)])
    store(tmp_path, "20261202-010000-bbbb", [on("m", "h", "t", 0.5, reused=True),
                                             on(None, "h", "u", 12.0)])  # a local run
    store(tmp_path, "20261203-010000-cccc", [on("w2", "h", "t", 40.0)])
    assert past_nodes(tmp_path, ["h.t", "h.u", "h.new"]) == {"h.t": "w2", "h.u": "w2"}
    assert past_nodes(tmp_path, ["h.t"], exclude="20261203-010000-cccc") == {"h.t": "w1"}
