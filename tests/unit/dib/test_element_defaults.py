"""vm on the command line brings a block-device element, as disk-image-create adds one."""

import pytest

from dib.elements import index_elements, resolve, with_block_device_default
from dib.errors import ElementError


@pytest.mark.parametrize(
    "requested, arch, expected",
    [
        (["debian-minimal", "vm"], "amd64", ["debian-minimal", "vm", "block-device-mbr"]),
        (["vm", "debian-minimal"], "arm64", ["vm", "debian-minimal", "block-device-efi"]),
        (["vm"], "aarch64", ["vm", "block-device-efi"]),
        (["vm", "block-device-gpt"], "amd64", ["vm", "block-device-gpt"]),
        (["block-device-efi", "vm"], "arm64", ["block-device-efi", "vm"]),
        (["debian-minimal"], "amd64", ["debian-minimal"]),
        # only the command line counts: a vm pulled in by another element adds nothing
        (["my-vm-image"], "amd64", ["my-vm-image"]),
    ],
)
def test_block_device_default(requested, arch, expected):
    assert with_block_device_default(requested, arch) == expected


def test_the_request_is_not_changed():
    requested = ("vm",)
    with_block_device_default(requested, "amd64")
    assert requested == ("vm",)


def test_upstream_vm_resolves_through_the_virtual_block_device(tmp_path):
    """diskimage-builder's vm needs 'block-device', which block-device-mbr provides."""
    for name, deps, provides in (
        ("os", [], ["operating-system"]),
        ("vm", ["block-device", "bootloader"], []),
        ("bootloader", [], []),
        ("block-device-mbr", [], ["block-device"]),
        ("block-device-gpt", [], ["block-device"]),
    ):
        path = tmp_path / name
        path.mkdir()
        (path / "element-deps").write_text("\n".join(deps) + "\n")
        (path / "element-provides").write_text("\n".join(provides) + "\n")
    index = index_elements([tmp_path])
    names = resolve(with_block_device_default(["os", "vm"], "amd64"), index).names
    assert "block-device-mbr" in names and "block-device-gpt" not in names
    assert names.index("block-device-mbr") < names.index("vm")


def test_a_loop_through_a_virtual_name_is_no_cycle(tmp_path):
    """dib's block-device-mbr needs vm; diskimage-builder's vm needs 'block-device'."""
    for name, deps, provides in (
        ("os", [], ["operating-system"]),
        ("vm", ["block-device"], []),
        ("block-device-mbr", ["vm"], ["block-device"]),
        ("a", ["b"], []),
        ("b", ["a"], []),
    ):
        path = tmp_path / name
        path.mkdir()
        (path / "element-deps").write_text("\n".join(deps) + "\n")
        (path / "element-provides").write_text("\n".join(provides) + "\n")
    index = index_elements([tmp_path])
    names = resolve(["os", "vm", "block-device-mbr"], index).names
    assert names.index("vm") < names.index("block-device-mbr")
    with pytest.raises(ElementError, match="element dependency cycle: .*a"):
        resolve(["os", "a"], index)


def test_no_final_image_writes_the_tar_types_only(tmp_path):
    """The no-final-image element: as in disk-image-create, tar is still written, no disk."""
    from dib.outputs import has_disk_type, make_outputs, wants_final_image

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("x\n")
    assert not wants_final_image(["base", "vm", "no-final-image"])
    assert wants_final_image(["base", "vm"])
    assert has_disk_type(["tar", "qcow2"]) and not has_disk_type(["tar", "tgz"])
    output = tmp_path / "out" / "image"
    made = make_outputs(root, output, ["tar", "raw", "qcow2"], tmp_path, final_image=False)
    assert made == [tmp_path / "out" / "image.tar"]
    assert sorted(p.name for p in output.parent.iterdir()) == ["image.packages", "image.tar"]
