"""matrix.verdict.verify on small real disk images made here without root: mkfs.ext4 -d on a
directory, sfdisk on a file, mkfs at offsets, qemu-img convert; every mismatch kind."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from matrix.config.targets import Target
from matrix.verdict.verify import (
    Expectation,
    PlannedLayout,
    PlannedPartition,
    expectation_for,
    summary,
    tools,
    verify_images,
)
from matrix.verdict.verify.expect import BARE_EXT4
from results.model import ImageCheck
from tests.unit.verifydata import BOOKWORM, PACKAGES, manifest_text, one, status_text

TOOLS = ("mkfs.ext4", "sfdisk", "qemu-img", "debugfs")
pytestmark = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"
)
MIB = 1 << 20
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
NAMES = ["qemu-img check", "partition table", "filesystem label", "os-release", "packages",
         "identity"]
# A target's expectation (expectation_for) also checks the architecture.
VM_NAMES = [*NAMES[:-1], "architecture", "identity"]
TRIXIE = BOOKWORM.replace("bookworm", "trixie").replace('"12"', '"13"')


def sh(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


def make_tree(tmp: Path, os_release: str = BOOKWORM, packages=PACKAGES) -> Path:
    root = tmp / "tree"
    if root.exists():
        shutil.rmtree(root)
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "os-release").write_text(os_release)
    os.symlink("../usr/lib/os-release", root / "etc" / "os-release")
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(status_text(packages))
    return root


def write_manifest(image: Path, packages=PACKAGES) -> None:
    stem = image.name.split(".")[0]
    image.with_name(f"{stem}.packages").write_text(manifest_text(packages))


def bare_raw(tmp: Path, name: str = "t", label: str = "cloudimg-rootfs", **tree) -> Path:
    raw = tmp / f"{name}.raw"
    with open(raw, "wb") as handle:
        handle.truncate(24 * MIB)
    sh("mkfs.ext4", "-F", "-q", "-L", label, "-d", str(make_tree(tmp, **tree)), str(raw))
    write_manifest(raw)
    return raw


def partitioned_raw(tmp: Path, name: str, script: str, root_start: int, root_size: int,
                    label: str = "cloudimg-rootfs", size: int = 40 * MIB, **tree) -> Path:
    """``script`` for sfdisk; the root ext4 is written at ``root_start`` (bytes)."""
    raw = tmp / f"{name}.raw"
    with open(raw, "wb") as handle:
        handle.truncate(size)
    sh("sfdisk", "--no-reread", "-q", str(raw), stdin=script)
    sh("mkfs.ext4", "-F", "-q", "-b", "4096", "-L", label, "-E", f"offset={root_start}",
       "-d", str(make_tree(tmp, **tree)), str(raw), str(root_size // 4096))
    write_manifest(raw)
    return raw


def mbr_raw(tmp: Path, name: str = "m", **kw) -> Path:
    script = "label: dos\nunit: sectors\nstart=2048, size=79872, type=83, bootable\n"
    return partitioned_raw(tmp, name, script, MIB, 79872 * 512, **kw)


def to_qcow2(raw: Path, compress: bool = True) -> Path:
    qcow2 = raw.with_suffix(".qcow2")
    sh("qemu-img", "convert", *(["-c"] if compress else []), "-f", "raw", "-O", "qcow2",
       str(raw), str(qcow2))
    return qcow2


def vm_expectation(*elements: str, **env: str) -> Expectation:
    target = Target("t", ("debian-minimal", "vm", *elements), (("DIB_RELEASE", "bookworm"),),
                    ("raw", "qcow2"))
    return expectation_for(target, env)


BARE = Expectation("debian", "bookworm", BARE_EXT4)


def names_and_results(checks: list[ImageCheck]) -> list[tuple[str, bool]]:
    return [(c.name, c.ok) for c in checks]


def test_a_bare_filesystem_raw_and_qcow2_pass(tmp_path):
    raw = bare_raw(tmp_path)
    qcow2 = to_qcow2(raw)
    checks = verify_images([raw, qcow2], BARE, tmp_path, timeout=60)
    assert names_and_results(checks) == [(n, True) for n in NAMES] * 2, checks
    assert [c.image for c in checks] == ["t.raw"] * len(NAMES) + ["t.qcow2"] * len(NAMES)
    by_image = {(c.image, c.name): c.detail for c in checks}
    assert by_image[("t.raw", "partition table")] == \
        "no partition table: a bare filesystem (bare ext4 filesystem)"
    assert by_image[("t.qcow2", "filesystem label")] == "root='cloudimg-rootfs'"
    assert by_image[("t.qcow2", "os-release")] == "debian bookworm"
    assert by_image[("t.qcow2", "packages")] == "3 packages installed, as t.packages lists"
    assert by_image[("t.qcow2", "qemu-img check")] == "qcow2, 24 MiB virtual, no errors"
    assert summary(checks) is None
    assert not list(tmp_path.glob(".verify-*"))


def test_a_wrong_filesystem_label(tmp_path):
    raw = bare_raw(tmp_path, label="other")
    check = one(verify_images([raw], BARE, tmp_path, 60), "filesystem label")
    assert (check.ok, check.detail) == (
        False, "root filesystem is labelled 'other', planned 'cloudimg-rootfs'")


def test_no_table_where_one_was_planned(tmp_path):
    qcow2 = to_qcow2(bare_raw(tmp_path))
    checks = verify_images([qcow2], vm_expectation(), tmp_path, 60)
    assert one(checks, "partition table").detail == \
        "partition table: image has no partition table, planned mbr"
    assert summary(checks) == ("verify: partition table: partition table: image has no "
                               "partition table, planned mbr")


def test_an_mbr_disk_passes_against_the_vm_layout(tmp_path):
    raw = mbr_raw(tmp_path)
    qcow2 = to_qcow2(raw)
    checks = verify_images([raw, qcow2], vm_expectation(), tmp_path, 60)
    assert names_and_results(checks) == [(n, True) for n in VM_NAMES] * 2, checks
    assert one(checks[:6], "partition table").detail == \
        "mbr, 1 partition (root) as in the target's mbr (mbr.yaml) layout"


def test_release_and_packages_inside_a_disk_image(tmp_path):
    qcow2 = to_qcow2(mbr_raw(tmp_path, os_release=TRIXIE, packages={"apt": "2.6.1"}))
    checks = verify_images([qcow2], vm_expectation(), tmp_path, 60)
    assert one(checks, "os-release").detail == "image is trixie, target wants bookworm"
    assert one(checks, "packages").detail == \
        "packages: 2 in the manifest are not in the image (base-files, bash)"
    assert summary(checks) == "verify: os-release: image is trixie, target wants bookworm"


def test_partition_count_and_table_type_mismatches(tmp_path):
    two = ("label: dos\nunit: sectors\nstart=2048, size=8192, type=83\n"
           "start=10240, size=71680, type=83\n")
    raw = partitioned_raw(tmp_path, "two", two, 10240 * 512, 71680 * 512)
    check = one(verify_images([raw], vm_expectation(), tmp_path, 60), "partition table")
    assert check.detail == "partition table: image has 2 partitions, planned 1"
    gpt = (f"label: gpt\nunit: sectors\nstart=2048, size=16384, type={BIOS_BOOT}, name=\"BSP\"\n"
           f"start=18432, size=59392, type={LINUX}, name=\"root\"\n")
    raw = partitioned_raw(tmp_path, "g", gpt, 18432 * 512, 59392 * 512)
    check = one(verify_images([to_qcow2(raw)], vm_expectation(), tmp_path, 60),
                "partition table")
    assert check.detail == "partition table: image has a gpt table, planned mbr"
    passes = verify_images([to_qcow2(raw)], vm_expectation(DIB_BLOCK_DEVICE="gpt"), tmp_path, 60)
    assert names_and_results(passes) == [(n, True) for n in VM_NAMES], passes


def test_gpt_names_and_types_are_compared(tmp_path):
    gpt = (f"label: gpt\nunit: sectors\nstart=2048, size=16384, type={LINUX}, name=\"boot\"\n"
           f"start=18432, size=59392, type={LINUX}, name=\"root\"\n")
    raw = partitioned_raw(tmp_path, "g", gpt, 18432 * 512, 59392 * 512)
    check = one(verify_images([raw], vm_expectation(DIB_BLOCK_DEVICE="gpt"), tmp_path, 60),
                "partition table")
    assert check.detail == ("partition table: partition 1 is named 'boot', planned 'BSP'; "
                            f"partition 1 (BSP) has type {LINUX}, planned {BIOS_BOOT}")


@pytest.mark.skipif(shutil.which("mkfs.vfat") is None, reason="needs mkfs.vfat")
def test_an_efi_disk_with_its_fat_label(tmp_path):
    script = (f"label: gpt\nunit: sectors\nstart=2048, size=133120, type={ESP}, name=\"ESP\"\n"
              f"start=135168, size=16384, type={BIOS_BOOT}, name=\"BSP\"\n"
              f"start=151552, size=53248, type={LINUX}, name=\"root\"\n")
    raw = partitioned_raw(tmp_path, "e", script, 151552 * 512, 53248 * 512, size=104 * MIB)
    sh("mkfs.vfat", "-F", "32", "-s", "1", "-n", "ESP", "--offset", "2048", str(raw),
       str(133120 // 2))
    expect = vm_expectation("block-device-efi")
    checks = verify_images([to_qcow2(raw)], expect, tmp_path, 60)
    assert names_and_results(checks) == [(n, True) for n in VM_NAMES], checks
    assert one(checks, "filesystem label").detail == "ESP='ESP', root='cloudimg-rootfs'"
    sh("mkfs.vfat", "-F", "32", "-s", "1", "-n", "EFI", "--offset", "2048", str(raw),
       str(133120 // 2))
    check = one(verify_images([raw], expect, tmp_path, 60), "filesystem label")
    assert check.detail == "ESP filesystem is labelled 'EFI', planned 'ESP'"


def record(partitions: list[dict], table: str = "mbr") -> dict:
    return {"format": 1, "table": table, "size": 40 * MIB, "sector_size": 512,
            "origin": "mbr (mbr.yaml)", "boot": [], "partitions": partitions}


ROOT_RECORD = {"number": 1, "name": "root", "start": MIB, "size": 79872 * 512, "type": "83",
               "flags": ["boot", "primary"], "filesystem": "ext4", "label": "cloudimg-rootfs",
               "uuid": "x", "mountpoint": "/"}


def test_the_layout_dib_recorded_is_compared_to_the_offset(tmp_path):
    raw = mbr_raw(tmp_path)
    layout = tmp_path / "m.layout.json"
    layout.write_text(json.dumps(record([ROOT_RECORD])))
    checks = verify_images([raw], vm_expectation(), tmp_path, 60)
    assert one(checks, "partition table").detail == \
        "mbr, 1 partition (root) as in m.layout.json"
    layout.write_text(json.dumps(record([{**ROOT_RECORD, "start": 2 * MIB,
                                          "size": 30 * MIB}])))
    check = one(verify_images([raw], vm_expectation(), tmp_path, 60), "partition table")
    assert check.detail == ("partition table: partition 1 (root) starts at sector 2048, "
                            "planned 4096; partition 1 (root) is 39 MiB, planned 30 MiB")


def test_a_record_that_differs_from_the_target(tmp_path):
    raw = mbr_raw(tmp_path)
    (tmp_path / "m.layout.json").write_text(json.dumps(record([ROOT_RECORD])))
    check = one(verify_images([raw], vm_expectation(DIB_BLOCK_DEVICE="gpt"), tmp_path, 60),
                "partition table")
    assert check.detail == "partition table: dib planned mbr, target wants gpt"
    (tmp_path / "m.layout.json").write_text("{not json")
    check = one(verify_images([raw], vm_expectation(), tmp_path, 60), "partition table")
    assert check.ok  # an unreadable record: the target's layout is used
    assert check.detail.endswith("as in the target's mbr (mbr.yaml) layout")


def test_a_corrupt_qcow2_fails_qemu_img_check(tmp_path):
    qcow2 = to_qcow2(bare_raw(tmp_path), compress=False)
    data = bytearray(qcow2.read_bytes())
    table = struct.unpack(">Q", data[48:56])[0]  # refcount table offset
    block = struct.unpack(">Q", data[table:table + 8])[0]
    data[block:block + 16] = bytes(16)  # clusters 0-7 now have refcount 0
    qcow2.write_bytes(bytes(data))
    check = one(verify_images([qcow2], BARE, tmp_path, 60), "qemu-img check")
    assert not check.ok
    assert re.fullmatch(r"qemu-img check: \d+ corruptions", check.detail), check.detail


def test_a_raw_file_that_is_no_disk(tmp_path):
    raw = tmp_path / "odd.raw"
    raw.write_bytes(b"x" * 1000)
    checks = verify_images([raw], BARE, tmp_path, 60)
    assert one(checks, "qemu-img check").detail == \
        "qemu-img info: the raw image is 1000 bytes, not a whole number of 512-byte sectors"
    assert one(checks, "filesystem label").detail == \
        "root filesystem: no ext4 filesystem found"
    assert one(checks, "os-release").detail == \
        "os-release: no ext filesystem found on the image to read it from"


def test_without_a_plan_the_table_is_described_not_compared(tmp_path):
    raw = mbr_raw(tmp_path)
    checks = verify_images([raw], Expectation("debian", "bookworm"), tmp_path, 60)
    assert all(c.ok for c in checks), checks
    assert one(checks, "partition table").detail == \
        "not compared: the target plans no disk layout; image has an mbr table"
    assert one(checks, "os-release").ok  # the root is found by its label


def test_a_missing_tool_fails_its_checks(tmp_path, monkeypatch):
    raw = bare_raw(tmp_path)
    real = shutil.which
    monkeypatch.setattr(tools.shutil, "which", lambda n: None if n == "debugfs" else real(n))
    checks = verify_images([raw], BARE, tmp_path, 60)
    assert one(checks, "os-release").detail == \
        "os-release: debugfs not available on this machine (install e2fsprogs)"
    assert one(checks, "qemu-img check").ok


def test_layouts_in_an_expectation_made_by_hand(tmp_path):
    raw = mbr_raw(tmp_path, label="rootfs")
    layout = PlannedLayout("mbr", (PlannedPartition("root", "ext4", "rootfs", "/", "83"),),
                           "hand")
    checks = verify_images([raw], Expectation("debian", "bookworm", layout), tmp_path, 60)
    assert all(c.ok for c in checks), checks


def test_a_small_qcow2_is_verified_quickly(tmp_path):
    qcow2 = to_qcow2(mbr_raw(tmp_path))
    started = time.monotonic()
    verify_images([qcow2], vm_expectation(), tmp_path, 60)
    assert time.monotonic() - started < 5
