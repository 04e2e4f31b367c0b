"""Take a machine's own identity out of an installed tree before it is cached.

Maintainer scripts make per-machine material while packages install: systemd's postinst
writes /etc/machine-id, openssh-server's makes host keys, systemd saves a random seed. A
tree cached with them would hand the same identity to every image built from it, so the
tree is scrubbed where it is stored, and the image's first boot makes them as on any Debian
cloud image: systemd generates a machine-id for an empty /etc/machine-id, D-Bus follows it,
and a oneshot unit written here runs ``ssh-keygen -A`` before sshd when the keys are
missing. Only regular files are touched, and never through a symbolic link: the tree is
the image's, and a link in it may point anywhere on the build machine.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import List, Optional

LOG = logging.getLogger("dib")

MACHINE_ID = "etc/machine-id"
UNSET_MACHINE_IDS = ("", "uninitialized")
REMOVED = (
    "var/lib/dbus/machine-id",  # D-Bus's own copy (a link to /etc/machine-id is kept)
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
    "var/lib/urandom/random-seed",
    "etc/udev/rules.d/70-persistent-net.rules",
    "etc/udev/rules.d/70-persistent-cd.rules",
)
SSH_DIR = "etc/ssh"
SSH_HOST_KEY = re.compile(r"ssh_host_[A-Za-z0-9]+_key(\.pub)?")
SYSTEMD = ("lib/systemd/systemd", "usr/lib/systemd/systemd")
KEYGEN_UNIT = "dib-ssh-host-keys.service"
KEYGEN_UNIT_TEXT = """\
# Written by dib when it cached this image's installed tree without its ssh host keys:
# each machine booted from the image makes its own.
[Unit]
Description=Generate the ssh host keys this machine does not have yet
Before=ssh.service sshd.service ssh.socket
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


def _no_links_below(root: Path, relative: str) -> Optional[Path]:
    """``root/relative`` when no component under ``root`` is a symbolic link, else None."""
    path = root
    for part in Path(relative).parts:
        path = path / part
        try:
            if stat.S_ISLNK(path.lstat().st_mode):
                return None
        except FileNotFoundError:
            return root / relative  # the rest does not exist: no link to follow
    return path


def _regular(root: Path, relative: str) -> Optional[Path]:
    path = _no_links_below(root, relative)
    if path is None:
        return None
    try:
        return path if stat.S_ISREG(path.lstat().st_mode) else None
    except FileNotFoundError:
        return None


def _empty_machine_id(root: Path) -> List[str]:
    path = _regular(root, MACHINE_ID)
    if path is None:
        return []
    with path.open("rb") as handle:
        current = handle.read(64).strip().decode("ascii", "replace")
    if current in UNSET_MACHINE_IDS:
        return []
    os.truncate(path, 0)
    return [MACHINE_ID]


def _remove(root: Path, relative: str) -> List[str]:
    path = _regular(root, relative)
    if path is None:
        return []
    path.unlink()
    return [relative]


def _ssh_host_keys(root: Path) -> List[str]:
    directory = _no_links_below(root, SSH_DIR)
    if directory is None or not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        if SSH_HOST_KEY.fullmatch(entry.name) and stat.S_ISREG(entry.lstat().st_mode):
            entry.unlink()
            removed.append(f"{SSH_DIR}/{entry.name}")
    return removed


def _has_systemd(root: Path) -> bool:
    return any(os.path.lexists(root / path) for path in SYSTEMD)


def install_keygen_unit(root: Path) -> bool:
    """The unit that makes missing ssh host keys at boot, enabled; False without systemd
    (or where a link in the tree's /etc would carry the write elsewhere)."""
    units = _no_links_below(root, "etc/systemd/system/multi-user.target.wants")
    if units is None or not _has_systemd(root):
        return False
    units.mkdir(parents=True, exist_ok=True)
    unit = units.parent / KEYGEN_UNIT
    if os.path.lexists(unit):
        unit.unlink()
    unit.write_text(KEYGEN_UNIT_TEXT)
    unit.chmod(0o644)
    link = units / KEYGEN_UNIT
    if os.path.lexists(link):
        link.unlink()
    link.symlink_to(f"../{KEYGEN_UNIT}")
    return True


def scrub_identity(root: Path) -> List[str]:
    """Remove the per-machine material from ``root``; the paths it changed, relative."""
    changed = _empty_machine_id(root)
    for relative in REMOVED:
        changed += _remove(root, relative)
    keys = _ssh_host_keys(root)
    changed += keys
    if any(not key.endswith(".pub") for key in keys):
        if install_keygen_unit(root):
            changed.append(f"etc/systemd/system/{KEYGEN_UNIT} (added)")
        else:
            LOG.warning("tree cache: ssh host keys removed and no systemd to make new ones "
                        "at boot: run ssh-keygen -A at first boot")
    return changed
