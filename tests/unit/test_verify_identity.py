"""Verification's build-host identity check: machine-id, D-Bus's copy, ssh host keys,
the host name and grub.cfg's root=, read from small tar images built here and from an
ext4 disk image (debugfs), and judged by check_identity; the catalogue names the leak."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import classify_lines
from matrix.verdict.verify import Expectation, summary, verify_images
from matrix.verdict.verify.identity import (
    IdentityFacts,
    build_host_names,
    check_identity,
    read_tar_identity,
)
from matrix.verdict.verify.limits import Deadline
from tests.unit.verifydata import BOOKWORM, PACKAGES, manifest_text, status_text

ROOT_UUID = "7c93fa03-d9af-466f-9e00-232eef8b0e87"
GRUB = ("menuentry 'Debian' {{\n    search --no-floppy --fs-uuid --set=root {uuid}\n"
        "    linux /vmlinuz root={root} ro console=ttyS0,115200\n    initrd /initrd.img\n}}\n")
BUILD_HOST = "buildbox"


def image_tar(path: Path, files: dict[str, bytes | str], links: dict[str, str] | None = None
              ) -> Path:
    """A small image archive as ``tar -C root .`` writes it, with os-release, a dpkg
    database and its manifest, plus ``files`` and symbolic ``links``."""
    base = {"./usr/lib/os-release": BOOKWORM, "./var/lib/dpkg/status": status_text(PACKAGES)}
    with tarfile.open(path, "w") as tar:
        for name, data in {**base, **files}.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        for name, target in {"./etc/os-release": "../usr/lib/os-release", **(links or {})}.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    path.with_name(path.name.split(".")[0] + ".packages").write_text(manifest_text(PACKAGES))
    return path


def identity_of(tmp_path: Path, files: dict, links: dict | None = None):
    image = image_tar(tmp_path / "t.tar", files, links)
    checks = verify_images([image], Expectation("debian", "bookworm"), tmp_path, 30)
    return next(c for c in checks if c.name == "identity"), checks


@pytest.fixture(autouse=True)
def build_host(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: f"{BUILD_HOST}.example.org")


def test_a_clean_image_passes(tmp_path):
    check, checks = identity_of(tmp_path, {"./etc/machine-id": "", "./etc/hostname": "debian\n"})
    assert check.ok, check.detail
    assert check.detail == ("/etc/machine-id empty; no ssh host keys; hostname debian; "
                            "no /boot/grub/grub.cfg")
    assert summary(checks) is None


@pytest.mark.parametrize("content", ["", "\n", "uninitialized\n"])
def test_an_unset_machine_id_passes(tmp_path, content):
    assert identity_of(tmp_path, {"./etc/machine-id": content})[0].ok


def test_a_machine_id_set_at_build_time_fails_with_the_leak_cause(tmp_path):
    machine_id = "594629aadd9049478f2d920418b203b7\n"
    check, checks = identity_of(tmp_path, {"./etc/machine-id": machine_id})
    assert not check.ok
    assert check.detail == "image leaks build-host identity: /etc/machine-id: set at build time " \
                           "(594629aa...)"
    line = summary(checks)
    assert line is not None and line.startswith("verify: identity: image leaks build-host")
    verdict = classify_lines([line], "h", "debian-bookworm-vm", load_catalogue())
    assert verdict.category.id == "image-leaks-build-host-identity"
    assert verdict.category.legend == "image leaks build-host identity: /etc/machine-id"


def test_dbus_machine_id_a_file_leaks_a_link_does_not(tmp_path):
    leaked = identity_of(tmp_path, {"./var/lib/dbus/machine-id": "abcdef0123456789\n"})[0]
    assert not leaked.ok and "/var/lib/dbus/machine-id" in leaked.detail
    linked = identity_of(tmp_path, {}, {"./var/lib/dbus/machine-id": "/etc/machine-id"})[0]
    assert linked.ok, linked.detail


def test_ssh_host_keys_in_the_image_leak(tmp_path):
    keys = {f"./etc/ssh/ssh_host_{kind}_key": "-----BEGIN" for kind in ("rsa", "ed25519")}
    check = identity_of(tmp_path, {**keys, "./etc/ssh/ssh_host_rsa_key.pub": "ssh-rsa",
                                   "./etc/ssh/sshd_config": "x"})[0]
    assert not check.ok
    assert check.detail.endswith("/etc/ssh/ssh_host_*_key: in the image "
                                 "(ssh_host_ed25519_key, ssh_host_rsa_key)")
    assert identity_of(tmp_path, {"./etc/ssh/sshd_config": "x"})[0].ok


@pytest.mark.parametrize(("hostname", "leak"), [
    (f"{BUILD_HOST}\n", f"/etc/hostname: the build machine's name ({BUILD_HOST})"),
    (f"{BUILD_HOST}.example.org\n", "/etc/hostname: the build machine's name"),
    ("0123456789ab\n", "/etc/hostname: 0123456789ab, a build container's id"),
    ("debian\n", None),
    ("", None),
])
def test_the_build_machines_or_a_containers_name_leaks(tmp_path, hostname, leak):
    check = identity_of(tmp_path, {"./etc/hostname": hostname})[0]
    if leak is None:
        assert check.ok, check.detail
    else:
        assert not check.ok and leak in check.detail


def test_every_leak_is_named_at_once(tmp_path):
    check = identity_of(tmp_path, {"./etc/machine-id": "0" * 32, "./etc/hostname": BUILD_HOST,
                                   "./etc/ssh/ssh_host_rsa_key": "k"})[0]
    assert check.detail.count(";") == 2 and check.detail.startswith(
        "image leaks build-host identity: /etc/machine-id: ")


def facts(root: str, uuid: str | None = ROOT_UUID, label: str | None = "cloudimg-rootfs"
          ) -> IdentityFacts:
    grub = GRUB.format(uuid=ROOT_UUID, root=root).encode()
    return IdentityFacts(files={"boot/grub/grub.cfg": grub}, root_uuid=uuid, root_label=label)


@pytest.mark.parametrize(("root", "ok", "words"), [
    (f"UUID={ROOT_UUID}", True, "is the root filesystem's"),
    (f"UUID={ROOT_UUID.upper()}", True, "is the root filesystem's"),
    ("LABEL=cloudimg-rootfs", True, "is the root filesystem's"),
    ("UUID=11111111-2222-3333-4444-555555555555", False, "is not the image's root filesystem"),
    ("LABEL=other", False, "is not the image's root filesystem"),
    ("/dev/mapper/loop0p1", False, "a build machine's device"),
    ("/dev/loop3p1", False, "a build machine's device"),
    ("/dev/nbd0p1", False, "a build machine's device"),
    ("/dev/vda1", True, "not compared"),
    ("PARTUUID=abc", True, "not compared"),
])
def test_grub_root_must_be_the_images_own_filesystem(root, ok, words):
    found = check_identity(facts(root), ("buildbox",))
    assert found.ok is ok and words in found.detail, found.detail
    if not ok:
        assert "/boot/grub/grub.cfg: root=" in found.detail


def test_a_tar_cannot_compare_a_uuid_but_still_sees_a_build_device(tmp_path):
    grub = GRUB.format(uuid=ROOT_UUID, root=f"UUID={ROOT_UUID}")
    assert "not compared" in identity_of(tmp_path, {"./boot/grub/grub.cfg": grub})[0].detail
    loop = GRUB.format(uuid=ROOT_UUID, root="/dev/loop0p1")
    assert not identity_of(tmp_path, {"./boot/grub/grub.cfg": loop})[0].ok


def test_an_unreadable_image_is_not_judged_on_identity(tmp_path):
    (tmp_path / "t.tar").write_bytes(b"not a tar" * 100)
    checks = verify_images([tmp_path / "t.tar"], Expectation("debian", "bookworm"), tmp_path, 30)
    identity = next(c for c in checks if c.name == "identity")
    assert identity.ok and identity.detail.startswith("not checked: ")


def test_files_are_read_bounded(tmp_path):
    image = image_tar(tmp_path / "t.tar", {"./etc/hostname": "x" * (1 << 20)})
    found = read_tar_identity(image, Deadline.after(30))
    assert len(found.files["etc/hostname"] or b"") == 64 << 10


def test_build_host_names_are_the_full_and_short_name():
    assert build_host_names() == (f"{BUILD_HOST}.example.org", BUILD_HOST)


needs_disk_tools = pytest.mark.skipif(
    not (shutil.which("mkfs.ext4") and shutil.which("debugfs")), reason="e2fsprogs missing")


@needs_disk_tools
def test_a_disk_images_root_filesystem_is_read_with_its_uuid(tmp_path):
    root = tmp_path / "tree"
    for name, text in {"usr/lib/os-release": BOOKWORM, "var/lib/dpkg/status": status_text(PACKAGES),
                       "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
                       "etc/hostname": "debian\n", "etc/ssh/ssh_host_ecdsa_key": "k",
                       "boot/grub/grub.cfg": GRUB.format(uuid=ROOT_UUID,
                                                         root=f"UUID={ROOT_UUID}")}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    os.symlink("../usr/lib/os-release", root / "etc" / "os-release")
    raw = tmp_path / "d.raw"
    with open(raw, "wb") as handle:
        handle.truncate(24 << 20)
    subprocess.run(["mkfs.ext4", "-F", "-q", "-L", "cloudimg-rootfs", "-U", ROOT_UUID, "-d",
                    str(root), str(raw)], check=True)
    (tmp_path / "d.packages").write_text(manifest_text(PACKAGES))
    checks = verify_images([raw], Expectation("debian", "bookworm"), tmp_path, 60)
    identity = next(c for c in checks if c.name == "identity")
    assert not identity.ok
    assert identity.detail == ("image leaks build-host identity: /etc/machine-id: set at build "
                               "time (01234567...); /etc/ssh/ssh_host_*_key: in the image "
                               "(ssh_host_ecdsa_key)")
    (root / "etc" / "machine-id").write_text("")
    (root / "etc" / "ssh" / "ssh_host_ecdsa_key").unlink()
    subprocess.run(["mkfs.ext4", "-F", "-q", "-L", "cloudimg-rootfs", "-U", ROOT_UUID, "-d",
                    str(root), str(raw)], check=True)
    checks = verify_images([raw], Expectation("debian", "bookworm"), tmp_path, 60)
    identity = next(c for c in checks if c.name == "identity")
    assert identity.ok, identity.detail
    assert f"grub.cfg root=UUID={ROOT_UUID} is the root filesystem's" in identity.detail
