"""Turn the finished root tree into output files, without loop devices or privileges.

``tar`` archives the tree; ``raw`` is an ext4 filesystem made straight from the tree
(``mkfs.ext4 -d``); every other type is ``qemu-img convert`` of that raw file.
``qcow2`` is compressed as ``DIB_QCOW2_COMPRESSION`` says (``zstd``, the default,
readable by QEMU 5.1 and newer; ``zlib``, readable by every qemu; ``none``, as ``-u``).
Whether this qemu-img can write zstd is probed, not read from its version: a qemu-img
built without zstd (Debian bullseye's 5.2) gets zlib, with a warning saying why.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from dib import failure, rpmbase
from dib.blockdevice import disk
from dib.errors import CommandFailed, ConfigError, DibError
from dib.fssize import MIB, estimate_fs_size, tree_usage
from dib.run import capture, run

LOG = logging.getLogger("dib")
ROOT_LABEL = "cloudimg-rootfs"
# Image type -> qemu-img format name; "raw" and "tar" are made directly.
QEMU_FORMATS = {
    "qcow2": "qcow2",
    "vmdk": "vmdk",
    "vdi": "vdi",
    "vhd": "vpc",
    "vhdx": "vhdx",
    "qed": "qed",
}
TAR_TYPES = {"tar": [], "tgz": ["--gzip"], "tar.gz": ["--gzip"]}
# How qcow2 clusters are compressed: zstd (default; several times faster than zlib and a
# little smaller, readable by QEMU 5.1 and newer), zlib (what every qemu reads, as
# diskimage-builder writes), none (as with -u).
QCOW2_COMPRESSION_VAR = "DIB_QCOW2_COMPRESSION"
QCOW2_COMPRESSIONS = ("zstd", "zlib", "none")
DEFAULT_QCOW2_COMPRESSION = "zstd"
# First qemu-img that writes zstd clusters (compression_type); from the same release on
# compressed clusters are also written out of order (-W), which spreads them over cores.
ZSTD_QEMU = (5, 1)
SUPPORTED_TYPES = ("tar", "tgz", "tar.gz", "raw", *QEMU_FORMATS)
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_types(text: str) -> List[str]:
    types = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in types if t not in SUPPORTED_TYPES]
    if unknown:
        raise ConfigError(
            f"unknown image type(s) {', '.join(unknown)}; supported: {', '.join(SUPPORTED_TYPES)}"
        )
    return types or ["qcow2"]


def parse_size(text: str) -> int:
    """Bytes from '2G', '512M', '1.5GiB'; a bare number is GiB as in disk-image-create."""
    match = SIZE.match(text)
    if not match:
        raise ConfigError(f"cannot read image size '{text}' (examples: 2, 2G, 512M)")
    number, unit = float(match.group(1)), match.group(2).upper() or "G"
    return int(number * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])


def make_ext4(
    root: Path, dest: Path, size: int, label: str = ROOT_LABEL, grow_attempts: int = 5
) -> int:
    """mkfs.ext4 -d into a sparse file; grow and retry when the estimate was short."""
    usage = tree_usage(root)
    inodes = int(usage.inodes * 1.2) + 1024
    last: Optional[CommandFailed] = None
    for _ in range(grow_attempts):
        with open(dest, "wb") as image:
            image.truncate(size)
        try:
            run(
                [
                    "mkfs.ext4",
                    "-F",
                    "-q",
                    "-L",
                    label,
                    "-N",
                    str(inodes),
                    "-d",
                    str(root),
                    str(dest),
                ],
                tag="mkfs.ext4",
            )
            return size
        except CommandFailed as err:
            if not any("space" in line or "allocate" in line for line in err.tail):
                raise
            last = err
            size = math.ceil(size * 1.25 / MIB) * MIB
            LOG.info("filesystem too small, retrying with %d MiB", size // MIB)
    problem = DibError(f"could not fit {root} into an ext4 filesystem of {size // MIB} MiB")
    if last is not None:
        failure.note(problem, status=last.returncode, error=failure.pick_error_line(last.tail))
    raise problem


def make_tar(root: Path, dest: Path, extra: Sequence[str]) -> None:
    run(
        [
            "tar",
            "-C",
            str(root),
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--one-file-system",
            *extra,
            "-cf",
            str(dest),
            ".",
        ],
        tag="tar",
    )


def qcow2_compression(env: Mapping[str, str], compress: bool = True) -> str:
    """The qcow2 compression asked for: DIB_QCOW2_COMPRESSION, 'none' when not compressing."""
    if not compress:
        return "none"
    value = env.get(QCOW2_COMPRESSION_VAR, "").strip().lower() or DEFAULT_QCOW2_COMPRESSION
    if value not in QCOW2_COMPRESSIONS:
        raise ConfigError(
            f"{QCOW2_COMPRESSION_VAR}={value!r} is not one of {', '.join(QCOW2_COMPRESSIONS)}"
        )
    return value


def qemu_img_version() -> Optional[Tuple[int, int]]:
    """(major, minor) of the qemu-img on PATH; None when it cannot be told."""
    try:
        text = capture(["qemu-img", "--version"], timeout=30)
    except (DibError, OSError):
        return None
    match = re.search(r"version (\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def convert_command(
    raw: Path,
    dest: Path,
    image_type: str,
    compression: str,
    qemu_version: Optional[Tuple[int, int]],
) -> List[str]:
    fmt = QEMU_FORMATS[image_type]
    cmd = ["qemu-img", "convert", "-f", "raw", "-O", fmt]
    if fmt == "qcow2" and compression != "none":
        cmd.append("-c")
        recent = qemu_version is not None and qemu_version >= ZSTD_QEMU
        if compression == "zstd" and recent:
            cmd += ["-o", "compression_type=zstd"]
        if recent:
            cmd.append("-W")
    return [*cmd, str(raw), str(dest)]


@functools.cache
def zstd_probe(qemu_img: str) -> Optional[str]:
    """None when ``qemu_img`` writes zstd-compressed qcow2, else its own error line.

    Probed once per qemu-img per process by creating a tiny qcow2 with
    ``compression_type=zstd``: a qemu-img >= 5.1 built without zstd refuses it with
    ``Invalid parameter 'zstd'`` (Debian bullseye's 5.2 does)."""
    with tempfile.TemporaryDirectory(prefix="dib-zstd-probe.") as tmp:
        probe = os.path.join(tmp, "probe.qcow2")
        cmd = [qemu_img, "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", probe, "1M"]
        try:
            capture(cmd, timeout=30)
        except CommandFailed as err:
            return failure.pick_error_line(err.tail) or str(err)
        except OSError as err:
            return str(err)
    return None


def effective_compression(
    compression: str, version: Optional[Tuple[int, int]], qemu_img: str = "qemu-img"
) -> str:
    """``compression``, or zlib (with a warning saying why) when zstd cannot be written."""
    if compression != "zstd":
        return compression
    if version is None or version < ZSTD_QEMU:
        found = ".".join(map(str, version)) if version else "of unknown version"
        LOG.warning(
            "qemu-img %s cannot write zstd-compressed qcow2 (needs %d.%d): using zlib",
            found,
            *ZSTD_QEMU,
        )
        return "zlib"
    problem = zstd_probe(shutil.which(qemu_img) or qemu_img)
    if problem:
        LOG.warning(
            "qemu-img %d.%d cannot write zstd-compressed qcow2 (%s): using zlib",
            *version,
            problem,
        )
        return "zlib"
    return compression


def convert(raw: Path, dest: Path, image_type: str, compression: str) -> None:
    version = None
    if QEMU_FORMATS[image_type] == "qcow2" and compression != "none":
        version = qemu_img_version()
        compression = effective_compression(compression, version)
    run(convert_command(raw, dest, image_type, compression, version), tag="qemu-img")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MIB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(path: Path) -> Path:
    sums = path.with_name(path.name + ".sha256")
    sums.write_text(f"{sha256_file(path)}  {path.name}\n")
    return sums


def installed_packages(root: Path) -> List[str]:
    """'name version arch' of every installed package, read from dpkg's status file."""
    status = root / "var/lib/dpkg/status"
    if not status.is_file():
        return []
    rows = []
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields: Dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            rows.append(
                f"{fields['Package']} {fields.get('Version', '')} {fields.get('Architecture', '')}"
            )
    return sorted(rows)


def image_path(output: Path, image_type: str) -> Path:
    return output.with_name(f"{output.name}.{image_type}")


def _vm_disk(
    root: Path, raw: Path, workdir: Path, image_size: Optional[int], output: Path
) -> bool:
    """A vm build: assemble the planned partitioned disk, if there is one, and publish its
    layout record as ``<output>.layout.json`` whatever the output types (image checks
    compare the disk with it)."""

    if not disk.planned(workdir):
        return False
    disk.assemble(root, raw, workdir, image_size)
    disk.publish_layout(workdir, output)
    return True


@contextlib.contextmanager
def unfinished(path: Path) -> Iterator[Path]:
    """A file being written: removed when writing it fails, so no truncated image is left
    (and a full output disk gets the room back for the failure record)."""
    try:
        yield path
    except BaseException as err:
        # The space left when writing failed: removing the partial file gives it back,
        # and the failure record must show the full disk, not the freed one.
        failure.note(err, free_bytes={"output": failure.free_bytes(path.parent)})
        with contextlib.suppress(OSError):
            path.unlink()
        raise


NO_FINAL_IMAGE = "no-final-image"


def wants_final_image(element_names: Sequence[str]) -> bool:
    """False with the ``no-final-image`` element: as in disk-image-create, the tar types
    are still written but no disk image is made or kept (elements that take what they
    need from the tree, such as a ramdisk's kernel, use it)."""
    return NO_FINAL_IMAGE not in element_names


def has_disk_type(types: Sequence[str]) -> bool:
    return any(t not in TAR_TYPES for t in types)


def make_outputs(
    root: Path,
    output: Path,
    types: Sequence[str],
    workdir: Path,
    image_size: Optional[int] = None,
    checksum: bool = False,
    qcow2_compression: str = DEFAULT_QCOW2_COMPRESSION,
    final_image: bool = True,
) -> List[Path]:
    """Write every requested type for ``root`` next to ``output``; return the files made.
    Without ``final_image`` (see :func:`wants_final_image`) only the tar types."""
    output.parent.mkdir(parents=True, exist_ok=True)
    made: List[Path] = []
    manifest = output.with_name(f"{output.name}.packages")
    packages = installed_packages(root) or rpmbase.installed_rpms(root)
    manifest.write_text("".join(line + "\n" for line in packages))
    for image_type in (t for t in types if t in TAR_TYPES):
        with unfinished(image_path(output, image_type)) as dest:
            make_tar(root, dest, TAR_TYPES[image_type])
        made.append(dest)
    disk_types = [t for t in types if t not in TAR_TYPES]
    if disk_types and not final_image:
        LOG.info("%s: not writing %s", NO_FINAL_IMAGE, ", ".join(disk_types))
        disk_types = []
    if disk_types:
        raw = image_path(output, "raw") if "raw" in disk_types else workdir / "image.raw"
        # A build with a disk plan gets a partitioned, bootable disk instead of a bare ext4.
        with unfinished(raw):
            if not _vm_disk(root, raw, workdir, image_size, output):
                size = max(image_size or 0, estimate_fs_size(tree_usage(root)))
                final = make_ext4(root, raw, size)
                LOG.info("ext4 filesystem %s: %d MiB", raw.name, final // MIB)
        if "raw" in disk_types:
            made.append(raw)
        for image_type in (t for t in disk_types if t != "raw"):
            with unfinished(image_path(output, image_type)) as dest:
                convert(raw, dest, image_type, qcow2_compression)
            made.append(dest)
    if checksum:
        for path in list(made):
            with unfinished(path.with_name(path.name + ".sha256")):
                write_checksum(path)
    return made
