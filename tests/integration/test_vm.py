"""vm images for real: partitioned disks assembled in files, booted under qemu (TCG).

Quick: a disk assembled from a tiny tree (sfdisk, mkfs at offsets, mtools) — seconds.
Slow (minutes each): debian-minbase bookworm builds booted with SeaBIOS and OVMF, and
images that must fail the boot check with the right evidence line (and the catalogue's
category for it). Timings are printed (run with -s to see them).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dib.blockdevice.disk import assemble
from dib.blockdevice.geometry import place
from dib.blockdevice.layout import MIB, parse_layout_text
from dib.blockdevice.plan import make_plan, save_plan
from dib.bootconsole import WatchSettings
from dib.bootqemu import BootOptions
from dib.boottest import run_boot_test
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import classify_lines
from tests.integration.dibhelpers import REPO, build_mounts, dib_env, run_dib

pytestmark = pytest.mark.integration

LAYOUTS = REPO / "elements" / "vm" / "layouts"
BOOT_TIMEOUT = 900  # software emulation on a shared machine: allow many minutes
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed"
)
needs_ovmf = pytest.mark.skipif(
    not Path("/usr/share/ovmf/OVMF.fd").exists(), reason="ovmf not installed"
)


def loop_and_dm_state() -> tuple:
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mapper = (
        sorted(p.name for p in Path("/dev/mapper").glob("*"))
        if Path("/dev/mapper").is_dir()
        else []
    )
    return loops, mapper


def boot_category(result) -> str:
    """The catalogue's category for a boot's evidence line, as the matrix would name it."""
    verdict = classify_lines([result.evidence], "local", "vm:boot", load_catalogue())
    return verdict.category.id


def qemu_running_on(image: Path) -> bool:
    """A qemu boots ``image``: the image itself, or the overlay the boot test makes of it
    when the disk must be larger (``<tmp>/.dib-boottest.*/<stem>.overlay.qcow2``)."""
    overlay = re.compile(r"file=\S*/\.dib-boottest\.[^/]+/"
                         + re.escape(image.stem) + r"\.overlay\.qcow2")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().decode("utf-8", "replace").split("\0")
        except OSError:  # it ended while we looked
            continue
        if words and "qemu-system" in words[0]:
            text = " ".join(words)
            if f"file={image}" in text or overlay.search(text):
                return True
    return False


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def blkid(disk: Path, offset: int) -> dict:
    out = subprocess.run(
        ["blkid", "-p", "-o", "export", "-O", str(offset), str(disk)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_disk_assembled_in_a_file_without_loop_devices(tmp_path):
    """efi layout from a tiny tree: table, ext4 and FAT at their offsets, files inside."""
    before = loop_and_dm_state()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("from the root filesystem\n")
    (root / "boot" / "efi" / "EFI" / "BOOT").mkdir(parents=True)
    (root / "boot" / "efi" / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"MZ" + bytes(4096))
    text = (LAYOUTS / "efi.yaml").read_text()
    plan = make_plan(parse_layout_text(text, "efi"), text, "efi")
    build = tmp_path / "build"
    save_plan(plan, build)
    disk = tmp_path / "disk.raw"

    made = assemble(root, disk, build, image_size=256 * MIB)

    assert made.size == 256 * MIB == disk.stat().st_size
    assert made.boot == ()  # no bootloader record: the disk has no boot code
    table = subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, text=True, check=True)
    parts = json.loads(table.stdout)["partitiontable"]["partitions"]
    assert [p["name"] for p in parts] == ["ESP", "BSP", "root"]
    assert [p["start"] for p in parts] == [e.start_sector for e in place(plan.layout, 256 * MIB)]
    esp, _, rootfs = made.extents
    assert blkid(disk, esp.start)["UUID"] == plan.identities["ESP"].uuid
    assert blkid(disk, esp.start)["TYPE"] == "vfat"
    found = blkid(disk, rootfs.start)
    assert (found["UUID"], found["LABEL"], found["TYPE"]) == (
        plan.root_identity.uuid,
        "cloudimg-rootfs",
        "ext4",
    )
    listing = subprocess.run(
        ["mdir", "-b", "-s", "-i", f"{disk}@@{esp.start}", "::/"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "BOOTX64.EFI" in listing
    part = tmp_path / "root.img"
    with open(disk, "rb") as src, open(part, "wb") as dst:
        src.seek(rootfs.start)
        dst.write(src.read(rootfs.size))
    cat = subprocess.run(
        ["debugfs", "-R", "cat /etc/hello", str(part)], capture_output=True, text=True
    )
    assert cat.stdout == "from the root filesystem\n"
    ls = subprocess.run(
        ["debugfs", "-R", "ls /boot/efi", str(part)], capture_output=True, text=True
    )
    assert "EFI" not in ls.stdout  # the ESP's files live on the ESP only
    assert (root / "boot" / "efi" / "EFI" / "BOOT" / "BOOTX64.EFI").exists()  # tree restored
    assert loop_and_dm_state() == before


def build_image(tmp_path_factory, image_cache, name, elements, extra_env=None):
    tmp = tmp_path_factory.mktemp(name)
    env = dib_env(tmp, {"DIB_RELEASE": "bookworm", **(extra_env or {})})
    output = tmp / "out" / name
    args = ["-o", str(output), "-t", "qcow2", "--image-cache", str(image_cache), *elements]
    started = time.monotonic()
    done = run_dib(args, env, timeout=1800)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:]
    image = output.with_name(f"{name}.qcow2")
    print(
        f"\n[vm] built {name} ({' '.join(elements)}) in {seconds:.0f} s: "
        f"{image.stat().st_size >> 20} MiB qcow2"
    )
    assert build_mounts() == []
    return {"image": image, "log": done.stdout, "seconds": seconds, "tmp": tmp}


def boot(image: Path, log: Path, **kwargs) -> object:
    watch = kwargs.pop("watch", WatchSettings(accept_login_prompt=False))
    result = run_boot_test(
        BootOptions(image=image, serial_log=log, timeout=BOOT_TIMEOUT, watch=watch, **kwargs)
    )
    print(
        f"\n[vm] boot {image.name} {'uefi' if kwargs.get('uefi') else 'bios'}: "
        f"{result.summary()} (total {result.seconds} s)"
    )
    assert not qemu_running_on(image)
    return result


@pytest.fixture(scope="module")
def mbr_vm(tmp_path_factory, image_cache):
    return build_image(
        tmp_path_factory, image_cache, "mbr-vm", ["debian-minbase", "vm", "boot-marker", "growroot"]
    )


@pytest.fixture(scope="module")
def efi_vm(tmp_path_factory, image_cache):
    return build_image(
        tmp_path_factory,
        image_cache,
        "efi-vm",
        ["debian-minbase", "block-device-efi", "boot-marker"],
    )


@pytest.mark.slow
@needs_qemu
def test_mbr_vm_boots_with_bios_and_grows_its_root(mbr_vm):
    image = mbr_vm["image"]
    digest = sha256(image)
    assert "mbr table, boot: BIOS" in mbr_vm["log"]
    result = boot(image, mbr_vm["tmp"] / "serial.log", disk_size="3G")
    assert result.passed, result.evidence
    assert result.seconds_to_marker < BOOT_TIMEOUT
    assert result.facts["root"] == "/dev/vda1"
    assert int(result.facts["root-bytes"]) > 2_500_000_000  # growroot filled the 3 GiB disk
    serial = Path(result.serial_log).read_text(errors="replace")
    assert "GRUB" in serial and "console=ttyS0" in serial
    assert sha256(image) == digest  # -snapshot: the image is never written


@pytest.mark.slow
@needs_qemu
@needs_ovmf
def test_efi_vm_boots_with_uefi(efi_vm):
    assert "gpt table, boot: BIOS, UEFI" in efi_vm["log"]
    result = boot(efi_vm["image"], efi_vm["tmp"] / "serial-uefi.log", uefi=True)
    assert result.passed, result.evidence
    assert result.facts["root"] == "/dev/vda3"
    assert "BdsDxe: starting Boot" in Path(result.serial_log).read_text(errors="replace")


@pytest.mark.slow
@needs_qemu
def test_efi_vm_also_boots_with_bios(efi_vm):
    result = boot(efi_vm["image"], efi_vm["tmp"] / "serial-bios.log")
    assert result.passed, result.evidence


@pytest.mark.slow
@needs_qemu
def test_image_without_a_bootloader_fails_as_no_bootloader(tmp_path_factory, image_cache):
    plain = build_image(tmp_path_factory, image_cache, "plain", ["debian-minbase"])
    result = boot(plain["image"], plain["tmp"] / "serial.log")
    assert not result.passed
    assert not result.infrastructure
    assert "not a bootable disk" in result.evidence
    assert boot_category(result) == "no-bootloader"
    assert result.seconds < 120


@pytest.mark.slow
@needs_qemu
def test_kernel_that_cannot_find_its_root_fails_as_root_fs_not_found(tmp_path_factory, image_cache):
    bad = build_image(
        tmp_path_factory,
        image_cache,
        "badroot",
        ["debian-minbase", "vm"],
        {"DIB_BOOTLOADER_DEFAULT_CMDLINE": "root=UUID=00000000-1111-2222-3333-444444444444"},
    )
    result = boot(bad["image"], bad["tmp"] / "serial.log")
    assert not result.passed and not result.infrastructure
    assert "does not exist" in result.evidence
    assert boot_category(result) == "root-fs-not-found"


@pytest.mark.slow
@needs_qemu
def test_ctrl_c_stops_qemu(mbr_vm, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dib.boottest",
            str(mbr_vm["image"]),
            "--serial-log",
            str(tmp_path / "serial.log"),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not qemu_running_on(mbr_vm["image"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert qemu_running_on(mbr_vm["image"])
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "qemu stopped" in proc.stderr.read()
    assert not qemu_running_on(mbr_vm["image"])


def test_bad_layout_fails_the_build_with_every_problem(tmp_path, image_cache):
    env = dib_env(
        tmp_path,
        {
            "DIB_RELEASE": "bookworm",
            "DIB_BLOCK_DEVICE_CONFIG": "- partitioning:\n    label: zfs\n    partitions: []\n",
        },
    )
    done = run_dib(
        [
            "-o",
            str(tmp_path / "x"),
            "-t",
            "qcow2",
            "--image-cache",
            str(image_cache),
            "debian-minbase",
            "block-device-mbr",
        ],
        env,
    )
    assert done.returncode != 0
    assert "block-device layout DIB_BLOCK_DEVICE_CONFIG: 2 problem(s)" in done.stdout
    assert "line 2: partitioning.label: 'zfs' is not one of mbr, gpt" in done.stdout
    assert build_mounts() == []
