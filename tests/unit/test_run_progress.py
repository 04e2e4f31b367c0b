"""The run's console: status line frames, estimates, TTY/CI detection, -q/-v."""

from __future__ import annotations

import io
import logging
import re

import pytest

from matrix.run import progress
from matrix.run.progress import (
    CLEAR_LINE,
    Console,
    Estimates,
    ProgressState,
    fit,
    load_estimates,
    short_duration,
    wants_status_line,
)
from results.model import Cell, CellKind, RunResults, State
from results.store import save

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def cells(*specs):
    return [(cell_id, kind) for cell_id, kind in specs]


def run_of(run_id, *cells_):
    return RunResults(run_id=run_id, matrix="m.yaml", hosts=["h"], rows=[],
                      cells=list(cells_), options={"max_parallel": 2})


def done(cell_id, kind=CellKind.BUILD, state=State.SUCCESS, duration=100.0, reused=False):
    host, row = cell_id.split(".", 1)
    return Cell(host, row, kind, state=state, duration=duration, attempts=1, reused=reused)


def test_short_durations_and_fit():
    assert short_duration(4.4) == "4s"
    assert short_duration(62) == "1m02s"
    assert short_duration(3725) == "1h02m"
    assert fit("abcdef", 10) == "abcdef"
    assert fit("abcdefghijkl", 8) == "abcde..."
    assert fit("abcdef", 2) == "ab"


def test_line_counts_running_cells_and_failures():
    state = ProgressState(cells(("h.hostgen", "hostgen"), ("h.a", "build"), ("h.b", "build"),
                                ("h.tox", "check")), parallel=2)
    assert state.line(0, 200) == "[0/4] 0% | 0 failed"
    state.started("h.hostgen", "hostgen", now=0)
    state.ended("h.hostgen", "hostgen", State.SUCCESS, 30.0)
    state.started("h.a", "build", now=30)
    state.started("h.tox", "check", now=35)
    state.ended("h.tox", "check", State.FAILED, 10.0)
    state.started("h.b", "build", now=40)
    assert state.line(102, 200) == (
        "[2/4] 50% | 1 failed | running 2: h.a 1m12s, h.b 1m02s")


def test_estimate_from_earlier_runs_spreads_work_over_the_slots():
    estimates = Estimates({"h.a": 100.0, "h.b": 300.0, "h.c": 200.0}, {"build": 150.0})
    state = ProgressState(cells(("h.a", "build"), ("h.b", "build"), ("h.c", "build"),
                                ("h.d", "build")), estimates=estimates, parallel=2)
    state.started("h.a", "build", now=0)
    state.started("h.b", "build", now=0)
    # running: 100-60=40 and 300-60=240 left; pending c (200) and d (150, its kind's median)
    # (40 + 240 + 200 + 150) / 2 = 315 s, more than the longest running rest (240).
    assert state.seconds_left(60) == pytest.approx(315)
    assert "~5m15s left" in state.line(60, 200)
    state.ended("h.a", "build", State.SUCCESS, 100.0)
    state.ended("h.c", "build", State.SUCCESS, 200.0)
    state.ended("h.d", "build", State.SUCCESS, 150.0)
    # Only b runs: its own rest, not the work spread over two slots.
    assert state.seconds_left(100) == pytest.approx(200)


def test_no_estimate_without_any_duration_then_from_this_run():
    state = ProgressState(cells(("h.a", "build"), ("h.b", "build")), parallel=1)
    state.started("h.a", "build", now=0)
    assert state.seconds_left(10) is None
    assert "left" not in state.line(10, 200)
    state.ended("h.a", "build", State.SUCCESS, 50.0)
    assert state.seconds_left(60) == pytest.approx(50)  # b as long as a


def test_overrun_cells_and_retries():
    state = ProgressState(cells(("h.a", "build"),), estimates=Estimates({"h.a": 10.0}))
    state.started("h.a", "build", now=0)
    state.started("h.a", "build", now=50, attempt=2)
    assert state.seconds_left(100) == 0
    assert "h.a 1m40s (try 2)" in state.line(100, 200)


def test_skipped_pending_and_resumed_cells():
    state = ProgressState(cells(("h.a", "build"), ("h.b", "build"), ("h.c", "build")),
                          done=["h.a"], failed=1)
    state.ended("h.b", "build", State.SKIPPED)
    state.ended("h.c", "build", State.PENDING)  # cut short: not done
    assert state.line(0, 200) == "[2/3] 66% | 1 failed | 1 skipped"


def test_line_is_cut_to_the_width_and_has_no_control_characters():
    state = ProgressState(cells(("h.a\x1b[2J", "build"), ("h.b", "build")))
    state.started("h.a\x1b[2J", "build", now=0)
    line = state.line(5, 24)
    assert len(line) == 24 and line.endswith("...")
    assert "\x1b" not in state.line(5, 200)


def test_estimates_ignore_reused_skipped_and_unfinished_cells(tmp_path):
    earlier = run_of("20260101-000000-aaaa",
                     done("h.a", duration=100.0),
                     done("h.b", duration=1.0, reused=True),
                     done("h.c", state=State.SKIPPED, duration=0.0),
                     done("h.d", state=State.PENDING, duration=5.0),
                     done("h.e", state=State.FAILED, duration=40.0))
    later = run_of("20260102-000000-bbbb", done("h.a", duration=120.0))
    for run in (earlier, later):
        save(run, tmp_path / run.run_id)
    (tmp_path / "latest").symlink_to(later.run_id)
    (tmp_path / "20260103-000000-cccc").mkdir()
    (tmp_path / "20260103-000000-cccc" / "results.json").write_text("{not json")
    estimates = load_estimates(tmp_path, exclude_run="20260104-000000-dddd")
    assert estimates.by_cell == {"h.a": 110.0, "h.e": 40.0}
    assert estimates.by_kind == {"build": 110.0}  # successes only: a preflight takes no time
    assert load_estimates(tmp_path / "missing", "x") == Estimates()


