"""The catalogue names the cause of every evidence line the boot watcher gives
(dib.boottest reports evidence only; matrix.verdict names causes)."""

import pytest

from dib.bootconsole import Stage, Watcher, WatchSettings, qemu_failed, replay_log
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import classify_lines
from tests.unit.dib.bootlogs import CASES


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


def _category(catalogue, evidence: str) -> str:
    verdict = classify_lines([evidence], "some-host", "debian-bookworm-vm:boot", catalogue)
    return verdict.category.id


@pytest.mark.parametrize("name", list(CASES))
def test_the_catalogue_names_the_cause_of_each_evidence_line(catalogue, name):
    log, ending, _, category = CASES[name]
    assert _category(catalogue, replay_log(log, **ending).evidence) == category


def test_the_catalogue_names_live_timings_and_qemu_failures(catalogue):
    stalled = Watcher(WatchSettings(stall_seconds=30))
    stalled.feed('BdsDxe: starting Boot0001 "UEFI Misc Device"', 2.4)
    assert stalled.done(33.0)
    evidence = stalled.verdict(33.0).evidence
    assert evidence == (
        "boot: the firmware handed over to the disk, then nothing for 31 s: "
        'BdsDxe: starting Boot0001 "UEFI Misc Device"'
    )
    assert _category(catalogue, evidence) == "no-bootloader"
    timeout = Watcher(WatchSettings())
    timeout.feed("Loading Linux 6.1.0-50-amd64 ...", 3.0)
    evidence = timeout.verdict(600.2, timed_out=True).evidence
    assert evidence == (
        "boot: no marker after 600 s; furthest stage: bootloader; "
        "last line: Loading Linux 6.1.0-50-amd64 ..."
    )
    assert _category(catalogue, evidence) == "boot-timeout"
    failed = qemu_failed("qemu: could not open disk image", Stage.NOTHING)
    assert failed.infrastructure and not failed.passed
    assert failed.evidence == "boot: qemu failed: qemu: could not open disk image"
    assert _category(catalogue, failed.evidence) == "qemu-error"
