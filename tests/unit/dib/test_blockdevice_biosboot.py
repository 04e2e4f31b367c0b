"""GRUB's BIOS boot code patched into an image file, as grub-bios-setup does on a device."""

import struct
from pathlib import Path

import pytest

from dib.blockdevice.biosboot import (
    BOOT_DRIVE,
    DRIVE_CHECK,
    KERNEL_SECTOR,
    SECTOR,
    BiosBootError,
    embed,
    patch_boot_sector,
    patch_core_image,
)

HOST_BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")


def fake_boot_img() -> bytes:
    image = bytearray(b"\xeb\x63\x90" + b"\xb0" * (SECTOR - 3))
    struct.pack_into("<Q", image, KERNEL_SECTOR, 1)
    image[DRIVE_CHECK : DRIVE_CHECK + 2] = b"\xeb\x05"
    return bytes(image)


def fake_core_img(sectors: int) -> bytes:
    core = bytearray(b"\xcc" * (sectors * SECTOR - 100))
    struct.pack_into("<QHH", core, SECTOR - 12, 2, sectors - 1, 0x820)
    return bytes(core)


def table_sector() -> bytes:
    sector = bytearray(SECTOR)
    sector[0x1B8:0x1BC] = b"\x12\x34\x56\x78"  # disk signature
    sector[0x1BE:0x1CE] = b"\x80" + b"\x01" * 15  # one partition entry
    sector[510:] = b"\x55\xaa"
    return bytes(sector)


def test_boot_sector_keeps_the_table_and_points_at_core():
    patched = patch_boot_sector(fake_boot_img(), table_sector(), 2048)
    assert len(patched) == SECTOR
    assert patched[0x1B8:] == table_sector()[0x1B8:]
    assert struct.unpack_from("<Q", patched, KERNEL_SECTOR)[0] == 2048
    assert patched[BOOT_DRIVE] == 0xFF
    assert patched[DRIVE_CHECK : DRIVE_CHECK + 2] == b"\x90\x90"
    assert patched[:3] == b"\xeb\x63\x90"


def test_boot_sector_needs_a_partition_table():
    with pytest.raises(BiosBootError, match="no partition table"):
        patch_boot_sector(fake_boot_img(), bytes(SECTOR), 1)


def test_core_block_list_follows_the_first_sector():
    core = patch_core_image(fake_core_img(300), 2048)
    start, length, segment = struct.unpack_from("<QHH", core, SECTOR - 12)
    assert (start, length, segment) == (2049, 299, 0x820)


def test_core_that_is_not_grub_i386_pc():
    with pytest.raises(BiosBootError, match="block list covers"):
        patch_core_image(b"\0" * 4 * SECTOR, 1)


def test_embed_into_the_mbr_gap(tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(table_sector() + bytes(4 * 1024 * 1024))
    core = fake_core_img(300)
    embed(disk, fake_boot_img(), core, 1, 2047)
    data = disk.read_bytes()
    assert data[510:512] == b"\x55\xaa"
    assert struct.unpack_from("<Q", data, KERNEL_SECTOR)[0] == 1
    assert data[SECTOR + 12 : SECTOR + 100] == core[12:100]
    assert struct.unpack_from("<Q", data, 2 * SECTOR - 12)[0] == 2


def test_embed_refuses_a_gap_too_small(tmp_path):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(table_sector() + bytes(SECTOR * 64))
    with pytest.raises(BiosBootError, match="needs 300 sectors but only 62"):
        embed(disk, fake_boot_img(), fake_core_img(300), 1, 62)


@pytest.mark.skipif(not HOST_BOOT_IMG.exists(), reason="grub-pc-bin not installed here")
def test_real_boot_img_offsets_match():
    """GRUB's own boot.img: core at sector 1 by default, the drive check is a short jump."""
    real = HOST_BOOT_IMG.read_bytes()
    assert struct.unpack_from("<Q", real, KERNEL_SECTOR)[0] == 1
    assert real[BOOT_DRIVE] == 0xFF
    assert real[DRIVE_CHECK] == 0xEB
