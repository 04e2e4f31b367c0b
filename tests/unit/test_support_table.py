"""The support table (``reports.support``), its HTML (grid, strips, duration SVG) in the
history index and ``dib-matrix support``.

Hostile classes covered: legends from builds in markdown and HTML (markup, pipes,
mentions, control characters), durations that are no numbers a path can draw (nan, inf,
negative, huge), dates that are not dates, unreadable runs among the readable ones.
"""

from __future__ import annotations

import json
import re

import pytest

from reports.html import render_index, render_support, write_index
from reports.support import RunRef, Status, build_table, render_json, render_markdown
from reports.supportview import build_support_view, sparkline
from results.model import Category, State
from tests.archivefactory import run_id, stored_run
from tests.hostile import TreeWatch, run_cli
from tests.resultfactory import make_cell, make_run

FAIL, OK = State.FAILED, State.SUCCESS


def series(states: list[State | None], legends: list[str] | None = None,
           durations: list[float | None] | None = None):
    """One run per entry: cell h.t in that state (None: not in the run), h.hostgen green."""
    runs = []
    for day, state in enumerate(states, start=1):
        cells = [make_cell("h", "hostgen")]
        if state is not None:
            cell = make_cell("h", "t", state, duration=(durations or [None] * 99)[day - 1])
            if state in (FAIL, State.TIMEOUT, State.ALLOWED_FAILURE):
                legend = (legends or ["No such script: /x/forky"] * 99)[day - 1]
                cell.category = Category("cause", legend, labels=["cause"])
            cells.append(cell)
        runs.append(make_run(cells, run_id(day), started=f"2025-01-{day:02d}T02:00:00+00:00"))
    return runs


def entry(states, **kw):
    return build_table(series(states), **kw).entry("h", "t")


def test_green_throughout_is_supported():
    found = entry([OK, OK, None, OK])
    assert found.status is Status.SUPPORTED and found.last_green == RunRef(run_id(4), "2025-01-04")


def test_red_after_green_is_broken_since_the_first_red():
    found = entry([OK, OK, FAIL, State.TIMEOUT, FAIL])
    assert found.status is Status.BROKEN
    assert found.since == RunRef(run_id(3), "2025-01-03")
    assert found.text == "broken since 2025-01-03 - 0 -"
    assert found.last_green.run_id == run_id(2)


def test_red_throughout_is_broken_since_the_window_began():
    found = entry([FAIL, FAIL, FAIL])
    assert found.status is Status.BROKEN and found.since.run_id == run_id(1)
    assert found.last_green is None


@pytest.mark.parametrize("states", [[OK, FAIL, OK], [FAIL, OK], [FAIL, OK, FAIL],
                                    [OK, FAIL, OK, FAIL]])
def test_both_any_other_way_is_flaky(states):
    found = entry(states)
    assert found.status is Status.FLAKY
    assert found.text.startswith(f"flaky ({states.count(FAIL)} of {len(states)} failed)")


@pytest.mark.parametrize("states", [[State.EXCLUDED, State.ERROR, State.PENDING],
                                    [State.SKIPPED, None]])
def test_no_verdict_is_not_run(states):
    assert entry(states).status is Status.NOT_RUN


def test_a_host_without_the_row_is_not_run_and_a_missing_dependency_is_a_verdict():
    runs = series([OK, OK])
    for run in runs:
        run.cells += [make_cell("h2", "hostgen", FAIL, category=Category("x", "base gone")),
                      make_cell("h2", "t", State.SKIPPED, category=Category(
                          "missing-dependency", "missing dependency")),
                      make_cell("h3", "hostgen")]
        run.hosts += ["h2", "h3"]
    table = build_table(runs)
    assert table.entry("h3", "t").status is Status.NOT_RUN
    assert table.entry("h2", "t").text == "broken since 2025-01-01 - 1 -"


def test_errors_and_exclusions_say_nothing_about_support():
    assert entry([OK, State.ERROR, OK, State.EXCLUDED]).status is Status.SUPPORTED


def test_the_window_is_the_newest_n_runs():
    found = entry([FAIL, FAIL, OK, OK, OK], n=3)
    assert found.status is Status.SUPPORTED and len(found.points) == 3


def test_last_green_beyond_the_window_comes_from_last_good():
    ref = RunRef("20240101-000000-aaaa", "2024-01-01")
    found = entry([FAIL, FAIL], last_good={"h.t": ref})
    assert found.last_green == ref
    newer = RunRef(run_id(9), "2025-01-09")  # a later success, its run collected since
    assert entry([OK, FAIL], last_good={"h.t": newer}).last_green == newer
    assert entry([OK, FAIL], last_good={"h.t": ref}).last_green.run_id == run_id(1)


