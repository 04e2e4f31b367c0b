"""Investigation planning (``matrix.run.variants``): the verdict table, which cells are
investigated within the budget, which variants can run and why the others cannot.

Hostile classes covered: a last-good with no inputs recorded (older records), inputs
collected since, inputs unchanged since (no variant that repeats the rerun), budgets of
0 and below, non-voting, boot and investigation cells never investigated.
"""

from __future__ import annotations

import itertools

import pytest

from matrix.run.variants import (
    ORDER,
    Available,
    Impossible,
    Inputs,
    LastGoodInputs,
    PlannedVariant,
    Variant,
    Verdict,
    needs_combined,
    plan_cell,
    regressed,
    verdict,
    within_budget,
)
from results.model import State
from results.names import is_row
from tests.resultfactory import make_cell, make_run

NOW = Inputs(tree="a" * 64, host_image="sha256:" + "1" * 64, snapshot="20250101-020000-0001")
THEN = Inputs(tree="b" * 64, host_image="sha256:" + "2" * 64, snapshot="20241201-020000-0002")
ALL_KEPT = Available(tree=True, host_image=True, snapshot=True)


@pytest.mark.parametrize(("passed", "expected"), [
    ({}, (Verdict.UNEXPLAINED, None)),
    ({Variant.RERUN: True}, (Verdict.FLAKY, Variant.RERUN)),
    ({Variant.RERUN: False, Variant.DIB_TREE: True}, (Verdict.DIB_TREE, Variant.DIB_TREE)),
    ({Variant.HOST_IMAGE: True}, (Verdict.HOST_IMAGE, Variant.HOST_IMAGE)),
    ({Variant.SNAPSHOT: True}, (Verdict.PACKAGES, Variant.SNAPSHOT)),
    ({Variant.ALL: True}, (Verdict.COMBINATION, Variant.ALL)),
    # A flaky cell says nothing about its inputs, whatever else passed.
    ({Variant.RERUN: True, Variant.DIB_TREE: True}, (Verdict.FLAKY, Variant.RERUN)),
    ({v: False for v in Variant}, (Verdict.UNEXPLAINED, None)),
])
def test_the_verdict_table(passed, expected):
    found = verdict(passed)
    assert (found.verdict, found.variant) == expected


def test_every_combination_of_outcomes_has_one_verdict_named_by_the_first_pass():
    for outcome in itertools.product((False, True), repeat=len(ORDER)):
        passed = dict(zip(ORDER, outcome))
        found = verdict(passed)
        first = next((v for v in ORDER if passed[v]), None)
        assert found.variant is first
        assert found.verdict is (first.verdict if first else Verdict.UNEXPLAINED)


def test_all_runs_only_when_nothing_alone_passed():
    assert needs_combined({Variant.RERUN: False, Variant.DIB_TREE: False})
    assert not needs_combined({Variant.RERUN: False, Variant.SNAPSHOT: True})


def _regressed_run():
    baseline = make_run([make_cell("h", "t1"), make_cell("h", "t2"), make_cell("h", "t3"),
                         make_cell("h", "t4"), make_cell("h", "t1:boot"),
                         make_cell("h", "t5")], "base")
    now = make_run([make_cell("h", "t1", State.FAILED), make_cell("h", "t2", State.TIMEOUT),
                    make_cell("h", "t3", State.FAILED, voting=False),
                    make_cell("h", "t4", State.SUCCESS),
                    make_cell("h", "t1:boot", State.FAILED),
                    make_cell("h", "t5", State.ERROR),
                    make_cell("h", "t6", State.FAILED)], "now")  # t6: new, not a regression
    return baseline, now


def test_only_voting_builds_that_passed_before_and_fail_now_are_regressions():
    baseline, now = _regressed_run()
    assert [c.id for c in regressed(now, baseline)] == ["h.t1", "h.t2", "h.t5"]


