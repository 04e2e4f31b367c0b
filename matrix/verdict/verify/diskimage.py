"""A disk image's contents, read without a loop device: its virtual size (``qemu-img
info``), ``qemu-img check``'s findings, byte spans of it (``qemu-img dd`` for formats
other than raw), its partition table (``sfdisk --json``), each filesystem's type and
label from its superblock, and files of its root ext filesystem through ``debugfs``."""

from __future__ import annotations

import io
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dib.blockdevice.layout import ROOT_LABEL

from .expect import PlannedLayout
from .limits import KIB, MIB, OS_RELEASE_LIMIT, STATUS_LIMIT, SYMLINK_HOPS, Deadline, VerifyError
from .parse import Packages, parse_dpkg_status, parse_os_release
from .tools import run_tool, tool_error

SECTOR = 512
EXT_MAGIC = 0xEF53
QEMU_IMG_NO_CHECK = 63  # qemu-img check's exit status for a format without checks


@dataclass(frozen=True)
class Disk:
    path: Path
    format: str  # qemu-img's format name
    size: int  # virtual size in bytes


@dataclass(frozen=True)
class ImagePartition:
    number: int
    start: int  # bytes
    size: int
    type: str
    name: str = ""


@dataclass(frozen=True)
class Table:
    label: str | None  # "mbr", "gpt" or None
    partitions: tuple[ImagePartition, ...]


@dataclass(frozen=True)
class Filesystem:
    type: str | None  # "ext4" (any ext), "vfat", or None when not recognised
    label: str


def virtual_size(image: Path, disk_format: str, deadline: Deadline) -> int:
    result = run_tool(["qemu-img", "info", "--output=json", "-f", disk_format, str(image)],
                      deadline)
    if result.returncode != 0:
        raise tool_error(result, "qemu-img info")
    info = json.loads(result.output)
    return int(info["virtual-size"])


def qemu_img_check(disk: Disk, deadline: Deadline) -> list[str] | None:
    """What ``qemu-img check`` finds wrong ([] for nothing); None: the format has no check."""
    argv = ["qemu-img", "check", "--output=json", "-f", disk.format, str(disk.path)]
    result = run_tool(argv, deadline)
    if result.returncode == QEMU_IMG_NO_CHECK:
        return None
    try:
        report = json.loads(result.output) if result.output.strip() else {}
    except json.JSONDecodeError:
        report = {}
    problems = [f"{report[k]} {k}" for k in ("corruptions", "leaks", "check-errors")
                if report.get(k)]
    if result.returncode != 0 and not problems:
        return [(result.errors.strip().splitlines() or ["?"])[-1]]
    return problems


