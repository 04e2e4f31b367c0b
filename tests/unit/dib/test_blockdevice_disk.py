"""dib.blockdevice.disk's pure parts: the sfdisk script and setting nested filesystems aside."""

from pathlib import Path

import pytest

from dib.blockdevice.disk import check_tools, set_aside, sfdisk_script, vfat_need
from dib.blockdevice.geometry import place
from dib.blockdevice.layout import GPT_TYPES, MIB, parse_layout_text
from dib.errors import DibError

LAYOUTS = Path(__file__).resolve().parents[3] / "elements" / "vm" / "layouts"


def layout(kind):
    return parse_layout_text((LAYOUTS / f"{kind}.yaml").read_text(), kind)


def test_sfdisk_script_mbr():
    lay = layout("mbr")
    script = sfdisk_script(lay, place(lay, 800 * MIB))
    assert script.splitlines() == [
        "label: dos",
        "unit: sectors",
        "start=2048, size=1636352, type=83, bootable",
    ]


def test_sfdisk_script_gpt_with_names_types_and_attributes():
    lay = layout("efi")
    lines = sfdisk_script(lay, place(lay, 1024 * MIB)).splitlines()
    assert lines[0] == "label: gpt"
    assert lines[2] == f'start=2048, size=131072, type={GPT_TYPES["EF00"]}, name="ESP"'
    assert lines[3] == f'start=133120, size=16384, type={GPT_TYPES["EF02"]}, name="BSP"'
    assert lines[4].startswith(f"start=149504, size=1945600, type={GPT_TYPES['8300']}")
    gpt = layout("gpt")
    assert 'attrs="LegacyBIOSBootable"' in sfdisk_script(gpt, place(gpt, 100 * MIB))


def test_set_aside_moves_the_esp_out_and_back(tmp_path):
    root = tmp_path / "root"
    (root / "boot" / "efi" / "EFI" / "BOOT").mkdir(parents=True)
    (root / "boot" / "efi" / "EFI" / "BOOT" / "BOOTX64.EFI").write_text("efi")
    (root / "boot" / "efi").chmod(0o700)
    (root / "etc").mkdir()
    with set_aside(root, layout("efi"), tmp_path / "hold") as sources:
        assert sources["root"] == root
        assert (sources["ESP"] / "EFI" / "BOOT" / "BOOTX64.EFI").read_text() == "efi"
        assert list((root / "boot" / "efi").iterdir()) == []  # an empty mount point stays
        assert (root / "boot" / "efi").stat().st_mode & 0o777 == 0o700
    assert (root / "boot" / "efi" / "EFI" / "BOOT" / "BOOTX64.EFI").read_text() == "efi"


def test_set_aside_restores_on_failure(tmp_path):
    root = tmp_path / "root"
    (root / "boot" / "efi").mkdir(parents=True)
    (root / "boot" / "efi" / "x").write_text("x")
    try:
        with set_aside(root, layout("efi"), tmp_path / "hold"):
            raise RuntimeError("mkfs failed")
    except RuntimeError:
        pass
    assert (root / "boot" / "efi" / "x").read_text() == "x"


def test_vfat_need_counts_clusters_and_slack(tmp_path):
    (tmp_path / "EFI").mkdir()
    (tmp_path / "EFI" / "a").write_bytes(b"x" * 5000)
    need = vfat_need(tmp_path)
    assert need % MIB == 0 and 2 * MIB < need <= 3 * MIB


def test_missing_tools_are_named_with_their_package(monkeypatch):
    monkeypatch.setattr("dib.blockdevice.disk.shutil.which",
                        lambda tool: None if tool == "mcopy" else tool)
    check_tools(layout("mbr"))  # no FAT filesystem: mtools not needed
    with pytest.raises(DibError, match=r"^mcopy not available: install mtools"):
        check_tools(layout("efi"))
