"""No build-host identity in an image: what every machine booted from it would share.

An image must not carry the build machine's (or build container's) identity:
``/etc/machine-id`` must be absent, empty or ``uninitialized`` (systemd makes one at
first boot), D-Bus's ``/var/lib/dbus/machine-id`` no copy of its own, ``/etc/ssh`` no
``ssh_host_*_key`` (generated at first boot), ``/etc/hostname`` not the name of the
machine that built it nor a container id, and grub.cfg's ``root=`` must name the image's
own root filesystem (grub-mkconfig run on a build machine can take the build machine's
root device). Read from a tar image in one pass with :mod:`tarfile`, from a disk image's
root filesystem through ``debugfs``; :func:`check_identity` judges the facts.
"""

from __future__ import annotations

import posixpath
import re
import socket
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .checks import Found
from .diskimage import debugfs_read
from .limits import KIB, Deadline, VerifyError
from .tools import run_tool, tool_error

NAME = "identity"
LEAK = "image leaks build-host identity: "
FILE_LIMIT = 64 * KIB  # bytes read of each identity file (grub.cfg is the largest)
MACHINE_ID = "etc/machine-id"
DBUS_MACHINE_ID = "var/lib/dbus/machine-id"
HOSTNAME = "etc/hostname"
GRUB_CFG = "boot/grub/grub.cfg"
FILES = (MACHINE_ID, DBUS_MACHINE_ID, HOSTNAME, GRUB_CFG)
SSH_DIR = "etc/ssh"
SSH_HOST_KEY = re.compile(r"ssh_host_[A-Za-z0-9]+_key")
UNSET_MACHINE_IDS = ("", "uninitialized")
CONTAINER_ID = re.compile(r"[0-9a-f]{12}")  # a Docker container's default host name
KERNEL_ROOT = re.compile(r"^\s*linux(?:efi|16)?\s+\S+.*?\sroot=(\S+)", re.MULTILINE)
BUILD_DEVICES = re.compile(r"/dev/(?:loop|mapper/|nbd|dm-)")
SHOWN = 3


@dataclass
class IdentityFacts:
    """What an image holds of an identity; None for a file that is absent."""

    files: dict[str, bytes | None] = field(default_factory=dict)
    ssh_keys: list[str] = field(default_factory=list)
    root_uuid: str | None = None  # of the root filesystem (disk images only)
    root_label: str | None = None
    symlinks: set[str] = field(default_factory=set)  # identity files that are links

    def text(self, name: str) -> str | None:
        data = self.files.get(name)
        return None if data is None else data.decode("utf-8", "replace")


def build_host_names() -> tuple[str, ...]:
    """The names an image must not have: this machine's (the orchestrator's); a build
    container's own name is a container id, recognised by its shape."""
    name = socket.gethostname().strip()
    return tuple(dict.fromkeys(n for n in (name, name.split(".")[0]) if n))


def check_identity(facts: IdentityFacts, build_hosts: Iterable[str]) -> Found:
    leaks, notes = [], []
    for judge in (_machine_id, _dbus_machine_id, _ssh_keys):
        leak, note = judge(facts)
        leaks += [leak] if leak else []
        notes += [note] if note else []
    leak, note = _hostname(facts, tuple(build_hosts))
    leaks += [leak] if leak else []
    notes += [note] if note else []
    leak, note = _grub_root(facts)
    leaks += [leak] if leak else []
    notes += [note] if note else []
    if leaks:
        return Found(NAME, False, LEAK + "; ".join(leaks))
    return Found(NAME, True, "; ".join(notes))


def _machine_id(facts: IdentityFacts) -> tuple[str, str]:
    text = facts.text(MACHINE_ID)
    if text is None:
        return "", "no /etc/machine-id"
    value = text.strip()
    if value in UNSET_MACHINE_IDS:
        return "", f"/etc/machine-id {value or 'empty'}"
    return f"/etc/machine-id: set at build time ({value[:8]}...)", ""


def _dbus_machine_id(facts: IdentityFacts) -> tuple[str, str]:
    text = facts.text(DBUS_MACHINE_ID)
    if text is None or DBUS_MACHINE_ID in facts.symlinks or not text.strip():
        return "", ""
    return f"/var/lib/dbus/machine-id: set at build time ({text.strip()[:8]}...)", ""


def _ssh_keys(facts: IdentityFacts) -> tuple[str, str]:
    if not facts.ssh_keys:
        return "", "no ssh host keys"
    keys = sorted(facts.ssh_keys)
    shown = ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")
    return f"/etc/ssh/ssh_host_*_key: in the image ({shown})", ""


