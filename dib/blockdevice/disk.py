"""A partitioned, bootable raw disk assembled in a regular file: no loop, no device-mapper.

Called by ``outputs.make_outputs`` when the build planned a block-device layout
(the vm element). Steps, all on the image file:

1. each mounted filesystem's files are set aside into their own directory (the
   root filesystem must not contain the ESP's files, for instance);
2. the disk size is the smallest on which every partition holds its files
   (or ``--image-size`` when that is larger), the geometry follows from it;
3. ``sfdisk`` writes the partition table into the sparse file;
4. ``mkfs.ext4 -d DIR -E offset=N`` and ``mkfs.vfat --offset`` + ``mcopy -i FILE@@N``
   write every filesystem in place, with the UUIDs chosen at plan time;
5. GRUB's boot.img and core.img are patched into sector 0 and the MBR gap or the
   BIOS boot partition (UEFI's binary is already a file on the ESP);
6. what was made is recorded as JSON (table, and per partition: number, name, start,
   size, type, flags, filesystem, label, UUID, mount point): always in the build's
   plan directory, and as ``<output>.layout.json`` beside a raw image that is an
   output itself; :func:`publish_layout` copies it beside the other image types, so
   the matrix can check every image against what dib planned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from dib.blockdevice import biosboot, geometry, grub
from dib.blockdevice.geometry import Extent
from dib.blockdevice.layout import EXT_TYPES, GPT_TYPES, MIB, SECTOR, Layout, Partition
from dib.blockdevice.plan import Plan, has_plan, load_plan, plan_dir
from dib.errors import CommandFailed, DibError
from dib.fssize import estimate_fs_size, tree_usage
from dib.run import run

LOG = logging.getLogger("dib")
GROW_ATTEMPTS = 5
VFAT_CLUSTER = 4096
FAT32_MIN = 40 * MIB
# Host tools per filesystem type, with the package that has them (Debian / Fedora names).
TOOLS = {
    "table": (("sfdisk", "fdisk / util-linux"),),
    "ext": (("mkfs.ext4", "e2fsprogs"),),
    "vfat": (("mkfs.vfat", "dosfstools"), ("mcopy", "mtools")),
}
MKFS_FEATURE_ERRORS = ("Invalid filesystem option", "feature")
LAYOUT_RECORD = "layout.json"  # in the plan directory
LAYOUT_SUFFIX = ".layout.json"  # beside the images: <output>.layout.json
LAYOUT_FORMAT = 1


@dataclass(frozen=True)
class DiskImage:
    path: Path
    size: int
    extents: Tuple[Extent, ...]
    boot: Tuple[str, ...]  # GRUB platforms installed, e.g. ("i386-pc", "x86_64-efi")


class FilesystemTooSmall(DibError):
    def __init__(self, partition: str):
        self.partition = partition
        super().__init__(f"the files do not fit the filesystem of partition '{partition}'")


def planned(build_dir: Path) -> bool:
    """True when a vm build planned a block-device layout (its extra-data.d step ran)."""
    return has_plan(build_dir)


def check_tools(layout: Layout) -> None:
    kinds = ["table"]
    types = {p.filesystem.type for p in layout.partitions if p.filesystem}
    kinds += ["ext"] if types & set(EXT_TYPES) else []
    kinds += ["vfat"] if "vfat" in types else []
    # Worded like every other missing tool ("X not available") for the matrix's catalogue.
    missing = [
        f"{tool} not available: install {package} (the vm disk image needs it)"
        for kind in kinds
        for tool, package in TOOLS[kind]
        if shutil.which(tool) is None
    ]
    if missing:
        raise DibError("; ".join(missing))


@contextlib.contextmanager
def set_aside(root: Path, layout: Layout, holding: Path) -> Iterator[Dict[str, Path]]:
    """Move every non-root filesystem's files out of the tree for the duration.

    Yields partition name -> the directory its filesystem is made from; children
    are moved before parents, so /boot keeps an empty efi/ mount point.
    """
    sources: Dict[str, Path] = {}
    moved: List[Tuple[Path, Path]] = []
    holding.mkdir(parents=True, exist_ok=True)
    try:
        for part in reversed(layout.mounted()):
            mount = part.mount_point or "/"
            if mount == "/":
                sources[part.name] = root
                continue
            inside = root / mount.lstrip("/")
            aside = holding / part.name
            inside.mkdir(parents=True, exist_ok=True)
            os.rename(inside, aside)
            moved.append((inside, aside))
            inside.mkdir()
            shutil.copystat(aside, inside)
            sources[part.name] = aside
        yield sources
    finally:
        for inside, aside in reversed(moved):
            with contextlib.suppress(OSError):
                inside.rmdir()
            os.rename(aside, inside)


def vfat_need(directory: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(directory):
        total += VFAT_CLUSTER * (len(dirnames) + 1)
        for name in filenames:
            size = os.lstat(os.path.join(dirpath, name)).st_size
            total += math.ceil(size / VFAT_CLUSTER) * VFAT_CLUSTER
    return math.ceil((total * 1.1 + 2 * MIB) / MIB) * MIB


def filesystem_needs(layout: Layout, sources: Mapping[str, Path]) -> Dict[str, int]:
    needs = {}
    for part in layout.partitions:
        fs = part.filesystem
        if fs is None or part.name not in sources:
            continue
        source = sources[part.name]
        needs[part.name] = (
            vfat_need(source) if fs.type == "vfat" else estimate_fs_size(tree_usage(source))
        )
    return needs


def sfdisk_script(layout: Layout, extents: Sequence[Extent]) -> str:
    """sfdisk's input for the table: explicit starts and sizes in sectors."""
    lines = [f"label: {'gpt' if layout.label == 'gpt' else 'dos'}", "unit: sectors"]
    for extent in extents:
        part = layout.partition(extent.name)
        fields = [f"start={extent.start_sector}", f"size={extent.sectors}"]
        fields.append(f"type={part.type_code}")
        if layout.label == "gpt":
            fields.append(f'name="{part.name}"')
            if "boot" in part.flags:
                fields.append('attrs="LegacyBIOSBootable"')
        elif "boot" in part.flags:
            fields.append("bootable")
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"


