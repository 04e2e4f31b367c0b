"""The text table: the seed's layout, the footnote rule, flags, transpose, golden files.

Set DIB_MATRIX_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import copy
import os
import re

import pytest

from reports.legend import build_legend, cell_mark
from reports.text import render_report, render_table
from results.model import Category, State
from tests.resultfactory import GOLDEN, category, make_cell, make_run

SEED = GOLDEN / "seed_slide22.txt"
FOOTNOTE = re.compile(r"^- (\d+) -$")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("DIB_MATRIX_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


# --- the seed (slide 22): its table, rebuilt from results, renders identically ----------

def parse_seed() -> tuple[list[str], list[str], dict[int, str]]:
    """(table lines, legend lines, footnote number -> legend text) of the seed."""
    lines = SEED.read_text(encoding="utf-8").splitlines()
    blank = lines.index("")
    legend_lines = lines[blank + 1:]
    legend = {}
    for line in legend_lines:
        number, text = re.match(r"^- (\d+) - (.*)$", line).groups()
        legend[int(number)] = text
    return lines[:blank], legend_lines, legend


def seed_results():
    table, _, legend = parse_seed()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if line[0] == "|"]
    hosts = rows[0][1:]
    cells = []
    for row in rows[1:]:
        for host, mark in zip(hosts, row[1:]):
            match = FOOTNOTE.match(mark)
            if mark == "success":
                cells.append(make_cell(host, row[0]))
            elif mark == "failed":
                cells.append(make_cell(host, row[0], State.FAILED,
                                       category=category("uncategorized")))
            elif legend[int(match.group(1))] == "missing dependency":
                cells.append(make_cell(host, row[0], State.SKIPPED,
                                       category=category("missing-dependency")))
            else:
                text = legend[int(match.group(1))]
                cat_id = "no-such-script" if text.startswith("No such") else "zypper-not-available"
                cells.append(make_cell(host, row[0], State.FAILED, category=Category(cat_id, text)))
    return make_run(cells), legend


def test_seed_table_is_reproduced():
    results, seed_legend = seed_results()
    table, _, _ = parse_seed()
    rendered = render_table(results)
    ours = build_legend(results)
    # Footnote numbers are ours (reading order); map the seed's numbers through the texts.
    numbers = ours.numbers()
    renumber = {n: numbers[t] for n, t in seed_legend.items() if t in numbers}
    expected = [
        re.sub(r"- (\d+) -", lambda m: f"- {renumber[int(m.group(1))]} -", line)
        for line in table
    ]
    assert rendered.splitlines()[: len(table)] == expected
    assert results.hosts[:2] == ["centos-7", "debian-buster"]


def test_seed_legend_lines():
    results, seed_legend = seed_results()
    lines = render_table(results).splitlines()
    legend = lines[lines.index("") + 1:]
    # The seed's "runuser not available" points at columns cut off the slide.
    assert sorted(re.sub(r"^- \d+ - ", "", t) for t in legend) == sorted(
        t for t in seed_legend.values() if t != "runuser not available"
    )
    assert legend[0] == "- 0 - missing dependency"  # first in reading order (tox row)
    assert all(re.match(r"^- \d+ - \S", line) for line in legend)


# --- golden files for the all-states fixture ------------------------------------------

def test_golden_table(all_states):
    check_golden("all_states.table.txt", render_table(all_states))


def test_golden_table_transposed(all_states):
    check_golden("all_states.table.transposed.txt", render_table(all_states, transpose=True))


def test_golden_report(all_states):
    check_golden("all_states.report.txt", render_report(all_states))


# --- the footnote rule -----------------------------------------------------------------

def marks(cells):
    results = make_run(cells)
    legend = build_legend(results)
    return {c.id: cell_mark(c, legend) for c in results.cells}, legend


def test_named_cause_is_a_footnote_and_uncategorized_is_failed():
    got, legend = marks([
        make_cell("h", "a", State.FAILED, category=Category("zypper-not-available",
                                                            "zypper not available")),
        make_cell("h", "b", State.FAILED, category=category("uncategorized")),
        make_cell("h", "c", State.FAILED),  # no category at all
    ])
    assert got == {"h.a": "- 0 -", "h.b": "failed", "h.c": "failed"}
    assert legend.lines() == ["- 0 - zypper not available"]


def test_distinct_legend_texts_get_distinct_numbers():
    noble = Category("no-such-script", "No such script: /usr/share/debootstrap/scripts/noble")
    forky = Category("no-such-script", "No such script: /usr/share/debootstrap/scripts/forky")
    got, legend = marks([
        make_cell("h1", "noble", State.FAILED, category=noble),
        make_cell("h1", "forky", State.FAILED, category=forky),
        make_cell("h2", "noble", State.FAILED, category=noble),
    ])
    assert got["h1.noble"] == got["h2.noble"] == "- 0 -"
    assert got["h1.forky"] == "- 1 -"
    assert [e.cells for e in legend.entries] == [["h1.noble", "h2.noble"], ["h1.forky"]]


def test_a_skip_without_a_named_cause_shows_its_reason():
    got, legend = marks([
        make_cell("h", "hostgen", State.FAILED, category=category("base-image-unavailable")),
        make_cell("h", "tox", State.SKIPPED, reason="cancelled by fail-fast"),
    ])
    assert got["h.tox"] == "- 1 -"
    assert legend.lines()[1] == "- 1 - cancelled by fail-fast"


def test_excluded_has_its_own_mark_with_reason():
    got, legend = marks([make_cell("h", "centos", State.EXCLUDED, reason="no dnf\non Debian")])
    assert got["h.centos"] == "n/a - 0 -"
    assert legend.lines() == ["- 0 - excluded: no dnf on Debian"]


@pytest.mark.parametrize(
    ("state", "kw", "mark"),
    [
        (State.SUCCESS, {}, "success"),
        (State.SUCCESS, {"attempts": 3}, "success (try 3)"),
        (State.SUCCESS, {"reused": True}, "success (reused)"),
        (State.SUCCESS, {"attempts": 2, "reused": True}, "success (try 2, reused)"),
        (State.TIMEOUT, {"category": category("timeout")}, "timeout"),
        (State.ERROR, {"category": category("engine-error")}, "error"),
        (State.PENDING, {}, "pending"),
        (State.ALLOWED_FAILURE, {"voting": False}, "failed (allowed)"),
        (State.ALLOWED_FAILURE, {"voting": False, "category": category("dnf-not-available")},
         "- 0 - (allowed)"),
        (State.FAILED, {"voting": False, "reused": True}, "failed (non-voting, reused)"),
    ],
)
def test_states_and_flags_are_distinguishable(state, kw, mark):
    got, _ = marks([make_cell("h", "t", state, **kw)])
    assert got["h.t"] == mark


def test_passed_on_retry_never_looks_like_a_clean_pass():
    got, _ = marks([make_cell("h", "a", attempts=2), make_cell("h", "b", attempts=1)])
    assert got["h.a"] != got["h.b"] == "success"


def test_no_wrapping_every_line_has_the_same_width():
    long_legend = "No such script: " + "/very/long/path" * 20 + "\nsecond line\x1b[31m"
    results = make_run([
        make_cell("a-very-long-host-name-indeed", "t", State.FAILED,
                  category=Category("no-such-script", long_legend)),
        make_cell("b", "t", State.EXCLUDED, reason="x " * 200),
    ])
    text = render_table(results)
    table = text.split("\n\n")[0].splitlines()
    assert len({len(line) for line in table}) == 1
    assert len(table) == 5  # border, header, border, one row, border
    assert "\x1b" not in text
    first = text.splitlines()[-2]
    assert first.startswith("- 0 - No such script: /very") and first.endswith("\u2026")
    assert len(first) <= len("- 0 - ") + 200


def test_transpose_swaps_axes_and_keeps_numbers(all_states):
    results = all_states
    plain = render_table(results)
    turned = render_table(results, transpose=True)
    assert turned.splitlines()[1].startswith("|host \\ target")
    assert plain.split("\n\n")[1] == turned.split("\n\n")[1]  # the same legend
    header = [c.strip() for c in turned.splitlines()[1].strip("|").split("|")]
    assert header[1:] == results.rows


def test_missing_cell_is_blank():
    results = make_run([make_cell("h1", "a"), make_cell("h2", "b")])
    lines = render_table(results).splitlines()
    assert lines[3] == "|a            |success|       |"
    assert lines[5] == "|b            |       |success|"


def test_report_mentions_rate_uncategorized_and_retries(all_states):
    text = render_report(all_states)
    assert "classification rate: 83% (10 of 12 failures have a named cause)" in text
    assert "uncategorized failures: debian-trixie.tox, ubuntu-noble.opensuse-leap-15" in text
    assert "passed only on retry: debian-bookworm.debian-trixie (2)" in text
    interrupted = copy.deepcopy(all_states)
    interrupted.interrupted = True
    assert "INTERRUPTED" in render_report(interrupted)


def test_marks_key_lists_only_marks_in_use():
    text = render_report(make_run([make_cell("h", "a"), make_cell("h", "b", attempts=2)]))
    assert "marks:\n  (try N)      passed only on attempt N, not a clean pass\n\n" in text
    assert "- N -" not in text
    assert "marks:" not in render_report(make_run([make_cell("h", "a")]))
