"""matrix.hostgen.facts: parsing the probe's output and storing facts on images."""

import subprocess

import pytest

from matrix.hostgen.facts import (
    FACTS_LABEL,
    FactsError,
    HostFacts,
    facts_from_labels,
    parse_probe_output,
    probe_command,
)

PROBE_OUTPUT = """\
tool=debootstrap
tool=qemu-img
tool=runuser
tool=tox
tool=python3
tool=bogus
debootstrap_script=trixie
debootstrap_script=forky
debootstrap_script=bookworm
arch=x86_64
python=3.13.5
tox=4.24.1 from /usr/lib/python3/dist-packages/tox/__init__.py
os_id=debian
os_version=13
"""


def test_parse_probe_output():
    facts = parse_probe_output(PROBE_OUTPUT)
    assert facts.tools == ("debootstrap", "python3", "qemu-img", "runuser", "tox")
    assert facts.debootstrap_scripts == ("bookworm", "forky", "trixie")
    assert facts.has_debootstrap_script("forky")
    assert not facts.has_tool("zypper")
    assert facts.python_version == "3.13.5"
    assert facts.tox_version == "4.24.1"
    assert (facts.os_id, facts.os_version, facts.arch) == ("debian", "13", "x86_64")


def test_parse_minimal_output():
    facts = parse_probe_output("arch=aarch64\n")
    assert facts == HostFacts(tools=(), debootstrap_scripts=(), arch="aarch64")
    assert "no tools" in facts.summary()


def test_output_without_arch_is_an_error():
    with pytest.raises(FactsError):
        parse_probe_output("sh: 1: not found\n")


def test_json_round_trip_and_labels():
    facts = parse_probe_output(PROBE_OUTPUT)
    assert HostFacts.from_json(facts.to_json()) == facts
    assert facts_from_labels({FACTS_LABEL: facts.to_json()}) == facts
    assert facts_from_labels({}) is None
    assert facts_from_labels(None) is None
    assert facts_from_labels({FACTS_LABEL: "{not json"}) is None
    assert facts_from_labels({FACTS_LABEL: '{"version": 999}'}) is None


def test_summary_mentions_versions_and_tools():
    summary = parse_probe_output(PROBE_OUTPUT).summary()
    assert "python 3.13.5" in summary and "tox 4.24.1" in summary
    assert "debootstrap qemu-img runuser" in summary
    assert "3 debootstrap scripts" in summary


def test_probe_script_runs_under_sh():
    # The probe is plain POSIX sh; on this machine it must at least print the arch.
    result = subprocess.run(probe_command(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    facts = parse_probe_output(result.stdout)
    assert facts.arch
