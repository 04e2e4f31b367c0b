"""The corpus is consistent: every log indexed, small, redacted, with its evidence line.

Structure only: whether the classifier names each log's cause is the classifier's test.
"""

import re
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
INDEX = yaml.safe_load((HERE / "index.yaml").read_text())
KINDS = {"hostgen", "check", "build", "boot", "preflight"}
# Cause ids the corpus expects: the catalogue's plus the ones the corpus introduced.
IDS = {
    "no-such-script", "zypper-not-available", "dnf-not-available", "runuser-not-available",
    "tox-not-available", "missing-host-tool", "missing-dependency", "base-image-unavailable",
    "suite-not-on-mirror", "mirror-unreachable", "release-file-expired", "package-not-found",
    "out-of-disk-space", "capability-denied", "timeout", "engine-error", "no-bootloader",
    "kernel-panic", "root-fs-not-found", "boot-timeout",
    "hook-failed", "element-not-found", "element-cycle", "noexec-build-dir", "no-loop-device",
    "bootloader-error", "image-conversion-failed", "release-signature-invalid",
    "mirror-out-of-sync", "unmet-dependencies", "dpkg-interrupted", "tests-failed",
    "no-binfmt-handler",
    # named inside what were generic buckets (a failed hook, package install, check, cell)
    "maintainer-script-failed", "dependency-problems", "read-only-filesystem",
    "killed-by-sigkill", "segmentation-fault", "out-of-memory", "crlf-line-endings",
    "interpreter-not-found", "python-exception", "resource-limit", "unbound-variable",
    "file-conflict", "architecture-mismatch", "package-archive-corrupt", "conffile-prompt",
    "package-index-unreachable", "no-tests-ran", "python-package-not-found",
    "python-version-unsupported", "externally-managed-environment", "filesystem-size-invalid",
    "filesystem-corrupt", "filesystem-feature-unsupported", "grub-device-not-found",
    "grub-platform-missing", "efi-partition-missing", "file-not-found",
    # a pinned run's repository view lacking a file ("404 Not in snapshot")
    "snapshot-incomplete",
}


def apt_source_hosts():
    """Host names of this machine's apt sources (never written into the corpus)."""
    hosts = set()
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            hosts |= set(re.findall(r"^(?:deb(?:-src)?\s.*?|URIs:.*?)https?://([^/\s]+)",
                                    text, re.M))
    return hosts


def test_every_log_is_indexed_once():
    files = [entry["file"] for entry in INDEX]
    assert len(files) == len(set(files))
    on_disk = {str(p.relative_to(HERE)) for p in HERE.rglob("*.log")}
    assert on_disk == set(files)


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: e["file"])
def test_entry(entry):
    path = HERE / entry["file"]
    assert path.stat().st_size < 150 * 1024
    assert entry["kind"] in KINDS
    assert entry["tool"] and entry["how"] and entry["host"] and entry["row"]
    if entry["id"] is None:
        assert entry["file"].startswith("success/")
        return
    assert entry["id"] in IDS
    assert entry["file"].startswith(f"failures/{entry['id']}/")
    if entry["evidence"] is not None:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        assert entry["evidence"] in lines


def test_enough_of_everything():
    failures = [e for e in INDEX if e["id"]]
    assert len(failures) >= 35
    assert len(INDEX) - len(failures) >= 8
    assert len({e["tool"] for e in failures}) >= 5


def test_no_mirror_host_in_any_log():
    hosts = apt_source_hosts()
    if not hosts:
        pytest.skip("no apt sources on this machine")
    for path in HERE.rglob("*.log"):
        text = path.read_text(errors="replace")
        for host in hosts:
            assert host not in text, f"{path.name} names a mirror host"
