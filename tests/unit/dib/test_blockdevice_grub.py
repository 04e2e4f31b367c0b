"""GRUB pieces: platforms per layout, kernel discovery, grub.cfg and the embedded config."""

import os
from pathlib import Path

import pytest

from dib.blockdevice.grub import (
    BIOS,
    EFI_X86_64,
    BootSettings,
    early_config,
    find_kernel,
    grub_config,
    kernel_cmdline,
    os_title,
    platforms,
)
from dib.blockdevice.layout import parse_layout_text
from dib.blockdevice.plan import make_plan
from dib.errors import ConfigError, DibError

LAYOUTS = Path(__file__).resolve().parents[3] / "elements" / "vm" / "layouts"


def plan_for(kind):
    text = (LAYOUTS / f"{kind}.yaml").read_text()
    return make_plan(parse_layout_text(text, kind), text, kind)


def test_platforms_follow_the_layout():
    assert platforms(plan_for("mbr"), "amd64") == [BIOS]
    assert platforms(plan_for("gpt"), "amd64") == [BIOS]
    assert platforms(plan_for("efi"), "amd64") == [BIOS, EFI_X86_64]
    assert [p.name for p in platforms(plan_for("efi"), "arm64")] == ["arm64-efi"]
    with pytest.raises(ConfigError, match="nowhere to live on arm64"):
        platforms(plan_for("mbr"), "arm64")


def test_gpt_without_bios_boot_or_esp_cannot_boot():
    text = (LAYOUTS / "gpt.yaml").read_text().replace("type: EF02", "type: '8300'")
    plan = make_plan(parse_layout_text(text, "t"), text, "t")
    with pytest.raises(ConfigError, match="BIOS boot partition"):
        platforms(plan, "amd64")


def make_tree(root: Path, debian_links=True, versions=("6.1.0-9-amd64",)):
    (root / "boot").mkdir(parents=True)
    for version in versions:
        (root / "boot" / f"vmlinuz-{version}").write_text("k")
        (root / "boot" / f"initrd.img-{version}").write_text("i")
    if debian_links:
        os.symlink(f"boot/vmlinuz-{versions[-1]}", root / "vmlinuz")
        os.symlink(f"boot/initrd.img-{versions[-1]}", root / "initrd.img")


def test_kernel_via_the_distro_links(tmp_path):
    make_tree(tmp_path)
    assert find_kernel(tmp_path, plan_for("mbr")) == ("/vmlinuz", "/initrd.img")


def test_kernel_newest_version_without_links(tmp_path):
    make_tree(tmp_path, debian_links=False, versions=("6.1.0-9-amd64", "6.1.0-10-amd64"))
    assert find_kernel(tmp_path, plan_for("mbr")) == (
        "/boot/vmlinuz-6.1.0-10-amd64",
        "/boot/initrd.img-6.1.0-10-amd64",
    )


def test_links_are_not_followed_across_filesystems(tmp_path):
    make_tree(tmp_path)
    text = """\
- local_loop: {name: image0}
- partitioning:
    base: image0
    label: mbr
    partitions:
      - {name: boot, size: 256MiB, mkfs: {type: ext4, mount: {mount_point: /boot}}}
      - {name: root, mkfs: {type: ext4, mount: {mount_point: /}}}
"""
    plan = make_plan(parse_layout_text(text, "t"), text, "t")
    # /vmlinuz is on / but points into /boot: GRUB reads /boot's filesystem directly.
    assert find_kernel(tmp_path, plan) == ("/vmlinuz-6.1.0-9-amd64", "/initrd.img-6.1.0-9-amd64")


def test_no_kernel_is_a_clear_error(tmp_path):
    (tmp_path / "boot").mkdir()
    with pytest.raises(DibError, match="no kernel with an initramfs"):
        find_kernel(tmp_path, plan_for("mbr"))


