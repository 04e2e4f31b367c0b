"""The catalogue names the cause of every evidence line the boot checks give (the
consoles are those of tests/unit/dib/test_boottest_checks.py): each failed check has a
cause of its own, emergency mode is named even with a device timeout in the log, and a
console line of a system that came up does not outrank the check that failed."""

from __future__ import annotations

import pytest

from dib.bootconsole import CHECK_EVIDENCE, BootCheck, CheckStatus, replay_log
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import Evidence, classify, classify_lines
from tests.unit.dib.test_boottest_checks import (
    DONE,
    EMERGENCY,
    FAILED_UNIT,
    HUNG,
    PASSING,
    POWER_DOWN,
    console,
)

ROW = "debian-bookworm-vm:boot"


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


def category(catalogue, evidence: str) -> str:
    return classify_lines([evidence], "local", ROW, catalogue).category.id


@pytest.mark.parametrize(("name", "entry"), [
    ("units", "boot-unit-failed"),
    ("cloud-init", "boot-cloud-init-failed"),
    ("network", "boot-no-network"),
    ("resolve", "boot-name-resolution-failed"),
    ("root-grown", "boot-root-not-grown"),
    ("identity", "image-leaks-build-host-identity"),
    ("shutdown", "boot-shutdown-hung"),
    ("root-fs", "boot-check-failed"),
    ("cmdline", "boot-check-failed"),
    ("a-future-check", "boot-check-failed"),
])
def test_each_failed_check_has_a_cause_of_its_own(catalogue, name, entry):
    check = BootCheck(name, CheckStatus.FAIL, "foo.service something is wrong")
    assert category(catalogue, check.evidence()) == entry
    if name in CHECK_EVIDENCE:
        assert check.evidence().startswith(CHECK_EVIDENCE[name].split("{")[0])


def test_a_failed_unit_is_named_in_the_legend(catalogue):
    verdict = replay_log(console(FAILED_UNIT, *PASSING[1:], DONE, POWER_DOWN))
    found = classify_lines([verdict.evidence], "h", ROW, catalogue).category
    assert (found.id, found.legend) == ("boot-unit-failed", "boot: unit failed: dib-broken.service")
    not_running = replay_log(console("DIB-BOOT-CHECK units fail system starting", DONE))
    assert category(catalogue, not_running.evidence) == "boot-unit-failed"


def test_emergency_mode_beats_the_device_timeout_in_its_log(catalogue, tmp_path):
    verdict = replay_log(EMERGENCY)
    assert category(catalogue, verdict.evidence) == "boot-emergency-mode"
    log = tmp_path / "boot.log"
    log.write_text(EMERGENCY)  # its "Timed out waiting for device ... by-uuid" line too
    found = classify(Evidence("h", ROW, (verdict.evidence,), log), catalogue)
    assert found.category.id == "boot-emergency-mode"


def test_a_failed_check_outranks_console_lines_of_a_system_that_came_up(catalogue, tmp_path):
    nofail = ("[ TIME ] Timed out waiting for device dev-disk-by\\x2duuid-1.device - "
              "/dev/disk/by-uuid/1.")
    text = console(nofail, FAILED_UNIT, DONE, POWER_DOWN)
    verdict = replay_log(text)
    log = tmp_path / "boot.log"
    log.write_text(text)
    found = classify(Evidence("h", ROW, (verdict.evidence,), log), catalogue)
    assert found.category.id == "boot-unit-failed"


def test_a_hung_power_off_and_unfinished_checks_are_named(catalogue):
    hung = replay_log(console(*PASSING, DONE, HUNG))
    assert category(catalogue, hung.evidence) == "boot-shutdown-hung"
    unfinished = replay_log(console(*PASSING[:3]))
    assert category(catalogue, unfinished.evidence) == "boot-checks-unfinished"
