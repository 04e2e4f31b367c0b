"""Nightly history: runs under an output directory, trends, index.html, write_all."""

from __future__ import annotations

import copy
import os

from reports import write_all
from reports.history import load_runs, trends
from reports.html import write_index
from results.model import State
from results.store import save
from tests.resultfactory import make_cell, make_run


def nightly(out, states, start_day=1):
    """One run per entry of ``states`` (the state of cell h.t), a day apart."""
    for index, state in enumerate(states):
        run = make_run([make_cell("h", "t", state), make_cell("h", f"only{index}")],
                       run_id=f"run-{index}", started=f"2025-06-{start_day + index:02d}T02:00:00")
        save(run, out / run.run_id)
    os.symlink("run-0", out / "latest")


def test_trends_last_n_states_oldest_first(tmp_path):
    nightly(tmp_path, [State.SUCCESS, State.FAILED, State.SUCCESS, State.TIMEOUT])
    got = trends(tmp_path, 3)
    assert [p.state for p in got["h.t"]] == [State.FAILED, State.SUCCESS, State.TIMEOUT]
    assert [p.run_id for p in got["h.t"]] == ["run-1", "run-2", "run-3"]
    assert [p.state for p in got["h.only2"]] == [None, State.SUCCESS, None]
    assert "h.only0" not in got  # older than the last 3 runs


def test_unreadable_runs_and_the_latest_link_are_skipped(tmp_path):
    nightly(tmp_path, [State.SUCCESS, State.FAILED])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/results.json").write_text("{not json")
    (tmp_path / "old-schema").mkdir()
    (tmp_path / "old-schema/results.json").write_text('{"schema_version": 0}')
    (tmp_path / "stray.txt").write_text("")
    assert [r.run_id for r in load_runs(tmp_path)] == ["run-0", "run-1"]
    assert load_runs(tmp_path / "nowhere") == []


def test_index_lists_runs_newest_first(tmp_path):
    nightly(tmp_path, [State.SUCCESS, State.FAILED])
    index = write_index(tmp_path)
    html = index.read_text()
    assert index == tmp_path / "index.html"
    assert html.index('href="run-1/report.html"') < html.index('href="run-0/report.html"')
    assert "2025-06-02T02:00:00" in html and "2 runs, newest first" in html
    row = html.split('href="run-1/report.html"')[1].split("</tr>")[0]
    assert "<td>1</td><td>1</td>" in row  # passed, failed


def test_write_all_writes_reports_trends_and_index(tmp_path, all_states):
    nightly(tmp_path, [State.SUCCESS, State.FAILED])
    results = all_states
    results.started = "2025-06-10T02:00:00+00:00"
    run_dir = tmp_path / results.run_id
    write_all(run_dir, results, baseline=None, history_dir=tmp_path)
    assert sorted(p.name for p in run_dir.iterdir()) == ["junit.xml", "report.html", "report.txt"]
    assert "target \\ host" in (run_dir / "report.txt").read_text()
    index = (tmp_path / "index.html").read_text()
    assert f'href="{results.run_id}/report.html"' in index  # the current run, not yet saved
    assert 'class="trend"' in (run_dir / "report.html").read_text()


def test_write_all_with_baseline(tmp_path, all_states):
    old, new = all_states, copy.deepcopy(all_states)
    old.run_id = "yesterday"
    new.cell("debian-trixie", "debian-forky").state = State.FAILED
    write_all(tmp_path, new, baseline=old)
    text = (tmp_path / "report.txt").read_text()
    assert "yesterday -> 20250601T020000Z-a1b2c3: 1 regressions (1 voting)" in text
    assert 'id="comparison"' in (tmp_path / "report.html").read_text()
