"""grub-install requests made inside the image, performed by dib on the disk plan.

diskimage-builder's ``bootloader`` element runs ``grub-install ... $IMAGE_BLOCK_DEVICE``
in finalise.d. A dib build has no block device then, so dib's stand-in grub-install
(``shims/grub-install``) only appends its arguments to :data:`REQUESTS` in the image;
after finalise.d, dib reads them and does what each asks with its own GRUB pieces
(``grub.install_images``): a BIOS core image for the MBR gap or the BIOS boot
partition, an EFI binary on the ESP. ``dib.blockdevice.disk`` writes them into the disk file.

An EFI install always goes to the removable-media path (``EFI/BOOT/BOOTX64.EFI``;
``BOOTAA64.EFI`` on arm64, where a grub-install without ``--target``, as
diskimage-builder's bootloader runs it there, means ``arm64-efi``): there is no
firmware whose boot entries could be set, and it is what a new VM boots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from dib.blockdevice import grub
from dib.blockdevice.plan import Plan
from dib.errors import ConfigError

LOG = logging.getLogger("dib")
REQUESTS = "/tmp/dib-grub-install.requests"  # inside the image; shims/grub-install appends
# Options that change nothing for a disk assembled from files.
IGNORED_FLAGS = {"--force", "--no-nvram", "--removable", "--recheck", "--no-floppy", "-v",
                 "--verbose", "--compress=no", "--no-bootsector", "--uefi-secure-boot",
                 "--no-uefi-secure-boot", "--skip-fs-probe"}
IGNORED_VALUES = {"--modules", "--boot-directory", "--efi-directory", "--bootloader-id",
                  "--directory", "-d", "--install-modules", "--themes", "--fonts", "--locales",
                  "--core-compress", "--disk-module", "--label-font", "--label-color",
                  "--label-bgcolor", "--product-version", "--compress"}


class GrubInstallError(ConfigError):
    """A recorded grub-install request that dib cannot perform on this disk."""


@dataclass(frozen=True)
class Request:
    target: str  # a GRUB platform such as i386-pc; "" means the architecture's default
    device: str
    words: Tuple[str, ...]

    def describe(self) -> str:
        return "grub-install " + " ".join(self.words)


def parse_request(words: Sequence[str]) -> Request:
    """One grub-install command line (without the program name)."""
    target, devices = "", []
    index = 0
    while index < len(words):
        word = words[index]
        name, has_value, value = word.partition("=")
        if name == "--target":
            if not has_value:
                index += 1
                value = words[index] if index < len(words) else ""
            target = value
        elif name in IGNORED_VALUES:
            index += 0 if has_value else 1
        elif word in IGNORED_FLAGS or name in IGNORED_FLAGS:
            pass
        elif word.startswith("-"):
            raise GrubInstallError(
                f"grub-install {' '.join(words)}: option {word} is not supported by dib"
            )
        else:
            devices.append(word)
        index += 1
    if len(devices) > 1:
        raise GrubInstallError(f"grub-install {' '.join(words)}: more than one device given")
    return Request(target, devices[0] if devices else "", tuple(words))


def read_requests(root: Path) -> List[Request]:
    """The requests recorded in the image, oldest first; the record is removed."""
    path = root / REQUESTS.lstrip("/")
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    path.unlink()
    return [parse_request(line.split("\t")[1:]) for line in lines if line.strip()]


def platform_for(request: Request, arch: str) -> grub.Platform:
    if not request.target:
        default = grub.BIOS if arch in grub.BIOS_ARCHES else grub.EFI_BY_ARCH.get(arch)
        if default is None:
            raise GrubInstallError(f"{request.describe()}: no GRUB platform known for {arch}")
        return default
    platform = grub.PLATFORMS.get(request.target)
    if platform is None:
        known = ", ".join(sorted(grub.PLATFORMS))
        raise GrubInstallError(
            f"{request.describe()}: target {request.target} is not supported by dib ({known})"
        )
    return platform


def plan_targets(
    requests: Sequence[Request], plan: Plan, arch: str, disk_device: str
) -> List[grub.Platform]:
    """The platforms to install, each once, checked against what the layout can boot."""
    possible = {p.name for p in grub.platforms(plan, arch)} if requests else set()
    chosen: List[grub.Platform] = []
    for request in requests:
        platform = platform_for(request, arch)
        if not platform.is_efi and request.device and request.device != disk_device:
            raise GrubInstallError(
                f"{request.describe()}: dib installs BIOS boot code to the whole disk "
                f"({disk_device}) only"
            )
        if platform.name not in possible:
            raise GrubInstallError(
                f"{request.describe()}: the block-device layout has no place for "
                f"{platform.name} (BIOS needs MBR or a BIOS boot partition, UEFI an ESP)"
            )
        if platform not in chosen:
            chosen.append(platform)
    return chosen


def perform(root: Path, build_dir: Path, plan: Plan, arch: str, disk_device: str) -> Optional[Path]:
    """Carry out the recorded requests; returns bootloader.json, None when there were none."""
    requests = read_requests(root)
    if not requests:
        return None
    for request in requests:
        LOG.info("performing the recorded %s", request.describe())
    targets = plan_targets(requests, plan, arch, disk_device)
    return grub.install_images(root, build_dir, plan, targets, {"installed_by": "grub-install"})
