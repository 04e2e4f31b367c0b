"""What the bundled elements choose for arm64 (issue 15): kernel, GRUB packages, layout
kind and the block-device element, from the same files an arm64 build reads."""

from __future__ import annotations

import subprocess

import pytest

from dib.elements import bundled_elements_dir, index_elements, resolve, with_block_device_default
from dib.packages import Distro, plan_packages

ELEMENTS = bundled_elements_dir()


def packages(arch: str, release: str = "bookworm", distro: str = "debian"):
    names = with_block_device_default(["base", f"{distro}-minimal", "vm"], arch)
    elements = resolve(names, index_elements([ELEMENTS])).elements
    plan = plan_packages(elements, Distro(distro, release), arch, {"DIB_RELEASE": release})
    return {name for phase in plan.values() for name in phase.install}


@pytest.mark.parametrize("arch", ["arm64", "aarch64"])
def test_an_arm64_vm_gets_arm64_kernel_and_uefi_grub_only(arch):
    chosen = packages(arch)
    assert {"linux-image-arm64", "grub-efi-arm64-bin"} <= chosen
    assert not chosen & {"linux-image-amd64", "grub-pc-bin", "grub-efi-amd64-bin"}


def test_an_amd64_vm_is_unchanged():
    chosen = packages("amd64")
    assert {"linux-image-amd64", "grub-pc-bin", "grub-efi-amd64-bin"} <= chosen
    assert not chosen & {"linux-image-arm64", "grub-efi-arm64-bin"}


def test_ubuntu_maps_the_arm64_kernel_to_its_virtual_one():
    chosen = packages("arm64", "noble", "ubuntu")
    assert "linux-image-virtual" in chosen and "grub-efi-arm64-bin" in chosen
    assert not chosen & {"linux-image-arm64", "linux-image-amd64"}


def test_vm_brings_the_efi_layout_on_arm64():
    assert with_block_device_default(["vm"], "arm64")[-1] == "block-device-efi"
    script = ELEMENTS / "vm" / "environment.d" / "10-vm.bash"
    for arch, kind in (("arm64", "efi"), ("amd64", "mbr"), ("x86_64", "mbr")):
        done = subprocess.run(
            ["bash", "-c", f'source "{script}"; echo "$DIB_BLOCK_DEVICE"'],
            env={"ARCH": arch, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, check=True,
        )
        assert done.stdout.strip() == kind
