"""Where a build's layout comes from: DIB_BLOCK_DEVICE_CONFIG, an element's
block-device-*.yaml, dib's own layouts by DIB_BLOCK_DEVICE; and diskimage-builder's
layouts parse."""

from pathlib import Path

import pytest

from dib.blockdevice.config import find_layout, from_config
from dib.blockdevice.layout import LayoutError, parse_layout_text
from dib.elements import bundled_elements_dir
from dib.errors import ConfigError

# diskimage-builder's block-device-mbr layout, in its shape: the root mkfs has no type.
UPSTREAM_MBR = """\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: mbr
    partitions:
      - name: root
        flags: [ boot, primary ]
        size: 100%
        mkfs:
          mount:
            mount_point: /
            fstab:
              options: "defaults"
              fsck-passno: 1
"""


def element(root: Path, name: str, files=()) -> Path:
    path = root / name
    path.mkdir(parents=True)
    for file_name, text in files:
        (path / file_name).write_text(text)
    return path


def test_config_wins_over_elements(tmp_path):
    shipped = element(tmp_path, "block-device-mbr", [("block-device-default.yaml", "ELEMENT")])
    env = {"DIB_BLOCK_DEVICE_CONFIG": "- local_loop: {name: image0}\n- x: y\n"}
    found = find_layout(env, [shipped], "amd64", bundled_elements_dir())
    assert found.origin == "DIB_BLOCK_DEVICE_CONFIG"
    file = tmp_path / "layout.yaml"
    file.write_text("FILE")
    assert from_config(f"file://{file}").text == "FILE"
    assert from_config(str(file)).origin == str(file)
    with pytest.raises(ConfigError, match="cannot read"):
        from_config(f"file://{tmp_path}/missing.yaml")


def test_element_file_arch_first_then_default_first_element_wins(tmp_path):
    first = element(
        tmp_path, "a",
        [("block-device-default.yaml", "A-DEFAULT"), ("block-device-arm64.yaml", "A-ARM")],
    )
    second = element(tmp_path, "b", [("block-device-default.yaml", "B-DEFAULT")])
    bundled = bundled_elements_dir()
    assert find_layout({}, [first, second], "amd64", bundled).text == "A-DEFAULT"
    assert find_layout({}, [first, second], "arm64", bundled).text == "A-ARM"
    assert find_layout({}, [second, first], "amd64", bundled).text == "B-DEFAULT"


def test_kind_picks_dibs_own_layout_and_nothing_means_bare(tmp_path):
    plain = element(tmp_path, "plain")
    bundled = bundled_elements_dir()
    found = find_layout({"DIB_BLOCK_DEVICE": "gpt"}, [plain], "amd64", bundled)
    assert found.origin == "gpt (gpt.yaml)"
    assert find_layout({}, [plain], "amd64", bundled) is None
    with pytest.raises(ConfigError, match="DIB_BLOCK_DEVICE=lvm: no such layout"):
        find_layout({"DIB_BLOCK_DEVICE": "lvm"}, [plain], "amd64", bundled)


def test_upstream_root_mkfs_without_type_is_ext4():
    layout = parse_layout_text(UPSTREAM_MBR, "upstream mbr")
    assert layout.root.filesystem.type == "ext4"


def test_a_non_root_mkfs_still_needs_its_type():
    text = UPSTREAM_MBR.replace(
        "      - name: root",
        "      - name: data\n        size: 10MiB\n        mkfs:\n"
        "          mount: {mount_point: /srv}\n      - name: root",
    )
    with pytest.raises(LayoutError, match=r"partitions\[0\]\.mkfs\.type"):
        parse_layout_text(text, "t")


def test_4k_sectors_and_whole_disk_filesystems_are_refused_by_key():
    text = UPSTREAM_MBR.replace("    name: image0\n", "    name: image0\n    block_size: 4096\n", 1)
    with pytest.raises(LayoutError, match=r"local_loop\.block_size: 4096-byte sectors"):
        parse_layout_text(text, "t")
    with pytest.raises(LayoutError, match=r"local_loop\.mkfs"):
        parse_layout_text("- local_loop:\n    name: image0\n    mkfs: {name: r}\n", "t")
    with pytest.raises(LayoutError, match=r"lvm: not supported by dib"):
        parse_layout_text(UPSTREAM_MBR + "- lvm: {name: lvm}\n", "t")


UPSTREAM = (
    Path.home() / ".cache/dib-matrix/upstream-dib/diskimage_builder-3.43.0"
    / "diskimage_builder/elements"
)


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="diskimage-builder's wheel is not unpacked")
@pytest.mark.parametrize("name", ["block-device-mbr", "block-device-gpt", "block-device-efi"])
def test_diskimage_builders_own_layouts_parse(name):
    path = UPSTREAM / name / "block-device-default.yaml"
    layout = parse_layout_text(path.read_text(), str(path))
    assert layout.root.filesystem.type == "ext4"


FLAT = """\
- local_loop:
    name: image0
- partitioning:
    base: image0
    label: gpt
    partitions:
      - name: ESP
        type: EF00
        size: 64MiB
      - name: root
        type: "8300"
- mkfs:
    name: fs_esp
    base: ESP
    type: vfat
- mkfs:
    name: fs_root
    base: root
    type: ext4
    label: myroot
- mount:
    name: mount_esp
    base: fs_esp
    mount_point: /boot/efi
- mount:
    base: fs_root
    mount_point: /
- fstab:
    base: mount_fs_root
    options: defaults
    fsck-passno: 1
"""


def test_flat_form_means_the_same_as_nested():
    layout = parse_layout_text(FLAT, "flat")
    assert layout.root.filesystem.label == "myroot"
    assert layout.root.filesystem.fstab.passno == 1
    assert layout.esp.mount_point == "/boot/efi"
    assert layout.esp.filesystem.fstab is None


def test_flat_nodes_that_cannot_be_placed_are_named():
    text = FLAT + "- mkfs:\n    name: fs_var\n    base: lv_var\n    type: ext4\n"
    with pytest.raises(LayoutError, match=r"mkfs: 'fs_var': base 'lv_var' is not a partition"):
        parse_layout_text(text, "t")
    text = FLAT + "- mount:\n    base: fs_root\n    mount_point: /srv\n"
    with pytest.raises(LayoutError, match=r"'fs_root' already has a mount"):
        parse_layout_text(text, "t")