def write_table(disk: Path, layout: Layout, extents: Sequence[Extent], work: Path) -> None:
    script = work / "sfdisk.script"
    script.write_text(sfdisk_script(layout, extents))
    run(
        ["sh", "-c", 'exec sfdisk --no-reread -q "$1" < "$2"', "sfdisk", str(disk), str(script)],
        tag="sfdisk",
        timeout=120,
    )


def _mkfs_ext(
    disk: Path, extent: Extent, part: Partition, plan: Plan, source: Path, root: Path
) -> None:
    fs = part.filesystem
    assert fs is not None
    ident = plan.identity(part)
    inodes = tree_usage(source).inodes
    cmd = [
        f"mkfs.{fs.type}",
        "-F",
        "-q",
        "-b",
        "4096",
        "-L",
        ident.label,
        "-U",
        ident.uuid,
        "-N",
        str(int(inodes * 1.2) + 1024),
        "-E",
        f"offset={extent.start},nodiscard",
        "-d",
        str(source),
        str(disk),
        str(extent.size // 4096),
    ]
    # The target's mke2fs.conf keeps features its own e2fsck knows (orphan_file is newer
    # than many targets); a host mke2fs that cannot read that conf falls back to its own.
    target_conf = root / "etc" / "mke2fs.conf"
    envs: List[Optional[Dict[str, str]]] = [None]
    if target_conf.is_file():
        envs.insert(0, {**os.environ, "MKE2FS_CONFIG": str(target_conf)})
    for attempt, env in enumerate(envs):
        try:
            run(cmd, tag=f"mkfs.{fs.type} {part.name}", env=env, timeout=1800)
            return
        except CommandFailed as err:
            text = "\n".join(err.tail)
            if "space" in text or "allocate" in text or "Could not allocate" in text:
                raise FilesystemTooSmall(part.name) from None
            if attempt + 1 < len(envs) and any(word in text for word in MKFS_FEATURE_ERRORS):
                LOG.info("the target's mke2fs.conf does not suit this mke2fs; using the host's")
                continue
            raise


def _mkfs_vfat(disk: Path, extent: Extent, part: Partition, plan: Plan, source: Path) -> None:
    ident = plan.identity(part)
    # FAT32 needs 65525 clusters at least, and mtools takes a FAT32 with fewer for FAT16
    # (and then finds no root directory): one-sector clusters up to 512 MiB make enough.
    if extent.size >= FAT32_MIN:
        fat = ["-F", "32", "-s", "1"] if extent.size < 512 * MIB else ["-F", "32"]
    else:
        fat = []
    run(
        [
            "mkfs.vfat",
            *fat,
            "-n",
            ident.label,
            "-i",
            ident.mkfs_uuid,
            "--offset",
            str(extent.start_sector),
            str(disk),
            str(extent.size // 1024),
        ],
        tag=f"mkfs.vfat {part.name}",
        timeout=300,
    )
    entries = sorted(source.iterdir())
    if not entries:
        return
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    image = f"{disk}@@{extent.start}"
    try:
        run(
            ["mcopy", "-s", "-p", "-Q", "-m", "-i", image, *map(str, entries), "::/"],
            tag=f"mcopy {part.name}",
            env=env,
            timeout=600,
        )
    except CommandFailed as err:
        if any("full" in line.lower() for line in err.tail):
            raise FilesystemTooSmall(part.name) from None
        raise


def write_filesystems(
    disk: Path, plan: Plan, extents: Sequence[Extent], sources: Mapping[str, Path], root: Path
) -> None:
    for extent in extents:
        part = plan.layout.partition(extent.name)
        if part.filesystem is None or part.name not in sources:
            continue
        if part.filesystem.type == "vfat":
            _mkfs_vfat(disk, extent, part, plan, sources[part.name])
        else:
            _mkfs_ext(disk, extent, part, plan, sources[part.name], root)


def install_bios_boot(
    disk: Path, layout: Layout, extents: Sequence[Extent], record: Optional[Mapping[str, Any]]
) -> None:
    """boot.img and core.img from the bootloader step, if it made them (no record: no
    bootloader element, the disk gets no boot code)."""
    bios = record.get("bios") if record else None
    if not bios:
        return
    bsp = layout.bios_boot
    if bsp is not None:
        where = next(e for e in extents if e.name == bsp.name)
        core_lba, room = where.start_sector, where.sectors
    else:
        core_lba, room = 1, extents[0].start_sector - 1
    boot_img = Path(bios["boot_img"]).read_bytes()
    core_img = Path(bios["core_img"]).read_bytes()
    biosboot.embed(disk, boot_img, core_img, core_lba, room)
    LOG.info("GRUB BIOS boot code: core image (%d KiB) at sector %d", len(core_img) >> 10, core_lba)


def _create(disk: Path, size: int) -> None:
    with open(disk, "wb") as image:
        image.truncate(size)


def assemble(
    root: Path, dest: Path, build_dir: Path, image_size: Optional[int] = None
) -> DiskImage:
    """Write the planned disk for ``root`` to ``dest`` (raw); return what was made."""
    plan = load_plan(build_dir)
    layout = plan.layout
    check_tools(layout)
    record = grub.load_record(build_dir)
    work = plan_dir(build_dir)
    with set_aside(root, layout, work / "trees") as sources:
        needs = filesystem_needs(layout, sources)
        for _attempt in range(GROW_ATTEMPTS):
            size = geometry.disk_size(layout, needs, image_size or 0)
            if image_size and size > geometry.align_up(image_size, layout.align):
                LOG.warning(
                    "--image-size %s is too small for the files; using %s",
                    geometry.mib(image_size),
                    geometry.mib(size),
                )
            extents = geometry.place(layout, size)
            _create(dest, size)
            write_table(dest, layout, extents, work)
            try:
                write_filesystems(dest, plan, extents, sources, root)
                break
            except FilesystemTooSmall as err:
                grown = next(e.size for e in extents if e.name == err.partition) * 5 // 4
                needs[err.partition] = geometry.align_up(grown, MIB)
                LOG.info("%s; retrying with %s", err, geometry.mib(needs[err.partition]))
        else:
            raise DibError(f"could not fit the files into the disk after {GROW_ATTEMPTS} tries")
    install_bios_boot(dest, layout, extents, record)
    boot = tuple(record.get("platforms", ())) if record else ()
    _log_summary(layout, extents, size, boot)
    image = DiskImage(dest, size, extents, boot)
    record_layout(plan, image, build_dir)
    return image


def layout_record(plan: Plan, image: DiskImage) -> Dict[str, Any]:
    """What was written to the disk, as JSON data (byte offsets; sectors are 512 bytes)."""
    partitions = []
    for extent in image.extents:
        part = plan.layout.partition(extent.name)
        fs = part.filesystem
        ident = plan.identities.get(part.name)
        partitions.append(
            {
                "number": extent.number,
                "name": part.name,
                "start": extent.start,
                "size": extent.size,
                "type": part.type_code,
                "flags": list(part.flags),
                "filesystem": fs.type if fs else None,
                "label": ident.label if ident else None,
                "uuid": ident.uuid if ident else None,
                "mountpoint": fs.mount_point if fs else None,
            }
        )
    return {
        "format": LAYOUT_FORMAT,
        "table": plan.layout.label,
        "size": image.size,
        "sector_size": SECTOR,
        "origin": plan.origin,
        "boot": list(image.boot),
        "partitions": partitions,
    }


def layout_path(output: Path) -> Path:
    """``<output>.layout.json`` for an output path without extension (or a raw image)."""
    name = output.name[: -len(".raw")] if output.name.endswith(".raw") else output.name
    return output.with_name(name + LAYOUT_SUFFIX)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _inside(path: Path, directory: Path) -> bool:
    return directory.resolve() in path.resolve().parents


def record_layout(plan: Plan, image: DiskImage, build_dir: Path) -> List[Path]:
    """Save the layout record in the plan directory, and beside ``image`` when it is an
    output (not the build's own temporary raw file); returns the files written."""
    data = layout_record(plan, image)
    written = [plan_dir(build_dir) / LAYOUT_RECORD]
    if not _inside(image.path, build_dir):
        written.append(layout_path(image.path))
    for path in written:
        _write_json(path, data)
    return written


def publish_layout(build_dir: Path, output: Path) -> Optional[Path]:
    """Copy this build's layout record to ``<output>.layout.json``; None when the build
    assembled no partitioned disk. For ``outputs.make_outputs`` once the types are made."""
    source = plan_dir(build_dir) / LAYOUT_RECORD
    if not source.is_file():
        return None
    dest = layout_path(output)
    _write_json(dest, json.loads(source.read_text(encoding="utf-8")))
    return dest


def _log_summary(layout: Layout, extents: Sequence[Extent], size: int, boot: Sequence[str]) -> None:
    LOG.info(
        "disk: %s, %s table, boot: %s",
        geometry.mib(size),
        layout.label,
        grub.describe(boot) or "none (no bootloader element)",
    )
    for extent in extents:
        part = layout.partition(extent.name)
        fs = part.filesystem
        kind = f"{fs.type} {fs.mount_point or ''}".strip() if fs else _type_name(part)
        LOG.info(
            "  %d %-10s %10s at sector %d: %s",
            extent.number,
            extent.name,
            geometry.mib(extent.size),
            extent.start_sector,
            kind,
        )


def _type_name(part: Partition) -> str:
    names = {guid: code for code, guid in GPT_TYPES.items()}
    return f"type {names.get(part.type_code, part.type_code)}"


__all__ = ["DiskImage", "assemble", "layout_path", "planned", "publish_layout"]