@pytest.mark.parametrize("env, tty, expected", [
    ({}, True, True),
    ({"TERM": "xterm"}, False, False),
    ({"CI": "true"}, True, False),
    ({"CI": "1"}, True, False),
    ({"CI": "false"}, True, True),
    ({"CI": ""}, True, True),
    ({"TERM": "dumb"}, True, False),
])
def test_status_line_only_on_a_terminal_outside_ci(env, tty, expected):
    stream = Tty() if tty else io.StringIO()
    assert wants_status_line(stream, env) is expected


def console(stream, clock, verbosity=progress.NORMAL, live=True):
    return Console(stream, live=live, verbosity=verbosity, clock=clock, width=lambda: 60,
                   interval=3600)


def start(con, tmp_path, *cells_):
    results = run_of("20260105-000000-eeee", *cells_)
    con.begin(results, done=[], out_dir=tmp_path)
    return results


def test_live_console_redraws_in_place_and_writes_records_above(tmp_path):
    stream, clock = Tty(), Clock()
    con = console(stream, clock)
    logger = logging.getLogger("test-progress-live")
    logger.handlers[:] = [con.handler()]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    start(con, tmp_path, Cell("h", "hostgen", CellKind.HOSTGEN),
          Cell("h", "a", CellKind.BUILD))
    con.cell_started("h.hostgen", CellKind.HOSTGEN, 1)
    clock.now += 75
    con.redraw()
    logger.info("h.hostgen success")
    con.cell_finished(done("h.hostgen", CellKind.HOSTGEN, duration=75.0))
    con.close()
    text = stream.getvalue()
    frames = text.split(CLEAR_LINE)
    # Every frame is one status line (never a newline in it), or a record then a line.
    assert "[0/2] 0% | 0 failed | running 1: h.hostgen 1m15s" in frames
    # A record: the line cleared, the record written, the line drawn again under it.
    record = frames.index("h.hostgen success\n")
    assert frames[record - 1:record + 2] == [
        "[0/2] 0% | 0 failed | running 1: h.hostgen 1m15s", "h.hostgen success\n",
        "[0/2] 0% | 0 failed | running 1: h.hostgen 1m15s"]
    assert frames[-2] == "[1/2] 50% | 0 failed"
    assert text.endswith(CLEAR_LINE)  # closed: the line is off the screen
    assert all(len(ANSI.sub("", f).split("\n")[-1]) <= 59 for f in frames)


def test_plain_console_writes_the_records_only(tmp_path):
    stream, clock = io.StringIO(), Clock()
    con = console(stream, clock, live=False)
    logger = logging.getLogger("test-progress-plain")
    logger.handlers[:] = [con.handler()]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    start(con, tmp_path, Cell("h", "a", CellKind.BUILD))
    con.cell_started("h.a", CellKind.BUILD, 1)
    logger.info("h.a success")
    con.cell_finished(done("h.a"))
    con.close()
    assert stream.getvalue() == "h.a success\n"


def test_quiet_keeps_warnings_and_verbose_tells_more(tmp_path, caplog):
    quiet = console(io.StringIO(), Clock(), progress.QUIET, live=False)
    assert quiet.handler().level == logging.WARNING
    loud = console(io.StringIO(), Clock(), progress.VERBOSE, live=False)
    assert loud.handler().level == logging.NOTSET
    start(loud, tmp_path, Cell("h", "a", CellKind.BUILD))
    with caplog.at_level(logging.INFO, logger="dib-matrix"):
        loud.cell_started("h.a", CellKind.BUILD, 2)
        failed = done("h.a", state=State.FAILED, duration=62.0)
        failed.log, failed.evidence = "logs/h/a.log", "E: Unable to locate package\x1b[31m x"
        loud.cell_finished(failed)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("h.a") and "started (attempt 2)" in m for m in messages)
    assert any("took 1m02s, log logs/h/a.log" in m for m in messages)
    assert any("evidence: E: Unable to locate package?[31m x" in m for m in messages)


def test_console_for_arguments():
    class Args:
        quiet, verbose = True, False
    assert progress.console_for(Args(), io.StringIO()).verbosity == progress.QUIET
    Args.quiet, Args.verbose = False, True
    con = progress.console_for(Args(), io.StringIO())
    assert con.verbosity == progress.VERBOSE and con.live is False


def test_observed_finish_tells_the_observer():
    results = run_of("r", done("h.a"))
    seen, finished = [], []

    class Planned:
        class host:
            name = "h"
        row = "a"

    class Observer:
        def cell_started(self, *a):
            pass

        def cell_finished(self, cell):
            seen.append(cell.id)

    finish = progress.observed(lambda p, r: finished.append(r), results, Observer())
    finish(Planned(), "report")
    assert finished == ["report"] and seen == ["h.a"]
    plain = lambda p, r: None  # noqa: E731
    assert progress.observed(plain, results, None) is plain
