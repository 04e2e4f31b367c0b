"""GRUB's BIOS boot code written into an image file, as grub-bios-setup would on a device.

``boot.img`` (446 bytes of code in sector 0) loads the first sector of ``core.img``
from an LBA stored inside it; that sector (diskboot) loads the rest from a block
list at its end. grub-bios-setup patches both for where core.img lands, keeps
the disk's own partition table, and disables a BIOS workaround for floppies.
We do the same on the file: no device, no loop, no grub-bios-setup.
Offsets are GRUB's (include/grub/i386/pc/boot.h, kernel.h).
"""

from __future__ import annotations

import struct
from pathlib import Path

from dib.errors import DibError

SECTOR = 512
KERNEL_SECTOR = 0x5C  # boot.img: 64-bit LBA of core.img's first sector
BOOT_DRIVE = 0x64  # boot.img: 0xff = the drive the BIOS booted from
DRIVE_CHECK = 0x66  # boot.img: a 2-byte jump to skip for hard disks
BPB_START, BPB_END = 0x03, 0x5A  # keep whatever parameter block the disk has
DISK_ID = 0x1B8  # from here on: disk signature, partition table, 0x55AA
BLOCKLIST_SIZE = 12  # diskboot's block list entry: u64 start, u16 sectors, u16 segment
SIGNATURE = b"\x55\xaa"
NOP_NOP = b"\x90\x90"


class BiosBootError(DibError):
    """GRUB's BIOS boot code cannot be placed on this disk."""


def patch_boot_sector(boot_img: bytes, current: bytes, core_lba: int) -> bytes:
    """Sector 0: boot.img's code, pointed at ``core_lba``, around the disk's own table."""
    if len(boot_img) != SECTOR or len(current) != SECTOR:
        raise BiosBootError(f"boot.img and sector 0 must be {SECTOR} bytes")
    if current[-2:] != SIGNATURE:
        raise BiosBootError("sector 0 holds no partition table (no 0x55AA signature)")
    sector = bytearray(boot_img)
    sector[BPB_START:BPB_END] = current[BPB_START:BPB_END]
    sector[DISK_ID:] = current[DISK_ID:]
    struct.pack_into("<Q", sector, KERNEL_SECTOR, core_lba)
    sector[BOOT_DRIVE] = 0xFF
    sector[DRIVE_CHECK : DRIVE_CHECK + 2] = NOP_NOP
    return bytes(sector)


def patch_core_image(core_img: bytes, core_lba: int) -> bytes:
    """core.img with its first block list pointing at the sectors after ``core_lba``."""
    sectors = -(-len(core_img) // SECTOR)
    if sectors < 2:
        raise BiosBootError("core.img is too small to be GRUB's i386-pc core image")
    core = bytearray(core_img)
    offset = SECTOR - BLOCKLIST_SIZE
    _start, length, segment = struct.unpack_from("<QHH", core, offset)
    if length != sectors - 1:
        raise BiosBootError(
            f"core.img's block list covers {length} sectors, expected {sectors - 1}: "
            "not an i386-pc core image made by grub-mkimage?"
        )
    struct.pack_into("<QHH", core, offset, core_lba + 1, length, segment)
    return bytes(core)


def embed(disk: Path, boot_img: bytes, core_img: bytes, core_lba: int, room_sectors: int) -> None:
    """Write core.img at ``core_lba`` (``room_sectors`` free there) and boot.img into sector 0."""
    sectors = -(-len(core_img) // SECTOR)
    if sectors > room_sectors:
        raise BiosBootError(
            f"GRUB's core image needs {sectors} sectors but only {room_sectors} are free at "
            f"sector {core_lba}; make the first partition start later or the BIOS boot "
            "partition larger"
        )
    core = patch_core_image(core_img, core_lba)
    with open(disk, "r+b") as image:
        current = image.read(SECTOR)
        image.seek(0)
        image.write(patch_boot_sector(boot_img, current, core_lba))
        image.seek(core_lba * SECTOR)
        image.write(core)