def test_an_investigations_own_variant_is_never_investigated():
    baseline, now = _regressed_run()
    variant = make_cell("h", "t1--inv-rerun", State.FAILED,
                        investigation={"of": "h.t1", "variant": "rerun"})
    baseline.cells.append(make_cell("h", "t1--inv-rerun"))
    now.cells.append(variant)
    assert "h.t1--inv-rerun" not in [c.id for c in regressed(now, baseline)]


@pytest.mark.parametrize(("budget", "chosen"), [(0, 0), (-5, 0), (2, 2), (3, 3), (99, 3)])
def test_the_budget_bounds_the_cells_and_names_the_rest(budget, chosen):
    baseline, now = _regressed_run()
    selection = within_budget(regressed(now, baseline), budget)
    assert len(selection.chosen) == chosen
    assert len(selection.chosen) + len(selection.over_budget) == 3


def test_every_variant_is_planned_when_every_input_changed_and_is_kept():
    cell = make_cell("h", "t1", State.FAILED)
    plan = plan_cell(cell, NOW, LastGoodInputs("good-run", THEN, ALL_KEPT))
    assert [v.variant for v in plan.singles] == [Variant.RERUN, Variant.DIB_TREE,
                                                  Variant.HOST_IMAGE, Variant.SNAPSHOT]
    assert plan.impossible == ()
    swaps = {v.variant: v.swap for v in plan.singles}
    assert swaps[Variant.RERUN].tree is None and swaps[Variant.RERUN].host_image is None
    assert swaps[Variant.DIB_TREE].tree == THEN.tree and swaps[Variant.DIB_TREE].snapshot is None
    assert swaps[Variant.HOST_IMAGE].host_image == THEN.host_image
    assert swaps[Variant.SNAPSHOT].snapshot == THEN.snapshot
    combined = plan.combined()
    assert isinstance(combined, PlannedVariant)
    assert (combined.swap.tree, combined.swap.host_image, combined.swap.snapshot) == (
        THEN.tree, THEN.host_image, THEN.snapshot)
    for planned in (*plan.singles, combined):
        assert is_row(planned.row) and planned.row.startswith("t1--inv-")
        assert planned.of == "h.t1"


def _why(plan, variant):
    return next(i.why for i in plan.impossible if i.variant is variant)


def test_without_a_last_good_only_the_rerun_runs_and_the_others_say_why():
    plan = plan_cell(make_cell("h", "t1", State.FAILED), NOW, None)
    assert [v.variant for v in plan.singles] == [Variant.RERUN]
    for variant in (Variant.DIB_TREE, Variant.HOST_IMAGE, Variant.SNAPSHOT):
        assert "no last-good" in _why(plan, variant)
    assert isinstance(plan.combined(), Impossible)


def test_a_record_without_inputs_says_they_were_not_recorded():
    plan = plan_cell(make_cell("h", "t1", State.FAILED), NOW,
                     LastGoodInputs("old-run", Inputs(), Available()))
    assert "recorded no dib tree" in _why(plan, Variant.DIB_TREE)
    assert "recorded no host image" in _why(plan, Variant.HOST_IMAGE)
    assert "recorded no snapshot" in _why(plan, Variant.SNAPSHOT)


def test_collected_inputs_say_so():
    plan = plan_cell(make_cell("h", "t1", State.FAILED), NOW,
                     LastGoodInputs("good-run", THEN, Available(tree=True)))
    assert [v.variant for v in plan.singles] == [Variant.RERUN, Variant.DIB_TREE]
    assert "no longer in the engine (collected)" in _why(plan, Variant.HOST_IMAGE)
    assert "no longer in the snapshot store" in _why(plan, Variant.SNAPSHOT)
    # One input alone: "all" would be the same variant again.
    assert "fewer than two" in plan.combined().why


def test_an_input_unchanged_since_the_last_good_is_not_swapped():
    same_tree = Inputs(NOW.tree, THEN.host_image, None)
    plan = plan_cell(make_cell("h", "t1", State.FAILED), NOW,
                     LastGoodInputs("good-run", same_tree, ALL_KEPT))
    assert "unchanged" in _why(plan, Variant.DIB_TREE)
    assert [v.variant for v in plan.singles] == [Variant.RERUN, Variant.HOST_IMAGE]