def read_span(disk: Disk, offset: int, length: int, work: Path, deadline: Deadline) -> bytes:
    """``length`` bytes at ``offset`` of the disk's contents (raw reads the file itself)."""
    length = max(0, min(length, disk.size - offset))
    if disk.format == "raw":
        with open(disk.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    if length == 0:
        return b""
    out = work / f"span-{offset}-{length}.raw"
    source = _json_source(disk, offset, length)
    argv = ["qemu-img", "dd", "-O", "raw", f"bs={length}", "count=1", f"if={source}",
            f"of={out}"]
    try:
        result = run_tool(argv, deadline)
        if result.returncode != 0:
            raise tool_error(result, "qemu-img dd")
        with open(out, "rb") as handle:
            return handle.read(length)
    finally:
        out.unlink(missing_ok=True)


def _json_source(disk: Disk, offset: int, size: int) -> str:
    """A qemu ``json:`` filename for ``size`` bytes at ``offset`` of a (non-raw) disk."""
    spec = {"driver": "raw", "offset": offset, "size": size,
            "file": {"driver": disk.format,
                     "file": {"driver": "file", "filename": str(disk.path.resolve())}}}
    return "json:" + json.dumps(spec, separators=(",", ":"))


def read_table(disk: Disk, work: Path, deadline: Deadline) -> Table:
    """The partition table, from ``sfdisk --json`` on the image (raw) or on a sparse copy
    of its first and last MiB (other formats: where MBR, GPT and GPT's backup live)."""
    target = disk.path
    if disk.format != "raw":
        target = work / "table.raw"
        head = read_span(disk, 0, MIB, work, deadline)
        tail_at = max(0, disk.size - MIB)
        tail = read_span(disk, tail_at, MIB, work, deadline) if tail_at >= len(head) else b""
        with open(target, "wb") as handle:
            handle.truncate(disk.size)
            handle.write(head)
            handle.seek(tail_at)
            handle.write(tail)
    result = run_tool(["sfdisk", "--json", str(target)], deadline)
    if result.returncode != 0:
        if "does not contain a recognized partition table" in result.errors:
            return Table(None, ())
        raise tool_error(result, "sfdisk --json")
    return parse_sfdisk(json.loads(result.output))


def parse_sfdisk(data: Mapping[str, Any]) -> Table:
    table = data.get("partitiontable", {})
    sector = int(table.get("sectorsize", SECTOR))
    label = {"dos": "mbr", "gpt": "gpt"}.get(table.get("label", ""), table.get("label"))
    parts = tuple(
        ImagePartition(number, int(p["start"]) * sector, int(p["size"]) * sector,
                       str(p.get("type", "")).upper(), str(p.get("name", "")))
        for number, p in enumerate(table.get("partitions", []), start=1)
    )
    return Table(label, parts)


def partition_spans(table: Table, disk: Disk) -> list[tuple[int, int]]:
    """(start, size) in bytes of each partition; the whole disk when it has no table."""
    if table.label is None:
        return [(0, disk.size)]
    return [(p.start, p.size) for p in table.partitions]


def filesystem_of(disk: Disk, start: int, work: Path, deadline: Deadline) -> Filesystem:
    """The filesystem that begins ``start`` bytes into the disk."""
    return filesystem_at(read_span(disk, start, 4 * KIB, work, deadline))


def filesystem_at(block: bytes) -> Filesystem:
    """The filesystem whose first 4 KiB are ``block``: ext (magic at 1024+56, label at
    1024+120, 16 bytes) or FAT (boot sector label at 0x47 for FAT32, 0x2B otherwise)."""
    if len(block) >= 1024 + 136 and int.from_bytes(block[1080:1082], "little") == EXT_MAGIC:
        return Filesystem("ext4", _label(block[1144:1160]))
    if len(block) >= 512 and block[510:512] == b"\x55\xaa":
        if block[0x52:0x5A] == b"FAT32   ":
            return Filesystem("vfat", _label(block[0x47:0x52]))
        if block[0x36:0x39] == b"FAT":
            return Filesystem("vfat", _label(block[0x2B:0x36]))
    return Filesystem(None, "")


def _label(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


# ---- inside the root filesystem ------------------------------------------------------


def root_filesystem(
    disk: Disk, table: Table, planned: PlannedLayout | None, work: Path, deadline: Deadline
) -> str:
    """A debugfs device spec of the root ext filesystem (``file?offset=N`` for raw; a
    sparse raw copy of just that filesystem for other formats)."""
    start, size = _root_span(disk, table, planned, work, deadline)
    if disk.format == "raw":
        return f"{disk.path}?offset={start}" if start else str(disk.path)
    copy = work / "root.raw"
    if not copy.exists():
        argv = ["qemu-img", "convert", "-O", "raw", "-S", "4k", _json_source(disk, start, size),
                str(copy)]
        result = run_tool(argv, deadline)
        if result.returncode != 0:
            raise tool_error(result, "qemu-img convert of the root filesystem")
    return str(copy)


def _root_span(
    disk: Disk, table: Table, planned: PlannedLayout | None, work: Path, deadline: Deadline
) -> tuple[int, int]:
    """Where the root ext filesystem is: the planned root partition, else the ext
    filesystem labelled cloudimg-rootfs, else the first ext filesystem."""
    spans = partition_spans(table, disk)
    found = {s: filesystem_of(disk, s[0], work, deadline) for s in spans}
    if planned is not None and len(spans) == len(planned.partitions):
        for span, plan in zip(spans, planned.partitions):
            if plan.mountpoint == "/" and found[span].type == "ext4":
                return span
    ext = [s for s in spans if found[s].type == "ext4"]
    chosen = [s for s in ext if found[s].label == ROOT_LABEL] or ext
    if not chosen:
        raise VerifyError("no ext filesystem found on the image to read it from")
    return chosen[0]


def debugfs_read(device: str, path: str, deadline: Deadline, limit: int) -> bytes | None:
    """A file's bytes through ``debugfs -c`` (symlinks followed); None when it is absent."""
    for _ in range(SYMLINK_HOPS + 1):
        stat = run_tool(["debugfs", "-c", "-R", f"stat {path}", device], deadline)
        if stat.returncode != 0 or b"Inode:" not in stat.output:
            if "not found" in stat.errors:
                return None
            raise tool_error(stat, f"debugfs stat {path}")
        link = re.search(rb'Fast link dest: "(.*)"', stat.output)
        if link is None:
            result = run_tool(["debugfs", "-c", "-R", f"cat {path}", device], deadline, limit)
            if result.returncode != 0:
                raise tool_error(result, f"debugfs cat {path}")
            return result.output
        target = link.group(1).decode("utf-8", "replace")
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    raise VerifyError(f"too many symbolic links from {path}")


def debugfs_os_release(device: str, deadline: Deadline) -> tuple[dict[str, str] | None, str]:
    """The root filesystem's os-release, or None and why not."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        data = debugfs_read(device, path, deadline, OS_RELEASE_LIMIT)
        if data is not None:
            return parse_os_release(data.decode("utf-8", "replace")), ""
    return None, "no /etc/os-release or /usr/lib/os-release in the root filesystem"


def debugfs_packages(device: str, deadline: Deadline) -> Packages | None:
    data = debugfs_read(device, "/var/lib/dpkg/status", deadline, STATUS_LIMIT)
    return None if data is None else parse_dpkg_status(io.BytesIO(data), STATUS_LIMIT)
