"""Fixtures shared by the unit and integration tests."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from results.model import RunResults
from results.reader import read_results
from tests.resultfactory import ALL_STATES

# A test run started in the background of a non-interactive shell inherits SIGINT ignored,
# and so would every child it starts: the Ctrl-C tests would then test the shell, not the
# program. Ctrl-C acts as on a terminal whatever started the tests.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def all_states() -> RunResults:
    """The golden all-states run, loaded afresh (a test may change it)."""
    return read_results(ALL_STATES)


@pytest.fixture
def all_states_dir(tmp_path: Path) -> Path:
    """A writable copy of the all-states run directory."""
    run_dir = tmp_path / read_results(ALL_STATES).run_id
    shutil.copytree(ALL_STATES, run_dir)
    return run_dir


@pytest.fixture(autouse=True)
def _private_snapshot_store(tmp_path_factory: pytest.TempPathFactory,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No test's run, gc or snapshot command touches the user's snapshot store: every
    test gets its own (children inherit the variable)."""
    monkeypatch.setenv("DIB_MATRIX_SNAPSHOTS", str(tmp_path_factory.mktemp("snapshots")))