def test_distinct_legends_get_distinct_footnotes_in_reading_order():
    runs = series([FAIL])
    runs[0].cells.append(make_cell("h2", "t", FAIL, category=Category("c", "other cause")))
    runs[0].cells.append(make_cell("h2", "hostgen", FAIL, category=Category(
        "c", "No such script: /x/forky")))
    runs[0].hosts.append("h2")
    table = build_table(runs)
    assert table.causes == ("No such script: /x/forky", "other cause")
    assert table.entry("h2", "hostgen").footnote == 0 and table.entry("h2", "t").footnote == 1


HOSTILE = "<script>alert(1)</script> | @admin #1 [x](javascript:y) \x1b[31mred\r\n`code`"


def test_markdown_keeps_a_hostile_legend_inert():
    text = render_markdown(build_table(series([FAIL, OK], legends=[HOSTILE] * 2)))
    assert "<script>" not in text and "\x1b" not in text and "\r" not in text
    assert "@admin" not in text and "](javascript" not in text
    (cause,) = [line for line in text.splitlines() if line.startswith("- `- 0 -`")]
    assert re.search(r"(?<!\\)\|", cause) is None  # every pipe escaped: no table opens
    assert "| `t` | flaky (1 of 2 failed) - 0 - |" in text
    assert "| `h.t` | flaky (1 of 2 failed) - 0 - |" in text


def test_json_has_every_cell_with_its_states():
    document = json.loads(render_json(build_table(series([OK, FAIL]))))
    cell = next(c for c in document["cells"] if c["id"] == "h.t")
    assert cell["status"] == "broken" and cell["states"] == ["success", "failed"]
    assert cell["since"] == {"run_id": run_id(2), "date": "2025-01-02"}
    assert document["runs"][0] == {"run_id": run_id(1), "date": "2025-01-01"}


@pytest.mark.parametrize("started", ["2025-13-99|x", "<b>", "\x1b[2J", "2025-01-0"])
def test_a_date_that_is_not_a_date_is_left_out(started):
    runs = series([FAIL])
    runs[0].started = started
    found = build_table(runs).entry("h", "t")
    assert found.since.date == ""
    assert f"since `{run_id(1)}`" in render_markdown(build_table(runs))


def test_sparkline_is_numbers_only_and_skips_what_cannot_be_drawn():
    path = sparkline([10.0, float("nan"), 20.0, float("inf"), -5.0, 1e308, 5.0])
    assert re.fullmatch(r"[ML0-9. ]+", path)
    assert path.count("M") == 3  # a gap after each value that cannot be drawn
    assert sparkline([3.0]) == "" and sparkline([None, None]) == ""


def test_the_html_grid_has_strips_and_a_duration_svg():
    table = build_table(series([OK, FAIL, OK], legends=[HOSTILE] * 3,
                               durations=[60.0, 90.0, 75.0]))
    view = build_support_view(table)
    cell = view.rows[1].cells[0]
    assert [s.css for s in cell.strip] == ["st-success", "st-failed", "st-success"]
    page = render_support(table)
    assert '<svg class="spark"' in page and "<script>alert" not in page
    assert "&lt;script&gt;" in page and "\x1b" not in page
    assert "support-flaky" in page


def test_the_history_index_shows_the_same_grid(tmp_path):
    out = tmp_path / "out"
    for day in (1, 2, 3):
        stored_run(out, day, states={"h1.t1": FAIL} if day > 1 else None)
    page = write_index(out).read_text()
    assert 'id="support-grid"' in page
    assert "broken since 2025-01-02 - 0 -" in page
    assert page.count('<svg class="spark"') == 6  # every cell with durations
    assert render_index([]).count('id="support-grid"') == 1


# ---------------------------------------------------------------- the command line


def test_support_cli_skips_an_unreadable_run_with_a_warning(tmp_path):
    out = tmp_path / "out"
    for day in (1, 2, 3):
        stored_run(out, day, states={"h2.t2": FAIL} if day == 3 else None)
    (out / run_id(2) / "results.json").write_text("{")
    watch = TreeWatch(tmp_path)
    done = run_cli("support", "--out", out, "--runs", "5")
    assert done.code == 0, done.output
    assert f"skipped {out / run_id(2) / 'results.json'}" in done.stderr
    assert "| `t2` | supported | broken since 2025-01-03 - 0 - |" in done.stdout
    for fmt in ("json", "html"):
        assert run_cli("support", "--out", out, "--format", fmt).code == 0
    watch.assert_untouched()


@pytest.mark.parametrize("args", [["--runs", "0"], ["--runs", "x"], ["--runs", "1e9"],
                                  ["--out", "/nonexistent"], ["--format", "pdf"]])
def test_support_cli_bad_input_is_exit_2(tmp_path, args):
    done = run_cli("support", *args, cwd=tmp_path)
    assert done.code == 2, done.output


def test_support_cli_on_an_empty_directory(tmp_path):
    done = run_cli("support", "--out", tmp_path)
    assert done.code == 0 and "No runs" in done.stdout
