"""The golden all-states run (tests/resultfactory.py) is what it claims to be."""

from results.model import State
from tests.resultfactory import ALL_STATES


def test_all_states_covers_every_finished_state(all_states):
    finished = {s for s in State if s is not State.PENDING}
    assert {c.state for c in all_states.cells} == finished
    assert any(c.passed_on_retry for c in all_states.cells)
    assert any(c.reused for c in all_states.cells)
    assert any(not c.voting for c in all_states.cells)
    assert any("<script>" in (c.evidence or "") for c in all_states.cells)
    assert len(all_states.hosts) >= 3


def test_all_states_logs_exist_for_finished_cells(all_states):
    for cell in all_states.cells:
        if cell.log:
            assert (ALL_STATES / cell.log).is_file(), cell.log
