"""GRUB for a planned disk, made with the target's own GRUB tools (in the chroot).

Why the target's tools and not the build host's: the modules GRUB loads at boot
then match the GRUB installed in the image, any host distro works (Fedora names
them grub2-*, containers often have none), and nothing needs a device: only
``grub-mkimage`` runs, which writes a file. grub-install and grub-bios-setup are
not used at all (they insist on a block device); ``dib.blockdevice.disk`` writes boot.img and
core.img into the image file instead.

Both platforms share one ``/boot/grub/grub.cfg``. Each core image carries a small
embedded config that finds the filesystem holding /boot/grub by UUID and sets
the prefix, so nothing depends on disk numbering.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from dib.blockdevice.plan import BOOTLOADER_FILE, Plan, plan_dir
from dib.environment import CHROOT_TMPDIR
from dib.errors import ConfigError, DibError
from dib.run import run

LOG = logging.getLogger("dib")
GRUB_DIR = "/boot/grub"
MODULE_DIR = "/usr/lib/grub"
COMMON_MODULES = (
    "part_msdos",
    "part_gpt",
    "ext2",
    "fat",
    "search",
    "search_fs_uuid",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "gzio",
)
SAFE_CMDLINE = re.compile(r"^[A-Za-z0-9_.,:=/+@%-]*$")
# ttyS<n>: a PC UART (GRUB drives it as com<n>); ttyAMA<n>: the PL011 of arm64 machines
# such as qemu's virt, which GRUB reaches through the firmware's console instead.
SERIAL = re.compile(r"^(ttyS|ttyAMA)(\d+)(?:,(\d+)\S*)?$")
# The serial console the kernel command line names unless DIB_BOOTLOADER_SERIAL_CONSOLE
# says otherwise (as diskimage-builder's bootloader: ttyAMA0 on arm64).
DEFAULT_SERIAL = {"arm64": "ttyAMA0,115200"}
PC_SERIAL = "ttyS0,115200"


@dataclass(frozen=True)
class Platform:
    """One GRUB target: its module directory name, extra modules, where the image goes."""

    name: str
    modules: Tuple[str, ...]
    efi_binary: str = ""  # file name under EFI/BOOT on the ESP; empty for BIOS

    @property
    def is_efi(self) -> bool:
        return bool(self.efi_binary)


BIOS = Platform("i386-pc", ("biosdisk",))
EFI_X86_64 = Platform("x86_64-efi", ("efi_gop",), "BOOTX64.EFI")
EFI_ARM64 = Platform("arm64-efi", (), "BOOTAA64.EFI")
BIOS_ARCHES = ("amd64", "i386")
PLATFORMS = {p.name: p for p in (BIOS, EFI_X86_64, EFI_ARM64)}
GRUBENV_SIZE = 1024
EFI_BY_ARCH = {"amd64": EFI_X86_64, "arm64": EFI_ARM64}


@dataclass(frozen=True)
class BootSettings:
    """What the boot menu says: from DIB_GRUB_TIMEOUT, DIB_BOOTLOADER_* (as in DIB)."""

    timeout: int = 1
    serial_console: str = PC_SERIAL
    extra_cmdline: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], arch: str = "amd64") -> BootSettings:
        problems = []
        raw_timeout = env.get("DIB_GRUB_TIMEOUT", "1").strip() or "1"
        timeout = int(raw_timeout) if raw_timeout.isdigit() else -1
        if timeout < 0:
            problems.append(f"DIB_GRUB_TIMEOUT={raw_timeout!r} is not a number of seconds")
        default_serial = DEFAULT_SERIAL.get(arch, PC_SERIAL)
        serial = env.get("DIB_BOOTLOADER_SERIAL_CONSOLE", default_serial).strip()
        if serial and not SERIAL.match(serial):
            problems.append(
                f"DIB_BOOTLOADER_SERIAL_CONSOLE={serial!r} is not like {default_serial}"
            )
        extra = " ".join(env.get("DIB_BOOTLOADER_DEFAULT_CMDLINE", "").split())
        if not all(SAFE_CMDLINE.match(word) for word in extra.split()):
            problems.append(
                f"DIB_BOOTLOADER_DEFAULT_CMDLINE={extra!r}: only letters, digits and "
                "_ . , : = / + @ % - are allowed (it is written into grub.cfg)"
            )
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(max(timeout, 0), serial, extra)

    def serial_unit_speed(self) -> Optional[Tuple[int, int]]:
        """GRUB's ``serial --unit --speed`` for a PC UART; None otherwise (no serial
        console, or an arm64 PL011, which GRUB writes to through the UEFI console)."""
        match = SERIAL.match(self.serial_console)
        if not match or match.group(1) != "ttyS":
            return None
        return int(match.group(2)), int(match.group(3) or 115200)


def platforms(plan: Plan, arch: str) -> List[Platform]:
    """The GRUB platforms this layout can boot with: BIOS needs MBR or a BIOS boot
    partition, UEFI needs an ESP."""
    layout = plan.layout
    found = []
    if arch in BIOS_ARCHES and (layout.label == "mbr" or layout.bios_boot is not None):
        found.append(BIOS)
    if arch in EFI_BY_ARCH and layout.esp is not None:
        found.append(EFI_BY_ARCH[arch])
    if not found:
        raise ConfigError(
            f"the block-device layout gives GRUB nowhere to live on {arch}: use an MBR table, "
            "or add a BIOS boot partition (GPT type EF02) or an ESP (type EF00, vfat)"
        )
    return found


def find_kernel(root: Path, plan: Plan) -> Tuple[str, str]:
    """GRUB paths of the kernel and initramfs: the distro's stable symlinks when they stay
    on one filesystem (so kernel updates keep booting), else the newest versioned pair."""
    for kernel, initrd in (("/vmlinuz", "/initrd.img"), ("/boot/vmlinuz", "/boot/initrd.img")):
        if all(_same_filesystem_link(root, plan, path) for path in (kernel, initrd)):
            return plan.path_on_filesystem(kernel), plan.path_on_filesystem(initrd)
    versions = sorted(
        (p.name[len("vmlinuz-") :] for p in (root / "boot").glob("vmlinuz-*")),
        key=_version_key,
    )
    for version in reversed(versions):
        initrd = root / "boot" / f"initrd.img-{version}"
        if initrd.exists():
            return (
                plan.path_on_filesystem(f"/boot/vmlinuz-{version}"),
                plan.path_on_filesystem(f"/boot/initrd.img-{version}"),
            )
    raise DibError(
        "no kernel with an initramfs in the image (/boot/vmlinuz-* and /boot/initrd.img-*): "
        "the vm element installs one through package-installs; did it run?"
    )


def _version_key(version: str) -> List[object]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.-]", version)]


def _same_filesystem_link(root: Path, plan: Plan, path: str) -> bool:
    link = root / path.lstrip("/")
    if not link.exists():
        return False
    if not link.is_symlink():
        return True
    target = link.resolve()
    try:
        inside = "/" + str(target.relative_to(root.resolve()))
    except ValueError:
        return False  # an absolute link resolved against the build host
    return plan.holder(inside) == plan.holder(path)


def os_title(root: Path) -> str:
    release = root / "etc" / "os-release"
    if not release.exists():
        release = root / "usr" / "lib" / "os-release"
    with_name = re.compile(r'^PRETTY_NAME="?([^"\n]*)"?$', re.MULTILINE)
    match = with_name.search(release.read_text(errors="replace")) if release.exists() else None
    title = match.group(1) if match else "Linux"
    return re.sub(r"[^A-Za-z0-9 ._()/+-]", "", title) or "Linux"


def kernel_cmdline(plan: Plan, settings: BootSettings) -> str:
    words = [f"root=UUID={plan.root_identity.uuid}", "ro"]
    if settings.serial_console:
        # The last console= is /dev/console, where systemd and the boot marker write.
        words += ["console=tty0", f"console={settings.serial_console}"]
    if settings.extra_cmdline:
        words.append(settings.extra_cmdline)
    return " ".join(words)


def early_config(plan: Plan) -> str:
    """Embedded in each core image: find /boot/grub by filesystem UUID, then normal mode
    reads grub.cfg from there."""
    holder = plan.holder(GRUB_DIR)
    return (
        f"search --no-floppy --fs-uuid --set=root {plan.identity(holder).uuid}\n"
        f"set prefix=($root){plan.path_on_filesystem(GRUB_DIR)}\n"
    )


def grub_config(plan: Plan, settings: BootSettings, kernel: str, initrd: str, title: str) -> str:
    boot_holder = plan.holder("/boot")
    terminal = []
    unit_speed = settings.serial_unit_speed()
    if unit_speed:
        terminal = [
            f"serial --unit={unit_speed[0]} --speed={unit_speed[1]}",
            "terminal_input serial console",
            "terminal_output serial console",
        ]
    lines = [
        "# Written by dib's bootloader element from the block-device plan.",
        "set default=0",
        f"set timeout={settings.timeout}",
        *terminal,
        f"menuentry '{title}' --id dib-default {{",
        f"    search --no-floppy --fs-uuid --set=root {plan.identity(boot_holder).uuid}",
        "    echo 'Loading Linux ...'",
        f"    linux {kernel} {kernel_cmdline(plan, settings)}",
        "    echo 'Loading initial ramdisk ...'",
        f"    initrd {initrd}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _copy_modules(root: Path, platform: Platform) -> None:
    source = root / MODULE_DIR.lstrip("/") / platform.name
    if not (source / "moddep.lst").is_file():
        raise DibError(
            f"GRUB modules for {platform.name} are not in the image ({MODULE_DIR}/"
            f"{platform.name}): the bootloader element installs them via package-installs "
            f"({PACKAGES.get(platform.name, 'grub')})"
        )
    dest = root / GRUB_DIR.lstrip("/") / platform.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in sorted(source.iterdir()):
        if item.suffix in (".mod", ".lst", ".img") and item.is_file():
            shutil.copy2(item, dest / item.name)


# The Debian package that holds each platform's modules (named in error messages).
PACKAGES = {"i386-pc": "grub-pc-bin", "x86_64-efi": "grub-efi-amd64-bin",
            "arm64-efi": "grub-efi-arm64-bin"}


def _mkimage(root: Path, platform: Platform, output: str, early_cfg: str) -> None:
    if not (root / "usr" / "bin" / "grub-mkimage").exists():
        raise DibError(
            "grub-mkimage is not in the image: the bootloader element installs GRUB's "
            f"package for {platform.name} ({PACKAGES.get(platform.name, 'grub')}) "
            "through package-installs"
        )
    run(
        [
            "chroot",
            str(root),
            "grub-mkimage",
            "-O",
            platform.name,
            "-d",
            f"{MODULE_DIR}/{platform.name}",
            "-c",
            early_cfg,
            "-p",
            GRUB_DIR,
            "-o",
            output,
            *COMMON_MODULES,
            *platform.modules,
        ],
        tag=f"grub-mkimage {platform.name}",
        env={**os.environ, "TMPDIR": CHROOT_TMPDIR},  # runs in the chroot: the image's /tmp
        timeout=300,
    )


def install(root: Path, build_dir: Path, plan: Plan, arch: str, env: Mapping[str, str]) -> Path:
    """Config, modules and core images into the tree; returns bootloader.json for disk.py."""
    settings = BootSettings.from_env(env, arch)
    targets = platforms(plan, arch)
    kernel, initrd = find_kernel(root, plan)
    grub_dir = root / GRUB_DIR.lstrip("/")
    grub_dir.mkdir(parents=True, exist_ok=True)
    (grub_dir / "grub.cfg").write_text(grub_config(plan, settings, kernel, initrd, os_title(root)))
    LOG.info("GRUB config for kernel %s", kernel)
    return install_images(root, build_dir, plan, targets, {"kernel": kernel})


def install_images(
    root: Path,
    build_dir: Path,
    plan: Plan,
    targets: Sequence[Platform],
    extra: Optional[Mapping[str, object]] = None,
) -> Path:
    """Modules and core images for ``targets`` (grub.cfg is already in the tree); returns
    bootloader.json, which tells dib.blockdevice.disk what to write into the disk."""
    early = f"{GRUB_DIR}/dib-early.cfg"
    (root / early.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / early.lstrip("/")).write_text(early_config(plan))
    write_grubenv(root)
    record: Dict[str, object] = {"platforms": [p.name for p in targets], **(extra or {})}
    for platform in targets:
        _copy_modules(root, platform)
        if platform.is_efi:
            record["efi"] = _install_efi(root, plan, platform, early)
        else:
            record["bios"] = _install_bios(root, build_dir, platform, early)
    LOG.info("GRUB for %s", ", ".join(p.name for p in targets))
    path = plan_dir(build_dir) / BOOTLOADER_FILE
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def write_grubenv(root: Path) -> None:
    """An empty environment block, as grub-install leaves one (grub.cfg's save_env and
    load_env use it); kept if the image has one."""
    path = root / GRUB_DIR.lstrip("/") / "grubenv"
    if path.exists() or path.is_symlink():
        return
    header = b"# GRUB Environment Block\n"
    path.write_bytes(header + b"#" * (GRUBENV_SIZE - len(header)))


def _install_bios(root: Path, build_dir: Path, platform: Platform, early: str) -> Dict[str, str]:
    core_in_tree = f"{GRUB_DIR}/{platform.name}/core.img"
    _mkimage(root, platform, core_in_tree, early)
    keep = plan_dir(build_dir) / platform.name
    keep.mkdir(parents=True, exist_ok=True)
    boot_img = root / MODULE_DIR.lstrip("/") / platform.name / "boot.img"
    shutil.copyfile(boot_img, keep / "boot.img")
    shutil.copyfile(root / core_in_tree.lstrip("/"), keep / "core.img")
    return {"boot_img": str(keep / "boot.img"), "core_img": str(keep / "core.img")}


def _install_efi(root: Path, plan: Plan, platform: Platform, early: str) -> Dict[str, str]:
    esp = plan.layout.esp
    assert esp is not None and esp.mount_point
    binary = f"{esp.mount_point.rstrip('/')}/EFI/BOOT/{platform.efi_binary}"
    (root / binary.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    _mkimage(root, platform, binary, early)
    return {"binary": binary}


def load_record(build_dir: Path) -> Optional[Mapping[str, object]]:
    path = plan_dir(build_dir) / BOOTLOADER_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def describe(platform_names: Sequence[str]) -> str:
    names = {"i386-pc": "BIOS", "x86_64-efi": "UEFI", "arm64-efi": "UEFI (arm64)"}
    return ", ".join(names.get(n, n) for n in platform_names)
