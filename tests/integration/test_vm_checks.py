"""The boot row's checks of the running system, for real: one image built as the bundled
debian-bookworm-vm target builds it (debian-minimal, vm, boot-marker, growroot,
boot-checks) and booted under qemu (TCG); the failing cases are copies of it edited
offline with debugfs (no rebuild, no loop device): a unit that fails at boot, an fstab
entry whose UUID no disk has, no growroot in a larger disk, a network of the image's
own, a machine-id set at build time. One more image has cloud-init, for the NoCloud
seed. One boot at a time; timings are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from dib.bootconsole import CHECK_NAMES, CheckStatus, WatchSettings
from dib.bootqemu import BootOptions, mirror_host
from dib.boottest import run_boot_test
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import classify_lines
from matrix.verdict.verify import Expectation, summary, verify_images
from tests.integration.dibhelpers import build_mounts, dib_env, make_element, run_dib
from tests.integration.test_vm import needs_qemu, qemu_running_on, sha256

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 900
TARGET_ELEMENTS = ["debian-minimal", "vm", "boot-marker", "growroot", "boot-checks"]
BROKEN_UNIT = """[Unit]
Description=a unit that fails at boot
[Service]
Type=oneshot
ExecStart=/bin/false
[Install]
WantedBy=multi-user.target
"""
MISSING_UUID = "0b4e5f3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
WIRED = "[Match]\nName=en*\n[Network]\nDHCP=yes\n"
QEMU_DNS = "nameserver 10.0.2.3\n"  # qemu's user network forwards it to this machine's


@pytest.fixture(scope="module")
def checked_vm(tmp_path_factory, image_cache):
    """The bundled vm target's image, built once for every test here."""
    tmp = tmp_path_factory.mktemp("checked-vm")
    output = tmp / "out" / "checked-vm"
    args = ["-o", str(output), "-t", "qcow2", "--image-cache", str(image_cache),
            *TARGET_ELEMENTS]
    started = time.monotonic()
    done = run_dib(args, dib_env(tmp, {"DIB_RELEASE": "bookworm"}), timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:]
    assert build_mounts() == []
    image = output.with_name("checked-vm.qcow2")
    print(f"\n[vm-checks] built in {time.monotonic() - started:.0f} s")
    return image


def boot(image: Path, log: Path, **options):
    result = run_boot_test(BootOptions(image=image, serial_log=log, timeout=BOOT_TIMEOUT,
                                       watch=WatchSettings(accept_login_prompt=False),
                                       resolve=mirror_host(), work_dir=log.parent, **options))
    added = (f", marker after {result.seconds_to_marker} s: the checks and power-off took "
             f"{result.seconds - result.seconds_to_marker:.1f} s"
             if result.seconds_to_marker is not None else "")
    print(f"\n[vm-checks] {image.name}: {result.summary()} (total {result.seconds} s{added})")
    assert not qemu_running_on(image)
    assert [p.name for p in log.parent.glob(".dib-boottest.*")] == []  # overlay removed
    return result


def category(evidence: str, row: str = "debian-bookworm-vm:boot") -> str:
    return classify_lines([evidence], "local", row, load_catalogue()).category.id


def root_offset(raw: Path) -> int:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    return int(table["partitions"][-1]["start"]) * int(table.get("sectorsize", 512))


