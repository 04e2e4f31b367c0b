"""The disk plan as part of every build, whichever elements are present.

diskimage-builder's disk-image-create sets up the block device itself, not through
an element; so does dib: when a layout is found (``config.find_layout``), the build

- plans the disk before any hook runs (a bad layout fails in seconds);
- exports what diskimage-builder's elements read: ``DIB_ROOT_LABEL``,
  ``DIB_ROOT_FSTYPE``, ``DIB_BOOT_LABEL``, ``DIB_MOUNTPOINTS``, and
  ``IMAGE_BLOCK_DEVICE`` / ``IMAGE_BLOCK_DEVICES`` naming stand-in devices
  (``/dev/dib/<name>``; nothing exists there: the disk is assembled from files later);
- writes ``/etc/fstab`` after root.d and again after block-device.d;
- puts ``shims/`` first on the PATH of hooks in the image (grub-probe, grub-mkconfig,
  grub-mkrelpath answer from the plan; grub-install records what it is asked);
- after finalise.d, performs the recorded grub-install requests (``grubinstall``).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from dib.blockdevice import config, grubinstall
from dib.blockdevice.disk import check_tools
from dib.blockdevice.layout import Partition, parse_layout_text
from dib.blockdevice.plan import Plan, make_plan, prepare_tree, save_plan
from dib.environment import CHROOT_SHIMS, SHIMS_VAR
from dib.phases import Phase

LOG = logging.getLogger("dib")
SHIMS = Path(__file__).resolve().parent / "shims"
SHIMS_DIR = Path(CHROOT_SHIMS).name  # in the merged hook tree, copied into the image with it
DEVICE_DIR = "/dev/dib"
DISK_TABLE = "disk.table"
DISK_DEVICE = "disk.device"
GRUB_FS_NAMES = {"ext2": "ext2", "ext3": "ext2", "ext4": "ext2", "vfat": "fat"}
PARTMAPS = {"mbr": "msdos", "gpt": "gpt"}


@dataclass(frozen=True)
class DiskStage:
    plan: Plan
    build_dir: Path
    arch: str

    @property
    def disk_device(self) -> str:
        return f"{DEVICE_DIR}/{self.plan.layout.image}"

    def device(self, part: Partition) -> str:
        return f"{DEVICE_DIR}/{part.name}"

    def environment(self) -> Dict[str, str]:
        layout = self.plan.layout
        root_fs = layout.root.filesystem
        boot = next((p for p in layout.mounted() if p.mount_point == "/boot"), None)
        devices = [(layout.image, self.disk_device)]
        devices += [(p.name, self.device(p)) for p in layout.partitions]
        return {
            "DIB_ROOT_LABEL": self.plan.root_identity.label,
            "DIB_ROOT_FSTYPE": root_fs.type if root_fs else "",
            "DIB_BOOT_LABEL": self.plan.identity(boot).label if boot else "",
            "DIB_MOUNTPOINTS": "|".join(p.mount_point or "" for p in layout.mounted()),
            "IMAGE_BLOCK_DEVICE": self.disk_device,
            "IMAGE_BLOCK_DEVICES": " ".join(f"[{name}]={dev}" for name, dev in devices),
            SHIMS_VAR: "1",  # install_shims put them into the hook tree
        }

    def disk_table(self) -> str:
        """What the grub-probe shim reads: one line per mounted filesystem, parents first
        (the columns are described in shims/grub-probe)."""
        layout = self.plan.layout
        numbers = {p.name: index + 1 for index, p in enumerate(layout.partitions)}
        lines = []
        for part in layout.mounted():
            fs = part.filesystem
            assert fs is not None
            ident = self.plan.identity(part)
            fields = [
                part.mount_point or "/",
                f"/dev/disk/by-uuid/{ident.uuid}",
                GRUB_FS_NAMES.get(fs.type, fs.type),
                ident.uuid,
                ident.label,
                PARTMAPS[layout.label],
                str(numbers[part.name]),
                self.device(part),
            ]
            lines.append(" ".join(fields))
        return "\n".join(lines) + "\n"

    def install_shims(self, hooks_root: Path) -> Path:
        dest = hooks_root / SHIMS_DIR
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(SHIMS, dest)
        (dest / DISK_TABLE).write_text(self.disk_table())
        (dest / DISK_DEVICE).write_text(self.disk_device + "\n")
        return dest

    def after_phase(self, phase: Phase, root: Path) -> None:
        if phase in (Phase.ROOT, Phase.BLOCK_DEVICE):
            prepare_tree(self.plan, root)
            LOG.info("block-device: /etc/fstab written from the plan (after %s)", phase.dirname)
        elif phase is Phase.FINALISE:
            grubinstall.perform(root, self.build_dir, self.plan, self.arch, self.disk_device)


def prepare(
    env: Mapping[str, str],
    element_dirs: Sequence[Path],
    arch: str,
    build_dir: Path,
    bundled_elements: Path,
    disk_output: bool = True,
) -> Optional[DiskStage]:
    """Plan the build's disk if it has a layout; None means a bare filesystem.
    ``disk_output``: a disk image will be written, so its host tools must be there."""
    source = config.find_layout(env, element_dirs, arch, bundled_elements)
    if source is None:
        return None
    plan = make_plan(parse_layout_text(source.text, source.origin), source.text, source.origin)
    if disk_output:
        check_tools(plan.layout)
    save_plan(plan, build_dir)
    parts: List[str] = []
    for part in plan.layout.partitions:
        fs = part.filesystem
        parts.append(f"{part.name}({fs.type if fs else 'raw'} {part.mount_point or '-'})")
    LOG.info("block-device: layout %s: %s table, %s", source.origin, plan.layout.label,
             ", ".join(parts))
    return DiskStage(plan, build_dir, arch)
