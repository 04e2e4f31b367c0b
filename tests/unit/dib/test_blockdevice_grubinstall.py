"""grub-install requests recorded in the image, turned into GRUB platforms for the disk."""

from pathlib import Path

import pytest

from dib.blockdevice import grub
from dib.blockdevice.grubinstall import (
    REQUESTS,
    GrubInstallError,
    parse_request,
    plan_targets,
    read_requests,
)
from dib.blockdevice.layout import parse_layout_text
from dib.blockdevice.plan import make_plan

LAYOUTS = Path(__file__).resolve().parents[3] / "elements" / "vm" / "layouts"
DISK = "/dev/dib/image0"


def plan(kind):
    text = (LAYOUTS / f"{kind}.yaml").read_text()
    return make_plan(parse_layout_text(text, kind), text, kind)


def test_parse_upstream_bootloader_calls():
    """The command lines diskimage-builder's bootloader element runs."""
    bios = parse_request(
        ["--modules=part_msdos part_gpt lvm biosdisk", "--target=i386-pc", "--force", DISK]
    )
    assert (bios.target, bios.device) == ("i386-pc", DISK)
    efi = parse_request(
        ["--modules=part_msdos part_gpt lvm", "--removable", "--force", "--target=x86_64-efi",
         DISK]
    )
    assert efi.target == "x86_64-efi"
    spaced = parse_request(["--target", "i386-pc", "--boot-directory", "/boot", DISK])
    assert (spaced.target, spaced.device) == ("i386-pc", DISK)


def test_unknown_options_and_two_devices_are_refused():
    with pytest.raises(GrubInstallError, match="option --frobnicate is not supported"):
        parse_request(["--frobnicate", DISK])
    with pytest.raises(GrubInstallError, match="more than one device"):
        parse_request([DISK, "/dev/dib/root"])


def test_read_requests_consumes_the_record(tmp_path):
    record = tmp_path / REQUESTS.lstrip("/")
    record.parent.mkdir(parents=True)
    record.write_text(f"grub-install\t--target=i386-pc\t{DISK}\ngrub-install\t--force\t{DISK}\n")
    requests = read_requests(tmp_path)
    assert [r.target for r in requests] == ["i386-pc", ""]
    assert not record.exists()
    assert read_requests(tmp_path) == []


def test_efi_layout_takes_bios_and_efi_once_each():
    requests = [
        parse_request(["--target=i386-pc", DISK]),
        parse_request(["--removable", "--target=x86_64-efi", DISK]),
        parse_request(["--target=i386-pc", DISK]),
    ]
    assert plan_targets(requests, plan("efi"), "amd64", DISK) == [grub.BIOS, grub.EFI_X86_64]


def test_default_target_follows_the_architecture():
    assert plan_targets([parse_request([DISK])], plan("mbr"), "amd64", DISK) == [grub.BIOS]


def test_requests_the_layout_cannot_hold_are_refused():
    with pytest.raises(GrubInstallError, match="no place for x86_64-efi"):
        plan_targets([parse_request(["--target=x86_64-efi", DISK])], plan("mbr"), "amd64", DISK)
    with pytest.raises(GrubInstallError, match="whole disk"):
        plan_targets([parse_request(["--target=i386-pc", "/dev/dib/root"])], plan("mbr"),
                     "amd64", DISK)
    with pytest.raises(GrubInstallError, match="target powerpc-ieee1275 is not supported"):
        plan_targets([parse_request(["--target=powerpc-ieee1275", DISK])], plan("mbr"),
                     "amd64", DISK)
