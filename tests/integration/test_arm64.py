"""arm64 images on this (amd64) machine: the image's programs run through the kernel's
binfmt handler for qemu-aarch64 (qemu-user-static, fix-binary flag), nothing is copied
into the image; the vm boots under qemu-system-aarch64 (TCG) with AAVMF.

Quick: dib refuses at once, with the fix in its message, when no handler is registered
(a fake binfmt_misc directory; the machine's handlers are left alone), and a real
``dib-build -a arm64`` of debian-minbase to tar (about a minute cold) checked from its
os-release, its dpkg database and ``dpkg --print-architecture`` run in the tree.
Slow: the ``debian-bookworm-arm64-vm`` target built to qcow2 and booted to the marker.
Timings are printed (run with -s to see them).
"""

from __future__ import annotations

import posixpath
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from dib import arch
from dib.bootconsole import WatchSettings
from dib.bootqemu import AAVMF_CANDIDATES, BootOptions
from dib.boottest import run_boot_test
from tests.integration.dibhelpers import REPO, build_mounts, dib_env, run_dib

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 2400  # arm64 under TCG on a shared two-core machine: many minutes
needs_handler = pytest.mark.skipif(
    arch.host_arch() != "arm64" and not arch.can_run("arm64"),
    reason="no binfmt handler for arm64 (./quickstart setup registers qemu-user-static's)",
)
needs_qemu_aarch64 = pytest.mark.skipif(
    shutil.which("qemu-system-aarch64") is None or not any(
        Path(p).is_file() for p in AAVMF_CANDIDATES
    ),
    reason="qemu-system-arm or qemu-efi-aarch64 not installed",
)


def mounts_of(tmp: Path) -> list:
    """This test's build mounts left behind (other sessions may be building meanwhile)."""
    return [line for line in build_mounts() if f" {tmp}/" in line]


def test_missing_handler_fails_fast_with_the_fix(tmp_path):
    fake = tmp_path / "binfmt_misc"
    fake.mkdir()
    (fake / "status").write_text("enabled\n")
    (fake / "register").write_text("")
    target = "amd64" if arch.host_arch() == "arm64" else "arm64"
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm", arch.BINFMT_DIR_VAR: str(fake)})
    out = tmp_path / "out" / "image"
    started = time.monotonic()
    done = run_dib(["-a", target, "-t", "tar", "-o", str(out), "debian-minbase"], env, 120)
    seconds = time.monotonic() - started
    assert done.returncode == 1, done.stdout[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert f"| ERROR: no binfmt handler for {target}: no handler for {target}" in last
    assert "qemu-user-static" in last and "mount -t binfmt_misc" in last
    assert "debootstrap" not in done.stdout.replace("debian-minbase", "")  # nothing began
    assert (tmp_path / "out" / "image.failure.json").is_file()
    assert not list(tmp_path.glob("dib_build.*"))
    assert mounts_of(tmp_path) == []
    assert seconds < 30


def _member_text(tar: tarfile.TarFile, name: str) -> str:
    member = tar.getmember(name)
    while member.issym():  # etc/os-release -> ../usr/lib/os-release
        base = "/" if member.linkname.startswith("/") else posixpath.dirname(name[1:])
        name = "." + posixpath.normpath(posixpath.join(base, member.linkname))
        member = tar.getmember(name)
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read().decode()


def _dpkg_architectures(status: str) -> dict:
    found = {}
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields:
            found[fields["Package"]] = fields.get("Architecture", "")
    return found


@needs_handler
def test_arm64_minbase_tar(tmp_path, image_cache):
    env = dib_env(tmp_path, {"DIB_RELEASE": "bookworm"})
    out = tmp_path / "out" / "minbase-arm64"
    args = ["-a", "arm64", "-t", "tar", "--checksum", "-o", str(out),
            "--image-cache", str(image_cache), "debian-minbase"]
    started = time.monotonic()
    done = run_dib(args, env, timeout=1800)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:]
    image = out.with_name("minbase-arm64.tar")
    size = image.stat().st_size >> 20
    print(f"\n[arm64] debian-minbase tar built in {seconds:.0f} s: {size} MiB")
    assert mounts_of(tmp_path) == []
    with tarfile.open(image) as tar:
        release = _member_text(tar, "./etc/os-release")
        status = _member_text(tar, "./var/lib/dpkg/status")
        names = set(tar.getnames())
    assert "ID=debian" in release.splitlines() and "VERSION_CODENAME=bookworm" in release
    arches = _dpkg_architectures(status)
    assert arches["dpkg"] == "arm64" and arches["libc6"] == "arm64"
    assert not any("qemu" in name for name in names)  # the handler is fix-binary: no copies
    manifest = out.with_name("minbase-arm64.packages").read_text().splitlines()
    assert "dpkg" in {line.split()[0] for line in manifest if line.endswith(" arm64")}
    # The image's own dpkg, an arm64 program, run through the kernel's handler.
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["tar", "-xf", str(image), "-C", str(tree)], check=True)
    printed = subprocess.run(
        ["chroot", str(tree), "dpkg", "--print-architecture"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert printed.stdout.strip() == "arm64"
    shutil.rmtree(tree)


@pytest.mark.slow
@needs_handler
@needs_qemu_aarch64
def test_arm64_vm_target_builds_and_boots(tmp_path, image_cache):
    target = yaml.safe_load((REPO / "targets" / "debian-bookworm-arm64-vm.yaml").read_text())
    assert target["arch"] == "arm64" and target["boot-test"] is True
    env = dib_env(tmp_path, target["env"])
    out = tmp_path / "out" / "vm-arm64"
    args = ["-a", "arm64", "-t", ",".join(target["outputs"]), "-o", str(out),
            "--image-cache", str(image_cache), *target["elements"]]
    started = time.monotonic()
    done = run_dib(args, env, timeout=3600)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:]
    assert "boot: UEFI (arm64)" in done.stdout
    image = out.with_name("vm-arm64.qcow2")
    print(f"\n[arm64] vm built in {seconds:.0f} s: {image.stat().st_size >> 20} MiB qcow2")
    assert mounts_of(tmp_path) == []
    result = run_boot_test(
        BootOptions(
            image=image,
            serial_log=tmp_path / "serial.log",
            timeout=BOOT_TIMEOUT,
            arch="arm64",
            disk_size="3G",
            watch=WatchSettings(accept_login_prompt=False),
        )
    )
    print(f"[arm64] boot: {result.summary()} (total {result.seconds} s)")
    assert result.passed, result.evidence
    assert result.facts["kernel"].endswith("-arm64")
    assert result.facts["root"] == "/dev/vda3"
    assert int(result.facts["root-bytes"]) > 2_500_000_000  # growroot filled the 3 GiB disk
    serial = Path(result.serial_log).read_text(errors="replace")
    assert "console=ttyAMA0,115200" in serial or "ttyAMA0" in serial
    assert result.command[0] == "qemu-system-aarch64"