def edited_copy(image: Path, name: str, commands: list[str], files: dict[str, str]) -> Path:
    """A raw copy of ``image`` whose root filesystem got ``commands`` (debugfs -w; FILE
    names a key of ``files``, written beside the copy first)."""
    raw = image.with_name(f"{name}.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    manifest = image.with_suffix(".packages")
    raw.with_suffix(".packages").write_text(manifest.read_text())
    for file_name, text in files.items():
        (raw.parent / f"{name}-{file_name}").write_text(text)
    script = [c.replace("FILE:", f"{raw.parent}/{name}-") for c in commands]
    device = f"{raw}?offset={root_offset(raw)}"
    done = subprocess.run(["debugfs", "-w", "-f", "-", device], input="\n".join(script) + "\n",
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return raw


def read_file(raw: Path, path: str) -> str:
    device = f"{raw}?offset={root_offset(raw)}"
    return subprocess.run(["debugfs", "-c", "-R", f"cat {path}", device], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.slow
@needs_qemu
def test_the_bundled_vm_target_passes_every_check(checked_vm):
    digest = sha256(checked_vm)
    checks = verify_images([checked_vm], Expectation("debian", "bookworm"), checked_vm.parent,
                           300)
    assert summary(checks) is None, summary(checks)
    result = boot(checked_vm, checked_vm.parent / "serial.log")
    assert result.passed, result.evidence
    by_name = {c.name: c for c in result.checks}
    assert list(by_name) == list(CHECK_NAMES)
    assert not [c for c in result.checks if c.status is CheckStatus.FAIL]
    for name in ("units", "root-fs", "root-grown", "cmdline", "identity", "shutdown"):
        assert by_name[name].status is CheckStatus.PASS, by_name[name]
    assert "machine-id made at this boot" in by_name["identity"].detail
    # The image configures no network (ifupdown stanzas but no ifupdown): said, not failed.
    assert by_name["network"].status is CheckStatus.SKIP
    assert "no ifup" in by_name["network"].detail
    assert sha256(checked_vm) == digest  # booted an overlay: the image is never written


@pytest.mark.slow
@needs_qemu
def test_a_failing_unit_is_named_and_an_image_without_growroot_is_not_judged_on_growth(
        checked_vm):
    """One more boot for three cases: a unit that fails, no growroot in a larger disk, and
    a network the image configures itself (systemd-networkd, DHCP)."""
    raw = edited_copy(checked_vm, "broken-unit", [
        "write FILE:unit /etc/systemd/system/dib-broken.service",
        "symlink /etc/systemd/system/multi-user.target.wants/dib-broken.service "
        "../dib-broken.service",
        "rm /etc/systemd/system/multi-user.target.wants/dib-growroot.service",
        "rm /usr/local/sbin/dib-growroot",
        "mkdir /etc/systemd/network",
        "write FILE:wired /etc/systemd/network/20-wired.network",
        "symlink /etc/systemd/system/multi-user.target.wants/systemd-networkd.service "
        "/lib/systemd/system/systemd-networkd.service",
        "mkdir /etc/systemd/system/sockets.target.wants",
        "symlink /etc/systemd/system/sockets.target.wants/systemd-networkd.socket "
        "/lib/systemd/system/systemd-networkd.socket",
        "rm /etc/resolv.conf",
        "write FILE:resolv /etc/resolv.conf",
    ], {"unit": BROKEN_UNIT, "wired": WIRED, "resolv": QEMU_DNS})
    result = boot(raw, raw.parent / "broken-unit.log")
    assert not result.passed and not result.infrastructure
    assert result.evidence == "boot: unit failed: dib-broken.service"
    assert category(result.evidence) == "boot-unit-failed"
    by_name = {c.name: c for c in result.checks}
    assert by_name["root-grown"].status is CheckStatus.SKIP
    assert "no growroot" in by_name["root-grown"].detail
    assert by_name["shutdown"].status is CheckStatus.PASS
    assert by_name["network"].status is CheckStatus.PASS, by_name["network"]
    assert "IPv4 10.0.2.15" in by_name["network"].detail
    if mirror_host() and resolves_here(mirror_host()):
        assert by_name["resolve"].status is CheckStatus.PASS, by_name["resolve"]


def resolves_here(name: str) -> bool:
    return subprocess.run(["getent", "ahostsv4", name], capture_output=True).returncode == 0


@pytest.mark.slow
@needs_qemu
def test_an_fstab_entry_with_a_missing_uuid_is_emergency_mode_not_a_timeout(checked_vm):
    fstab = read_file_of(checked_vm) + f"UUID={MISSING_UUID} /mnt/data ext4 defaults 0 2\n"
    raw = edited_copy(checked_vm, "bad-fstab", ["rm /etc/fstab", "write FILE:fstab /etc/fstab"],
                      {"fstab": fstab})
    result = boot(raw, raw.parent / "bad-fstab.log")
    assert not result.passed and not result.infrastructure
    assert result.evidence.startswith("boot: emergency mode: "), result.evidence
    assert MISSING_UUID[-12:] in result.evidence and "\x1b" not in result.evidence
    assert category(result.evidence) == "boot-emergency-mode"
    assert result.seconds < 400  # systemd's 90 s device timeout, then the emergency shell


def read_file_of(image: Path) -> str:
    raw = image.with_name("fstab-source.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    try:
        return read_file(raw, "/etc/fstab")
    finally:
        raw.unlink()


@pytest.mark.slow
def test_a_build_host_machine_id_fails_verification_with_the_leak_cause(checked_vm):
    raw = edited_copy(checked_vm, "machine-id", [
        "rm /etc/machine-id", "write FILE:id /etc/machine-id"],
        {"id": "594629aadd9049478f2d920418b203b7\n"})
    checks = verify_images([raw], Expectation("debian", "bookworm"), raw.parent, 300)
    line = summary(checks)
    assert line == ("verify: identity: image leaks build-host identity: /etc/machine-id: set at "
                    "build time (594629aa...)")
    assert category(line, "debian-bookworm-vm") == "image-leaks-build-host-identity"


@pytest.fixture(scope="module")
def cloud_init_vm(tmp_path_factory, image_cache):
    """The vm target's image with cloud-init installed (an element of the test's own)."""
    tmp = tmp_path_factory.mktemp("cloud-init-vm")
    elements = tmp / "elements"
    make_element(elements, "with-cloud-init", {"element-deps": "package-installs\n",
                                               "package-installs.yaml": "cloud-init:\n"})
    output = tmp / "out" / "cloud-init-vm"
    args = ["-o", str(output), "-t", "qcow2", "--image-cache", str(image_cache),
            *TARGET_ELEMENTS, "with-cloud-init"]
    env = dib_env(tmp, {"DIB_RELEASE": "bookworm", "ELEMENTS_PATH": str(elements)})
    started = time.monotonic()
    done = run_dib(args, env, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:]
    print(f"\n[vm-checks] built cloud-init-vm in {time.monotonic() - started:.0f} s")
    return output.with_name("cloud-init-vm.qcow2")


@pytest.mark.slow
@needs_qemu
def test_cloud_init_runs_the_nocloud_seeds_user_data(cloud_init_vm):
    result = boot(cloud_init_vm, cloud_init_vm.parent / "serial.log")
    by_name = {c.name: c for c in result.checks}
    assert by_name["cloud-init"].status is CheckStatus.PASS, by_name["cloud-init"]
    assert "user-data ran" in by_name["cloud-init"].detail
    assert result.passed, result.evidence
