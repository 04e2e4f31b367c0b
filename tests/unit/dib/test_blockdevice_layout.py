"""Block-device layout YAML: parsing, defaults, and every validation error with line and key."""

from pathlib import Path

import pytest

from dib.blockdevice.layout import (
    GPT_TYPES,
    MIB,
    LayoutError,
    Size,
    parse_bytes,
    parse_layout_text,
    parse_size,
)

ELEMENTS = Path(__file__).resolve().parents[3] / "elements"

MBR = """\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [boot, primary]
        size: 100%
        mkfs:
          type: ext4
          mount:
            mount_point: /
            fstab:
              options: defaults
              fsck-passno: 1
"""


def problems(text: str) -> list:
    with pytest.raises(LayoutError) as caught:
        parse_layout_text(text, "test.yaml")
    return caught.value.problems


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8MiB", 8 * MIB),
        ("1.5GiB", 3 * (1 << 29)),
        ("2G", 2 << 30),
        ("500MB", 500 * 10**6),
        ("4096", 4096),
        (" 1 kB ", 1000),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["8 parsecs", "MiB", "", "-1MiB"])
def test_parse_bytes_rejects(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_parse_size_percent_and_bytes():
    assert parse_size("100%") == Size(percent=100.0)
    assert parse_size("12.5 %") == Size(percent=12.5)
    assert parse_size(1024) == Size(bytes=1024)
    for bad in ("0%", "101%", 0, True):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_mbr_layout_with_defaults():
    layout = parse_layout_text(MBR, "mbr")
    assert layout.label == "mbr"
    assert layout.align == MIB
    (root,) = layout.partitions
    assert root.type_code == "83"
    assert root.flags == ("boot", "primary")
    assert root.size.percent == 100
    assert layout.root is root
    assert root.filesystem.fstab.passno == 1
    assert layout.esp is None and layout.bios_boot is None


def test_bundled_layouts_are_valid():
    kinds = {}
    for path in sorted((ELEMENTS / "vm" / "layouts").glob("*.yaml")):
        kinds[path.stem] = parse_layout_text(path.read_text(), path.name)
    assert set(kinds) == {"mbr", "gpt", "efi"}
    assert kinds["gpt"].bios_boot.name == "BSP"
    efi = kinds["efi"]
    assert efi.esp.name == "ESP" and efi.esp.mount_point == "/boot/efi"
    assert efi.esp.type_code == GPT_TYPES["EF00"]
    assert [p.mount_point for p in efi.mounted()] == ["/", "/boot/efi"]


def test_gpt_type_codes_and_guids():
    text = MBR.replace("label: mbr", "label: gpt").replace(
        "flags: [boot, primary]", "type: 8300\n        flags: [boot]"
    )
    layout = parse_layout_text(text, "gpt")
    assert layout.partitions[0].type_code == GPT_TYPES["8300"]
    guid = "0fc63daf-8483-4772-8e79-3d69d8477de4"
    layout = parse_layout_text(text.replace("type: 8300", f"type: '{guid}'"), "gpt")
    assert layout.partitions[0].type_code == guid.upper()


@pytest.mark.parametrize("value, code", [("0x83", "83"), ("'0xef'", "ef"), ("0x82", "82")])
def test_mbr_type_codes(value, code):
    text = MBR.replace("flags: [boot, primary]", f"type: {value}")
    assert parse_layout_text(text, "t").partitions[0].type_code == code


def test_last_partition_may_leave_out_its_size():
    layout = parse_layout_text(MBR.replace("        size: 100%\n", ""), "t")
    assert layout.partitions[0].size.percent == 100


def test_every_problem_is_listed_with_line_and_key():
    text = """\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: msdos
    partitions:
      - name: "bad name"
        size: 12 parsecs
        flags: [boot, active]
        mkfs:
          type: xfs
          mount:
            mount_point: relative/path
      - name: root
        size: 100%
        colour: blue
"""
    found = problems(text)
    joined = "\n".join(found)
    assert "line 5: partitioning.label: 'msdos' is not one of mbr, gpt" in joined
    assert "line 7: partitioning.partitions[0].name" in joined
    assert "line 8: partitioning.partitions[0].size: cannot read size '12 parsecs'" in joined
    assert "unknown flag 'active'" in joined
    assert "line 11: partitioning.partitions[0].mkfs.type: 'xfs' cannot be made" in joined
    assert "line 13: partitioning.partitions[0].mkfs.mount.mount_point" in joined
    assert "line 16: partitioning.partitions[1].colour: unknown key" in joined
    assert "no partition has a filesystem mounted at /" in joined
    assert len(found) == 8


def test_message_names_the_origin_and_count():
    with pytest.raises(LayoutError, match=r"block-device layout my.yaml: 1 problem\(s\)"):
        parse_layout_text(MBR.replace("label: mbr", "label: zfs"), "my.yaml")


def test_hundred_percent_before_the_last_partition():
    text = (
        MBR
        + """\
      - name: data
        size: 1GiB
"""
    )
    (problem,) = problems(text)
    assert "100% takes the rest of the disk, but 'data' follows" in problem


def test_missing_size_before_the_last_partition():
    text = MBR.replace("        size: 100%\n", "") + "      - name: data\n        size: 1GiB\n"
    assert any("size: missing" in p for p in problems(text))


def test_duplicate_names_and_mount_points():
    text = (
        MBR
        + """\
      - name: root
        mkfs:
          type: ext4
          mount:
            mount_point: /
"""
    )
    found = "\n".join(problems(text))
    assert "'root' is used twice" in found
    assert "'/' is also 'root'" in found


def test_mbr_limits():
    extra = "".join(f"      - name: p{i}\n        size: 1MiB\n" for i in range(4))
    text = MBR.replace("size: 100%", "size: 10MiB") + extra
    found = "\n".join(problems(text))
    assert "4 primary partitions at most" in found


def test_unsupported_nodes_and_shapes():
    assert (
        "not supported by dib (LVM needs device-mapper)"
        in problems(MBR + "- lvm:\n    name: lvm\n")[0]
    )
    assert (
        problems("{}")[0]
        == "line 1: expected a list of nodes (- local_loop: ..., - partitioning: ...)"
    )
    assert "exactly one partitioning node" in problems("- local_loop:\n    name: x\n")[0]
    assert "invalid YAML" in problems("- [unclosed\n")[0]


def test_vfat_root_and_bad_labels():
    text = MBR.replace("type: ext4", "type: vfat\n          label: THIS-LABEL-IS-TOO-LONG")
    found = "\n".join(problems(text))
    assert "the root filesystem cannot be vfat" in found
    assert "must be 1-11 of" in found


def test_fstab_values_are_checked():
    text = MBR.replace("options: defaults", "options: 'rw, noatime'").replace(
        "fsck-passno: 1", "fsck-passno: -1"
    )
    found = "\n".join(problems(text))
    assert "fstab.options" in found and "fstab.fsck-passno" in found


def test_base_must_be_the_image():
    assert (
        "'disk9' is not the image 'image0'"
        in problems(MBR.replace("base: image0", "base: disk9"))[0]
    )
