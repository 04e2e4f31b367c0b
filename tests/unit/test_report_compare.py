"""compare() and the release gate: regressions, fixes, changed causes, exit codes."""

from __future__ import annotations

import copy

import pytest

from matrix.cli import main
from reports.compare import Change, compare, render_comparison
from reports.gate import EXIT_FAILURES, EXIT_OK, EXIT_USAGE, gate_exit_code, gating_cells
from results.model import Category, State
from results.store import save
from tests.resultfactory import category, make_cell, make_run

NOBLE = Category("no-such-script", "No such script: /usr/share/debootstrap/scripts/noble")
FORKY = Category("no-such-script", "No such script: /usr/share/debootstrap/scripts/forky")


def pair():
    old = make_run([
        make_cell("h", "hostgen"),
        make_cell("h", "reg"),
        make_cell("h", "fix", State.FAILED, category=NOBLE),
        make_cell("h", "cause", State.FAILED, category=NOBLE),
        make_cell("h", "same", State.FAILED, category=FORKY),
        make_cell("h", "gone"),
    ], run_id="old")
    new = make_run([
        make_cell("h", "hostgen"),
        make_cell("h", "reg", State.FAILED, category=category("uncategorized")),
        make_cell("h", "fix"),
        make_cell("h", "cause", State.FAILED, category=FORKY),
        make_cell("h", "same", State.FAILED, category=FORKY),
        make_cell("h", "added", State.FAILED),
    ], run_id="new")
    return old, new


def test_compare_sorts_every_difference():
    old, new = pair()
    result = compare(old, new)
    assert [(d.change, d.id) for d in result.diffs] == [
        (Change.REGRESSION, "h.reg"),
        (Change.FIX, "h.fix"),
        (Change.CHANGED, "h.cause"),
        (Change.NEW, "h.added"),
        (Change.REMOVED, "h.gone"),
    ]
    assert result.unchanged == 2


def test_comparison_text():
    old, new = pair()
    text = render_comparison(compare(old, new))
    assert text.startswith("old -> new: 1 regressions (1 voting), 1 fixes, 1 changed, 1 new, "
                           "1 removed, 2 unchanged")
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == ["change", "cell", "before", "now", "voting"]
    assert rows[1] == ["regression", "h.reg", "success", "failed: uncategorized", "yes"]
    assert "failed: No such script: /usr/share/debootstrap/scripts/forky" in text


@pytest.mark.parametrize(
    ("now", "kw", "regression"),
    [
        (State.FAILED, {}, True),
        (State.TIMEOUT, {}, True),
        (State.ERROR, {}, True),
        (State.SKIPPED, {}, True),
        (State.ALLOWED_FAILURE, {"voting": False}, True),
        (State.EXCLUDED, {"reason": "dropped"}, False),
        (State.PENDING, {}, False),
        (State.SUCCESS, {"attempts": 3}, False),
    ],
)
def test_what_counts_as_a_regression(now, kw, regression):
    old = make_run([make_cell("h", "t")])
    new = make_run([make_cell("h", "t", now, **kw)])
    assert bool(compare(old, new).regressions) is regression


# --- the gate ----------------------------------------------------------------------------

def test_gate_without_baseline_fails_on_voting_failures_only():
    ok = make_run([
        make_cell("h", "a"),
        make_cell("h", "b", State.ALLOWED_FAILURE, voting=False, category=category("x")),
        make_cell("h", "c", State.SKIPPED),  # follows a failure that is counted on its own
        make_cell("h", "d", State.EXCLUDED, reason="not here"),
        make_cell("h", "e", State.FAILED, voting=False),
    ])
    assert gate_exit_code(ok) == EXIT_OK
    for state in (State.FAILED, State.TIMEOUT, State.ERROR):
        bad = make_run([make_cell("h", "a"), make_cell("h", "b", state)])
        assert gate_exit_code(bad) == EXIT_FAILURES, state


def test_gate_with_baseline_fails_exactly_on_voting_regressions():
    old, new = pair()
    assert gate_exit_code(new, baseline=old) == EXIT_FAILURES
    assert [c.id for c in gating_cells(new, old)] == ["h.reg"]
    # still failing (h.same), changed cause (h.cause), new failure (h.added): not regressions
    new.cell("h", "reg").state = State.SUCCESS
    assert gate_exit_code(new, baseline=old) == EXIT_OK
    assert gate_exit_code(new) == EXIT_FAILURES  # without a baseline they do fail


def test_gate_ignores_non_voting_regressions():
    old = make_run([make_cell("h", "a"), make_cell("h", "b")])
    new = make_run([
        make_cell("h", "a", State.ALLOWED_FAILURE, voting=False),
        make_cell("h", "b", State.FAILED, voting=False),
    ])
    assert len(compare(old, new).regressions) == 2
    assert gate_exit_code(new, baseline=old) == EXIT_OK


# --- dib-matrix compare ----------------------------------------------------------------

def test_compare_command_exit_codes(tmp_path, capsys):
    old, new = pair()
    save(old, tmp_path / "old")
    save(new, tmp_path / "new")
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new")]) == EXIT_FAILURES
    assert "regression" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "old/results.json")]) == EXIT_OK
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "missing")]) == EXIT_USAGE
    assert "no results.json" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/results.json").write_text('{"schema_version": 99}')
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "bad")]) == EXIT_USAGE


def test_compare_command_on_the_fixture_with_a_regression(tmp_path, capsys, all_states):
    old, new = all_states, copy.deepcopy(all_states)
    old.run_id = "baseline"
    save(old, tmp_path / "a")
    new.cell("debian-trixie", "debian-forky").state = State.FAILED
    save(new, tmp_path / "b")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == EXIT_FAILURES
    out = capsys.readouterr().out
    assert "1 regressions (1 voting)" in out and "debian-trixie.debian-forky" in out