def test_grub_config_and_cmdline():
    plan = plan_for("efi")
    settings = BootSettings(timeout=2, extra_cmdline="quiet")
    text = grub_config(plan, settings, "/vmlinuz", "/initrd.img", "Debian GNU/Linux 12")
    uuid = plan.root_identity.uuid
    assert "set timeout=2" in text
    assert "serial --unit=0 --speed=115200" in text
    assert f"search --no-floppy --fs-uuid --set=root {uuid}" in text
    assert f"linux /vmlinuz root=UUID={uuid} ro console=tty0 console=ttyS0,115200 quiet" in text
    assert "initrd /initrd.img" in text
    assert early_config(plan) == (
        f"search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"
    )


def test_no_serial_console():
    plan = plan_for("mbr")
    settings = BootSettings(serial_console="")
    assert "console=" not in kernel_cmdline(plan, settings)
    assert "serial" not in grub_config(plan, settings, "/vmlinuz", "/initrd.img", "X")


def test_boot_settings_from_env():
    assert BootSettings.from_env({}) == BootSettings()
    got = BootSettings.from_env(
        {
            "DIB_GRUB_TIMEOUT": "5",
            "DIB_BOOTLOADER_SERIAL_CONSOLE": "ttyS1,9600",
            "DIB_BOOTLOADER_DEFAULT_CMDLINE": "  nofb   nomodeset ",
        }
    )
    assert got == BootSettings(5, "ttyS1,9600", "nofb nomodeset")
    assert got.serial_unit_speed() == (1, 9600)
    with pytest.raises(ConfigError) as caught:
        BootSettings.from_env(
            {
                "DIB_GRUB_TIMEOUT": "soon",
                "DIB_BOOTLOADER_SERIAL_CONSOLE": "hvc0",
                "DIB_BOOTLOADER_DEFAULT_CMDLINE": "a'; reboot",
            }
        )
    message = str(caught.value)
    assert "DIB_GRUB_TIMEOUT" in message and "SERIAL_CONSOLE" in message
    assert "DEFAULT_CMDLINE" in message


def test_os_title(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    assert os_title(tmp_path) == "Debian GNU/Linux 12 (bookworm)"
    (tmp_path / "etc" / "os-release").write_text('PRETTY_NAME="Evil\' title {x}"\n')
    assert os_title(tmp_path) == "Evil title x"


def test_arm64_serial_console_is_the_pl011_and_grub_uses_the_firmware_console():
    settings = BootSettings.from_env({}, "arm64")
    assert settings.serial_console == "ttyAMA0,115200"
    assert settings.serial_unit_speed() is None  # no PC UART for GRUB's serial command
    plan = plan_for("efi")
    text = grub_config(plan, settings, "/vmlinuz", "/initrd.img", "Debian GNU/Linux 12")
    assert "serial" not in text.replace("console=ttyAMA0", "")
    assert "terminal_output" not in text
    assert "console=tty0 console=ttyAMA0,115200" in kernel_cmdline(plan, settings)
    assert BootSettings.from_env({}, "amd64").serial_console == "ttyS0,115200"
    chosen = BootSettings.from_env({"DIB_BOOTLOADER_SERIAL_CONSOLE": "ttyAMA1,9600"}, "arm64")
    assert chosen.serial_console == "ttyAMA1,9600" and chosen.serial_unit_speed() is None
    with pytest.raises(ConfigError, match="is not like ttyAMA0,115200"):
        BootSettings.from_env({"DIB_BOOTLOADER_SERIAL_CONSOLE": "hvc0"}, "arm64")


def test_arm64_boots_from_the_removable_efi_path():
    from dib.blockdevice.grub import EFI_ARM64, PACKAGES, describe

    assert platforms(plan_for("efi"), "arm64") == [EFI_ARM64]
    assert EFI_ARM64.efi_binary == "BOOTAA64.EFI" and EFI_ARM64.name == "arm64-efi"
    assert PACKAGES["arm64-efi"] == "grub-efi-arm64-bin"
    assert describe(["arm64-efi"]) == "UEFI (arm64)"
