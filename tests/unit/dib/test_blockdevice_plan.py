"""The disk plan: identities, fstab, where the layout comes from, save and load."""

import re
from pathlib import Path

import pytest

from dib.blockdevice.layout import parse_layout_text
from dib.blockdevice.plan import (
    fstab_text,
    has_plan,
    layout_source,
    load_plan,
    make_plan,
    prepare_tree,
    save_plan,
)
from dib.errors import ConfigError

LAYOUTS = Path(__file__).resolve().parents[3] / "elements" / "vm" / "layouts"
EXT_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def efi_plan():
    text = (LAYOUTS / "efi.yaml").read_text()
    return make_plan(parse_layout_text(text, "efi"), text, "efi")


def test_identities_root_label_and_vfat_serial():
    plan = efi_plan()
    assert set(plan.identities) == {"ESP", "root"}  # the BIOS boot partition has no filesystem
    root = plan.root_identity
    assert root.label == "cloudimg-rootfs"
    assert EXT_UUID.match(root.uuid) and root.mkfs_uuid == root.uuid
    esp = plan.identities["ESP"]
    assert re.match(r"^[0-9A-F]{4}-[0-9A-F]{4}$", esp.uuid)
    assert esp.mkfs_uuid == esp.uuid.replace("-", "")
    assert esp.label == "ESP"


def test_fstab_by_uuid_parents_first():
    plan = efi_plan()
    lines = fstab_text(plan).splitlines()
    assert lines[0].startswith("#")
    assert lines[1] == f"UUID={plan.root_identity.uuid}\t/\text4\tdefaults\t0\t1"
    assert lines[2] == f"UUID={plan.identities['ESP'].uuid}\t/boot/efi\tvfat\tumask=0077\t0\t2"


def test_paths_on_their_filesystem():
    text = """\
- local_loop: {name: image0}
- partitioning:
    base: image0
    label: gpt
    partitions:
      - {name: boot, size: 512MiB, mkfs: {type: ext4, mount: {mount_point: /boot}}}
      - {name: root, mkfs: {type: ext4, mount: {mount_point: /}}}
"""
    plan = make_plan(parse_layout_text(text, "t"), text, "t")
    assert plan.holder("/boot/grub").name == "boot"
    assert plan.holder("/bootstrap").name == "root"
    assert plan.path_on_filesystem("/boot/grub") == "/grub"
    assert plan.path_on_filesystem("/vmlinuz") == "/vmlinuz"


def test_save_and_load_round_trip(tmp_path):
    plan = efi_plan()
    assert not has_plan(tmp_path)
    save_plan(plan, tmp_path)
    assert has_plan(tmp_path)
    loaded = load_plan(tmp_path)
    assert loaded.layout == plan.layout
    assert dict(loaded.identities) == dict(plan.identities)


def test_prepare_tree_writes_fstab_and_mount_points(tmp_path):
    plan = efi_plan()
    prepare_tree(plan, tmp_path)
    assert (tmp_path / "boot" / "efi").is_dir()
    assert plan.root_identity.uuid in (tmp_path / "etc" / "fstab").read_text()


def test_layout_source_kind_text_and_files(tmp_path):
    hooks = tmp_path / "hooks"
    (hooks / "layouts").mkdir(parents=True)
    (hooks / "layouts" / "mbr.yaml").write_text("MBR")
    (hooks / "layouts" / "efi.yaml").write_text("EFI")
    assert layout_source({}, hooks) == ("MBR", "mbr (mbr.yaml)")
    assert layout_source({"DIB_BLOCK_DEVICE": "efi"}, hooks)[0] == "EFI"
    text = "- local_loop:\n    name: image0\n"
    assert layout_source({"DIB_BLOCK_DEVICE_CONFIG": text}, hooks) == (
        text.strip(),
        "DIB_BLOCK_DEVICE_CONFIG",
    )
    mine = tmp_path / "mine.yaml"
    mine.write_text("MINE")
    for value in (str(mine), f"file://{mine}"):
        assert layout_source({"DIB_BLOCK_DEVICE_CONFIG": value}, hooks) == ("MINE", str(mine))
    with pytest.raises(
        ConfigError, match=r"DIB_BLOCK_DEVICE=zfs: no such layout \(known: efi, mbr\)"
    ):
        layout_source({"DIB_BLOCK_DEVICE": "zfs"}, hooks)
    with pytest.raises(ConfigError, match="cannot read"):
        layout_source({"DIB_BLOCK_DEVICE_CONFIG": "file:///no/such/file"}, hooks)
