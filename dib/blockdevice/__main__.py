"""``python -m dib.blockdevice``: the hooks' entry points, and a layout checker for users.

- ``bootloader`` (bootloader's pre-finalise.d): GRUB config and core images.
- ``validate``, ``plan``, ``fstab``: the steps dib's core now runs itself
  (``dib.blockdevice.stage``), kept for hooks of older elements.
- ``check LAYOUT [--disk-size SIZE]``: validate a layout file and print where each
  partition would go.

Hooks take their inputs from the build environment (TARGET_ROOT, TMP_BUILD_DIR,
TMP_HOOKS_PATH, ARCH, DIB_BLOCK_DEVICE, DIB_BLOCK_DEVICE_CONFIG, DIB_GRUB_*,
DIB_BOOTLOADER_*).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Mapping, Optional

from dib.blockdevice import geometry, grub
from dib.blockdevice.config import read_layout
from dib.blockdevice.disk import check_tools
from dib.blockdevice.layout import parse_bytes, parse_layout_text
from dib.blockdevice.plan import (
    has_plan,
    layout_source,
    load_plan,
    make_plan,
    prepare_tree,
    save_plan,
)
from dib.errors import DibError

LOG = logging.getLogger("dib")


def _required(env: Mapping[str, str], name: str) -> Path:
    value = env.get(name, "")
    if not value:
        raise DibError(f"{name} is not set: run this from a dib build hook")
    return Path(value)


def do_validate(env: Mapping[str, str]) -> None:
    text, origin = layout_source(env, _required(env, "TMP_HOOKS_PATH"))
    plan = make_plan(parse_layout_text(text, origin), text, origin)
    check_tools(plan.layout)
    boots = grub.describe([p.name for p in grub.platforms(plan, env.get("ARCH", "amd64"))])
    print(f"block-device: layout {origin} is valid; boots with {boots}")


def do_plan(env: Mapping[str, str]) -> None:
    root, build = _required(env, "TARGET_ROOT"), _required(env, "TMP_BUILD_DIR")
    text, origin = layout_source(env, _required(env, "TMP_HOOKS_PATH"))
    plan = make_plan(parse_layout_text(text, origin), text, origin)
    save_plan(plan, build)
    prepare_tree(plan, root)
    parts = ", ".join(
        f"{p.name}({p.filesystem.type if p.filesystem else 'raw'} {p.mount_point or '-'} {p.size})"
        for p in plan.layout.partitions
    )
    print(f"block-device: layout {origin}: {plan.layout.label} table, {parts}")
    print(f"block-device: root filesystem UUID={plan.root_identity.uuid}; /etc/fstab written")


def do_fstab(env: Mapping[str, str]) -> None:
    root, build = _required(env, "TARGET_ROOT"), _required(env, "TMP_BUILD_DIR")
    prepare_tree(load_plan(build), root)
    print("block-device: /etc/fstab written from the plan")


def do_bootloader(env: Mapping[str, str]) -> None:
    root, build = _required(env, "TARGET_ROOT"), _required(env, "TMP_BUILD_DIR")
    if not has_plan(build):
        raise DibError(
            "no block-device plan: the bootloader element needs a layout (add the vm element)"
        )
    record = grub.install(root, build, load_plan(build), env.get("ARCH", "amd64"), env)
    print(f"bootloader: GRUB installed into the tree; {record.name} written")


def do_check(path: str, disk_size: Optional[str]) -> None:
    layout = parse_layout_text(read_layout(Path(path), "check"), path)
    size = parse_bytes(disk_size) if disk_size else geometry.minimal_disk_size(layout, {})
    print(f"{path}: valid {layout.label} layout; on a {geometry.mib(size)} disk:")
    for extent in geometry.place(layout, size):
        part = layout.partition(extent.name)
        fs = part.filesystem
        what = f"{fs.type} {fs.mount_point or ''}" if fs else "no filesystem"
        print(
            f"  {extent.number}: {extent.name:<12} start {extent.start_sector:>10} "
            f"sectors {extent.sectors:>10} ({geometry.mib(extent.size)})  {what}"
        )


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dib.blockdevice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="root.d: check the build's layout early")
    sub.add_parser("plan", help="extra-data.d: plan the disk, write fstab")
    sub.add_parser("fstab", help="block-device.d: write fstab from the plan again")
    sub.add_parser("bootloader", help="pre-finalise.d: GRUB config and core images")
    check = sub.add_parser("check", help="validate a layout file and show its partitions")
    check.add_argument("layout")
    check.add_argument("--disk-size", help="e.g. 4GiB (default: the smallest that fits)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        if args.command == "validate":
            do_validate(os.environ)
        elif args.command == "plan":
            do_plan(os.environ)
        elif args.command == "fstab":
            do_fstab(os.environ)
        elif args.command == "bootloader":
            do_bootloader(os.environ)
        else:
            do_check(args.layout, args.disk_size)
    except (DibError, OSError) as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