def _hostname(facts: IdentityFacts, build_hosts: tuple[str, ...]) -> tuple[str, str]:
    text = facts.text(HOSTNAME)
    if text is None:
        return "", "no /etc/hostname"
    name = (text.strip().splitlines() or [""])[0].strip()
    if name and name in build_hosts:
        return f"/etc/hostname: the build machine's name ({name})", ""
    if CONTAINER_ID.fullmatch(name):
        return f"/etc/hostname: {name}, a build container's id", ""
    return "", f"hostname {name or '(empty)'}"


def _grub_root(facts: IdentityFacts) -> tuple[str, str]:
    text = facts.text(GRUB_CFG)
    if text is None:
        return "", "no /boot/grub/grub.cfg"
    roots = list(dict.fromkeys(KERNEL_ROOT.findall(text)))
    if not roots:
        return "", "grub.cfg boots no kernel with root="
    for root in roots:
        leak = _foreign_root(root, facts)
        if leak:
            return f"/boot/grub/grub.cfg: {leak}", ""
    return "", f"grub.cfg {_root_note(roots[0], facts)}"


def _foreign_root(root: str, facts: IdentityFacts) -> str:
    """Why ``root=`` names something other than the image's root filesystem, or ""."""
    if BUILD_DEVICES.match(root):
        return f"root={root} is a build machine's device"
    kind, _, value = root.partition("=")
    if kind == "UUID" and facts.root_uuid and value.lower() != facts.root_uuid.lower():
        return f"root={root} is not the image's root filesystem (UUID={facts.root_uuid})"
    if kind == "LABEL" and facts.root_label is not None and value != facts.root_label:
        return f"root={root} is not the image's root filesystem (LABEL={facts.root_label})"
    return ""


def _root_note(root: str, facts: IdentityFacts) -> str:
    kind = root.partition("=")[0]
    if (kind == "UUID" and facts.root_uuid) or (kind == "LABEL" and facts.root_label):
        return f"root={root} is the root filesystem's"
    return f"root={root} (not compared: the image's own {kind.lower()} is not known here)"


# ---- reading ------------------------------------------------------------------------


def read_tar_identity(path: Path, deadline: Deadline) -> IdentityFacts:
    """The identity files of a tar image, in one pass over its members."""
    facts = IdentityFacts(files={name: None for name in FILES})
    with tarfile.open(path, mode="r:*") as tar:
        for count, member in enumerate(tar):
            if count % 512 == 0 and deadline.left() <= 0:
                raise VerifyError("the archive was not read to its end in time")
            _take(tar, member, facts)
    return facts


def _take(tar: tarfile.TarFile, member: tarfile.TarInfo, facts: IdentityFacts) -> None:
    name = posixpath.normpath("/" + member.name).lstrip("/")
    directory, _, base = name.rpartition("/")
    if directory == SSH_DIR and SSH_HOST_KEY.fullmatch(base) and not member.isdir():
        facts.ssh_keys.append(base)
    if name not in facts.files:
        return
    if member.issym():
        facts.symlinks.add(name)
        facts.files[name] = b""  # present; a link's target is judged where it points
    elif member.isfile():
        handle = tar.extractfile(member)
        facts.files[name] = handle.read(FILE_LIMIT) if handle else b""


def read_disk_identity(device: str, deadline: Deadline) -> IdentityFacts:
    """The identity files of a root ext filesystem (a debugfs device spec), its UUID and
    its label (debugfs ``stats``)."""
    facts = IdentityFacts()
    for name in FILES:
        facts.files[name] = debugfs_read(device, "/" + name, deadline, FILE_LIMIT)
    facts.ssh_keys = [n for n in _debugfs_names(device, "/" + SSH_DIR, deadline)
                      if SSH_HOST_KEY.fullmatch(n)]
    facts.root_uuid, facts.root_label = _debugfs_identity(device, deadline)
    return facts


def _debugfs_names(device: str, directory: str, deadline: Deadline) -> list[str]:
    result = run_tool(["debugfs", "-c", "-R", f"ls -p {directory}", device], deadline)
    if result.returncode != 0:
        raise tool_error(result, f"debugfs ls {directory}")
    # ls -p: /inode/mode/uid/gid/name/size/ per entry; an absent directory prints nothing
    return [fields[5] for fields in (line.split("/") for line in result.text.splitlines())
            if len(fields) >= 7 and fields[5] not in (".", "..")]


def _debugfs_identity(device: str, deadline: Deadline) -> tuple[str | None, str | None]:
    result = run_tool(["debugfs", "-c", "-R", "stats", device], deadline)
    if result.returncode != 0:
        raise tool_error(result, "debugfs stats")
    uuid = re.search(r"^Filesystem UUID:\s*(\S+)", result.text, re.MULTILINE)
    label = re.search(r"^Filesystem volume name:\s*(.*)$", result.text, re.MULTILINE)
    name = label.group(1).strip() if label else None
    return (uuid.group(1) if uuid else None,
            None if name in (None, "<none>") else name)
