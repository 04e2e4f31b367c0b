"""Chroot plumbing: /proc, /sys, /dev and resolv.conf for in-chroot phases, always released."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, List

from dib.errors import DibError
from dib.run import capture

LOG = logging.getLogger("dib")

# (source, relative mount point, mount arguments)
CHROOT_MOUNTS = (
    ("proc", "proc", ["-t", "proc"]),
    ("sysfs", "sys", ["-t", "sysfs"]),
    ("/dev", "dev", ["--bind"]),
    ("/dev/pts", "dev/pts", ["--bind"]),
)


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts_under(path: Path) -> List[Path]:
    """Mount points at or below ``path``, deepest first."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = _unescape(line.split()[4])
            if point == base or point.startswith(base.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount(point: Path) -> None:
    """Unmount ``point``; fall back to a lazy unmount when something still holds it."""
    try:
        capture(["umount", str(point)], timeout=60)
    except DibError as err:
        LOG.warning("umount %s failed (%s); detaching lazily", point, err)
        capture(["umount", "-l", str(point)], timeout=60)


def release_all(path: Path) -> None:
    """Unmount everything at or below ``path``; raise if anything stays mounted."""
    for point in mounts_under(path):
        with contextlib.suppress(DibError):
            unmount(point)
    left = mounts_under(path)
    if left:
        raise DibError(f"could not unmount {', '.join(map(str, left))}")


def mount(source: str, target: Path, args: List[str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    capture(["mount", *args, source, str(target)], timeout=60)


@contextlib.contextmanager
def resolv_conf(root: Path) -> Iterator[None]:
    """Give the chroot the host's resolver; put back what the image had afterwards."""
    target = root / "etc" / "resolv.conf"
    saved = root / "etc" / "resolv.conf.dib-orig"
    had_original = target.exists() or target.is_symlink()
    if had_original:
        os.replace(target, saved)
    try:
        if os.path.exists("/etc/resolv.conf"):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile("/etc/resolv.conf", target)
        yield
    finally:
        if target.exists() or target.is_symlink():
            target.unlink()
        if had_original:
            os.replace(saved, target)


@contextlib.contextmanager
def chroot_environment(root: Path) -> Iterator[None]:
    """Mount what in-chroot scripts need; release it on success, failure and signals."""
    with contextlib.ExitStack() as stack:
        # Registered first so a failure half-way through mounting still unmounts.
        stack.callback(release_all, root / "dev")
        stack.callback(release_all, root / "sys")
        stack.callback(release_all, root / "proc")
        for source, relative, args in CHROOT_MOUNTS:
            if source.startswith("/") and not os.path.exists(source):
                continue
            mount(source, root / relative, args)
        stack.enter_context(resolv_conf(root))
        yield
