"""The plan of one build's disk: its layout plus each filesystem's UUID and label.

Made in extra-data.d, before any package is installed or any filesystem exists:
UUIDs are chosen here and handed to mkfs later, so that ``/etc/fstab``, GRUB's
config and the kernel command line can name the filesystems already.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Tuple

from dib.blockdevice.config import from_config
from dib.blockdevice.layout import (
    LABEL_LIMITS,
    ROOT_LABEL,
    Layout,
    Partition,
    parse_layout_text,
)
from dib.errors import ConfigError, DibError

PLAN_DIR = "block-device"
PLAN_FILE = "plan.json"
BOOTLOADER_FILE = "bootloader.json"
LAYOUTS_DIR = "layouts"  # in the merged hook tree, shipped by the vm element
FORMAT = 1


@dataclass(frozen=True)
class FsIdentity:
    """How fstab, GRUB and the kernel find a filesystem: ``UUID=<uuid>``."""

    uuid: str  # ext: 8-4-4-4-12 lower case; vfat: XXXX-XXXX upper case
    label: str

    @property
    def mkfs_uuid(self) -> str:
        """The form mkfs takes: as is for ext, the 8 hex digits for vfat's volume id."""
        return self.uuid.replace("-", "") if len(self.uuid) == 9 else self.uuid


@dataclass(frozen=True)
class Plan:
    layout: Layout
    source: str  # the layout YAML as read, re-parsed when the plan is loaded
    origin: str
    identities: Mapping[str, FsIdentity]  # partition name -> identity

    def identity(self, part: Partition) -> FsIdentity:
        return self.identities[part.name]

    @property
    def root_identity(self) -> FsIdentity:
        return self.identity(self.layout.root)

    def holder(self, path: str) -> Partition:
        """The partition whose filesystem holds ``path`` of the running system."""
        best = self.layout.root
        for part in self.layout.mounted():
            mount = part.mount_point or "/"
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                best = part
        return best

    def path_on_filesystem(self, path: str) -> str:
        """``path`` as seen from the root of the filesystem that holds it (what GRUB needs)."""
        mount = self.holder(path).mount_point or "/"
        relative = path[len(mount) :] if mount != "/" else path
        return "/" + relative.lstrip("/")


def new_identity(part: Partition) -> FsIdentity:
    fs = part.filesystem
    assert fs is not None
    default_label = ROOT_LABEL if fs.mount_point == "/" else part.name
    label = fs.label or default_label[: LABEL_LIMITS[fs.type]]
    if fs.type == "vfat":
        serial = secrets.token_hex(4).upper()
        return FsIdentity(f"{serial[:4]}-{serial[4:]}", label.upper())
    return FsIdentity(str(uuid.uuid4()), label)


def make_plan(layout: Layout, source: str, origin: str) -> Plan:
    identities = {p.name: new_identity(p) for p in layout.partitions if p.filesystem}
    return Plan(layout, source, origin, identities)


def fstab_text(plan: Plan) -> str:
    lines = ["# Written by dib from the block-device layout; filesystems are found by UUID."]
    for part in plan.layout.mounted():
        fs = part.filesystem
        assert fs is not None and fs.mount_point
        fstab = fs.fstab
        if fstab is None:
            continue
        lines.append(
            f"UUID={plan.identity(part).uuid}\t{fs.mount_point}\t{fs.type}\t"
            f"{fstab.options}\t{fstab.dump}\t{fstab.passno}"
        )
    return "\n".join(lines) + "\n"


def plan_dir(build_dir: Path) -> Path:
    return build_dir / PLAN_DIR


def save_plan(plan: Plan, build_dir: Path) -> Path:
    directory = plan_dir(build_dir)
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "format": FORMAT,
        "origin": plan.origin,
        "source": plan.source,
        "identities": {
            name: {"uuid": i.uuid, "label": i.label} for name, i in sorted(plan.identities.items())
        },
    }
    path = directory / PLAN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def has_plan(build_dir: Path) -> bool:
    return (plan_dir(build_dir) / PLAN_FILE).is_file()


def load_plan(build_dir: Path) -> Plan:
    path = plan_dir(build_dir) / PLAN_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DibError(f"cannot read the block-device plan {path}: {err}") from None
    layout = parse_layout_text(data["source"], data["origin"])
    identities = {
        name: FsIdentity(value["uuid"], value["label"])
        for name, value in data["identities"].items()
    }
    return Plan(layout, data["source"], data["origin"], identities)


def layout_source(env: Mapping[str, str], hooks_dir: Path) -> Tuple[str, str]:
    """The layout YAML and where it came from.

    ``DIB_BLOCK_DEVICE_CONFIG`` wins (YAML text as in diskimage-builder, or
    ``file://PATH``, or a path); else the ``DIB_BLOCK_DEVICE`` kind (mbr, gpt, efi)
    picks one of the layouts the vm element ships.
    """
    given = from_config(env.get("DIB_BLOCK_DEVICE_CONFIG", ""))
    if given is not None:
        return given.text, given.origin
    kind = env.get("DIB_BLOCK_DEVICE", "") or "mbr"
    path = hooks_dir / LAYOUTS_DIR / f"{kind}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (hooks_dir / LAYOUTS_DIR).glob("*.yaml"))
        raise ConfigError(
            f"DIB_BLOCK_DEVICE={kind}: no such layout (known: {', '.join(known) or 'none'}); "
            "or set DIB_BLOCK_DEVICE_CONFIG to a layout"
        )
    return path.read_text(encoding="utf-8"), f"{kind} ({path.name})"


def prepare_tree(plan: Plan, root: Path) -> List[Path]:
    """Write /etc/fstab and make every mount point; returns the paths written."""
    written = []
    for part in plan.layout.mounted():
        mount = root / (part.mount_point or "/").lstrip("/")
        mount.mkdir(parents=True, exist_ok=True)
    fstab = root / "etc" / "fstab"
    fstab.parent.mkdir(parents=True, exist_ok=True)
    fstab.write_text(fstab_text(plan))
    written.append(fstab)
    return written
